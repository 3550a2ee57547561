"""Tracing with torch.fx, and the fallbacks when a model does not trace (DESIGN §6).

Modes, best first:

* ``"fx"`` — the whole model traces; it becomes an :class:`NJetGraphModule` that keeps
  the original module hierarchy (same paths, same container classes, unused modules
  such as auxiliary heads kept) so state_dicts keep their keys.
* ``"fx-partial"`` — the largest sub-modules that trace are replaced by graph modules;
  the rest of the model keeps its own forward.
* ``"swap"`` — nothing traces: convolutions are swapped in place, subsampling stays.

timm's leaf modules and autowrapped functions are honoured when timm is loaded.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import fx, nn

from ..layers import NJetConv2d, SafeSubsample, TiedNJetBranch, TiedNJetConv2d
from .context import Region, SurgeryContext

#: Module types never traced through: their semantics are handled (or kept) as a whole.
LEAF_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    NJetConv2d,
    SafeSubsample,
    TiedNJetBranch,
    TiedNJetConv2d,
)


def _timm_notrace() -> tuple[set, tuple]:
    """timm's registered leaf modules and autowrap functions (empty when timm is not loaded)."""
    if "timm" not in sys.modules:
        return set(), ()
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # older timm
        return set(), ()
    fns = tuple(f for f in get_notrace_functions() if callable(f))
    return set(get_notrace_modules()), fns


class NJetTracer(fx.Tracer):
    """``fx.Tracer`` that keeps convolutions, pools, N-Jet layers and timm's leaves as modules."""

    def __init__(self):
        leaves, fns = _timm_notrace()
        super().__init__(autowrap_functions=fns)
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, LEAF_TYPES) or type(m) in self.extra_leaves:
            return True
        return super().is_leaf_module(m, qualname)


class NJetGraphModule(fx.GraphModule):
    """A GraphModule that keeps the traced model's full module hierarchy and public attributes.

    ``fx.GraphModule`` rebuilds containers as bare modules and drops modules the
    graph does not call; this one puts the original children back (same classes,
    same state_dict keys), also after ``copy.deepcopy`` and pickling.
    """

    def __getitem__(self, idx):
        """Index like the traced ``nn.Sequential`` / ``nn.ModuleList`` (by position, original children only)."""
        names = self.__dict__.get("_njet_seq_names")
        if names is None:
            raise TypeError(f"'{type(self).__name__}' object is not subscriptable")
        if isinstance(idx, slice):
            return [getattr(self, n) for n in names[idx]]
        return getattr(self, names[idx])

    def __bool__(self):
        return True

    def __len__(self):
        names = self.__dict__.get("_njet_seq_names")
        if names is None:
            raise TypeError(f"object of type '{type(self).__name__}' has no len()")
        return len(names)

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        _restore(res, copy.deepcopy(dict(self._modules), memo), copy.deepcopy(_extras(self), memo))
        return res

    def __reduce__(self):
        fn, args = super().__reduce__()[:2]
        return (_rebuild, (fn, args, dict(self._modules), _extras(self), type(self).__name__))


def _extras(gm) -> dict:
    keys = tuple(gm.__dict__.get("_njet_extra_attrs", ())) + ("_njet_seq_names",)
    return {k: gm.__dict__[k] for k in keys if k in gm.__dict__}


def _restore(gm: nn.Module, children: dict, extras: dict) -> None:
    for name, child in children.items():
        if child is not None:
            setattr(gm, name, child)
    for k, v in extras.items():
        gm.__dict__[k] = v
    gm.__dict__["_njet_extra_attrs"] = tuple(k for k in extras if k != "_njet_seq_names")


def _rebuild(fn, args, children, extras, class_name="GraphModule"):
    plain = fn(*args)
    gm = NJetGraphModule(plain, plain.graph, class_name=class_name)
    _restore(gm, children, extras)
    return gm


def graph_module(root: nn.Module, graph: fx.Graph) -> NJetGraphModule:
    """Wrap ``graph`` around ``root``'s own modules: same hierarchy, attributes and mode."""
    gm = NJetGraphModule(root, graph, class_name=type(root).__name__)
    for name, p in root.named_parameters(recurse=False):
        if name not in gm._parameters:
            gm.register_parameter(name, p)
    for name, b in root.named_buffers(recurse=False):
        if name not in gm._buffers:
            gm.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
    skip = set(gm.__dict__) | {"training", "forward"}
    extras = {k: v for k, v in root.__dict__.items() if not k.startswith("_") and k not in skip}
    if isinstance(root, (nn.Sequential, nn.ModuleList)):
        extras["_njet_seq_names"] = tuple(root._modules)
    _restore(gm, dict(root.named_children()), extras)
    gm.training = root.training
    return gm


def try_trace(module: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """``(graph, None)`` when ``module`` traces, else ``(None, short reason)`` — never a traceback."""
    try:
        return NJetTracer().trace(module), None
    except Exception as e:  # noqa: BLE001 - any tracing failure means "fall back"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"{type(e).__name__}: {msg[:160]}"


def _has_work(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd))
               for m in module.modules())


def trace_pass(ctx: SurgeryContext) -> None:
    """Trace the model (or its largest traceable parts) and record the mode in the report."""
    tracing = ctx.report.tracing
    failures: list[dict] = []
    graph, why = try_trace(ctx.model)
    if graph is not None:
        ctx.model = graph_module(ctx.model, graph)
        ctx.regions = [Region("", ctx.model)]
        tracing.update(mode="fx", regions=[""], failures=[])
        return
    failures.append({"module": "<model>", "reason": why})
    regions: list[Region] = []
    _trace_children(ctx, ctx.model, "", regions, failures)
    ctx.regions = regions
    tracing.update(
        mode="fx-partial" if regions else "swap",
        regions=[r.prefix for r in regions],
        failures=failures,
    )
    if regions:
        ctx.report.note(
            f"the model does not trace whole ({why}); traced {len(regions)} sub-module(s), "
            "the rest converts by module swap (strides kept there)"
        )
    else:
        ctx.report.note(f"no part of the model traces ({why}); module swap: convs converted, subsampling kept")


def _trace_children(ctx, module: nn.Module, prefix: str, regions: list, failures: list) -> None:
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, LEAF_TYPES) or not _has_work(child):
            continue
        graph, why = try_trace(child)
        if graph is not None:
            gm = graph_module(child, graph)
            setattr(module, name, gm)
            regions.append(Region(path, gm))
        else:
            failures.append({"module": path, "reason": why})
            _trace_children(ctx, child, path, regions, failures)


def example_shapes(example_inputs) -> list[list[int]] | None:
    """Shapes of the tensors among ``example_inputs`` (for the report)."""
    if example_inputs is None:
        return None
    return [list(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
