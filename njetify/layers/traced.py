"""A module of the user's whose own ``forward`` had to change: same object, same class family.

When an op that must change is a functional call inside a module's ``forward``
(``F.max_pool2d(x, 2)``, ``x[..., ::2, ::2]``), the surgery traces that module with
torch.fx, rewrites the graph, and gives the module the traced forward by moving the
object to a subclass of its own class (:func:`retrace`). Everything else stays: the
object identity, its methods and properties, attributes, hooks, children and state_dict
keys, and ``isinstance(m, OriginalClass)``. The subclass is rebuilt from its generated
source when the module is deep-copied or pickled.
"""

from __future__ import annotations

from torch import fx, nn

__all__ = ["TracedForward", "is_retraced", "retrace"]

_CLASSES: dict[tuple[type, str], type] = {}


class TracedForward:
    """Mixin of the generated subclasses; ``traced_source`` is the generated forward's code."""

    traced_source: str = ""
    traced_base: type = nn.Module

    def __reduce_ex__(self, protocol):
        return _instance, (self.traced_base, self.traced_source), self.__dict__


def retrace(module: nn.Module, graph: fx.Graph) -> type:
    """Give ``module`` the forward of ``graph`` (traced from ``module``; its ``call_module`` and
    ``get_attr`` targets are attributes of ``module``) by moving it to a generated subclass of
    its class. Returns the subclass."""
    base = traced_base(module)
    code = graph.python_code(root_module="self")
    source = f"{_import_block(code.globals)}\n{code.src}"
    cls = _subclass(base, source)
    module.__class__ = cls
    return cls


def traced_base(module: nn.Module) -> type:
    """The user's own class of ``module`` (the class before any :func:`retrace`)."""
    cls = type(module)
    return cls.traced_base if issubclass(cls, TracedForward) else cls


def is_retraced(module: nn.Module) -> bool:
    """True when ``module`` runs a traced forward made by :func:`retrace`."""
    return isinstance(module, TracedForward)


def _import_block(globals_: dict) -> str:
    from torch.fx.graph_module import _format_import_block
    from torch.package import sys_importer

    return _format_import_block(globals_, sys_importer)


def _subclass(base: type, source: str) -> type:
    key = (base, source)
    if key not in _CLASSES:
        namespace: dict = {}
        exec(compile(source, f"<njetify: traced forward of {base.__qualname__}>", "exec"), namespace)  # noqa: S102
        _CLASSES[key] = type(base.__name__, (TracedForward, base), {
            "forward": namespace["forward"],
            "traced_source": source,
            "traced_base": base,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        })
    return _CLASSES[key]


def _instance(base: type, source: str) -> nn.Module:
    """An empty instance of the traced subclass (its state comes from ``__setstate__``)."""
    cls = _subclass(base, source)
    return cls.__new__(cls)
