"""Tracing the model with torch.fx — for analysis only; the model itself is never replaced (DESIGN §6).

Modes, best first:

* ``"fx"`` — the whole model traces: one :class:`Region` rooted at the model.
* ``"fx-partial"`` — the largest sub-modules that trace, one region each.
* ``"swap"`` — nothing traces: convolutions are swapped, subsampling stays.

A model whose forward skips a data-dependent input check when it is being traced (smp:
``if not torch.jit.is_tracing(): self.check_input_shape(x)``) is traced a second time with
``torch.jit.is_tracing()`` answering True. timm's leaf modules and autowrapped functions are
honoured when timm is loaded.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from torch import fx, nn

from ...layers import (
    FixedSubsample,
    GuardedLinear,
    SafePool2d,
    SafeSubsample,
    SafeUpsample,
    SigmaModule,
    TiedNJetConv2d,
)
from ...layers.convertible import leaf_types

#: Module types never traced through besides those of the converter table (:func:`leaf_types`: every
#: registered source type and the σ layers it builds): every σ layer (:class:`SigmaModule`), torch's
#: other convolutions and pools, and the modules the surgery inserts. :func:`is_leaf_type` asks both.
LEAF_TYPES: tuple[type, ...] = (
    SigmaModule,
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    SafeSubsample,
    SafeUpsample,
    FixedSubsample,
    SafePool2d,
    GuardedLinear,
    TiedNJetConv2d,
)


def is_leaf_type(m: nn.Module) -> bool:
    """Whether torch.fx treats ``m`` as one call (:data:`LEAF_TYPES` and the converter table's types)."""
    return isinstance(m, LEAF_TYPES) or isinstance(m, leaf_types())


@dataclass
class Region:
    """A traced part of the model: ``graph`` was traced from ``root``, which sits at ``prefix``."""

    prefix: str
    root: nn.Module
    graph: fx.Graph

    def full_path(self, target: str) -> str:
        """Module path in the whole model of a ``call_module`` target of this region."""
        return f"{self.prefix}.{target}" if self.prefix and target else (target or self.prefix)

    def module(self, target: str) -> nn.Module:
        """The module that a ``call_module`` target names, as it is in the model now."""
        return self.root.get_submodule(target)


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
    """``fx.Tracer`` that keeps convolutions, pools, njetify's layers and timm's leaves as modules."""

    def __init__(self):
        leaves, fns = _timm_notrace()
        super().__init__(autowrap_functions=fns)
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_leaf_type(m) or type(m) in self.extra_leaves:
            return True
        return super().is_leaf_module(m, qualname)


@contextlib.contextmanager
def jit_tracing():
    """``torch.jit.is_tracing()`` answers True inside the block."""
    saved = torch.jit.is_tracing
    torch.jit.is_tracing = lambda: True
    try:
        yield
    finally:
        torch.jit.is_tracing = saved


def trace_module(module: nn.Module, *, as_jit: bool = False) -> fx.Graph:
    """The fx graph of ``module`` (raises what fx raises). ``as_jit``: ``torch.jit.is_tracing()`` is True."""
    with jit_tracing() if as_jit else contextlib.nullcontext():
        return NJetTracer().trace(module)


def try_trace(module: nn.Module) -> tuple[fx.Graph | None, bool, str | None]:
    """``(graph, as_jit, None)`` when ``module`` traces (``as_jit``: only with ``torch.jit.is_tracing()``
    answering True), else ``(None, False, short reason)`` — never a traceback."""
    why = None
    for as_jit in (False, True):
        try:
            return trace_module(module, as_jit=as_jit), as_jit, None
        except Exception as e:  # noqa: BLE001 - any tracing failure means "fall back"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            why = why or f"{type(e).__name__}: {msg[:160]}"
    return None, False, why


def has_work(module: nn.Module) -> bool:
    """True when ``module`` holds a conv or a pool (something worth tracing)."""
    return any(isinstance(m, (nn.Conv2d, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd))
               for m in module.modules())


def trace_regions(model: nn.Module) -> tuple[str, list[Region], list[dict], list[str]]:
    """Trace ``model`` whole, or its largest traceable sub-modules.

    Returns ``(mode, regions, failures, jit_traced)``: ``failures`` are ``{"module", "reason"}``
    for the parts that did not trace, ``jit_traced`` the region prefixes traced with
    ``torch.jit.is_tracing()`` answering True.
    """
    failures: list[dict] = []
    regions: list[Region] = []
    jit: list[str] = []
    graph, as_jit, why = try_trace(model)
    if graph is not None:
        return "fx", [Region("", model, graph)], failures, [""] if as_jit else []
    failures.append({"module": "<model>", "reason": why})
    _trace_children(model, "", regions, failures, jit)
    return ("fx-partial" if regions else "swap"), regions, failures, jit


def _trace_children(module: nn.Module, prefix: str, regions: list, failures: list, jit: list) -> None:
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if is_leaf_type(child) or not has_work(child):
            continue
        graph, as_jit, why = try_trace(child)
        if graph is not None:
            regions.append(Region(path, child, graph))
            if as_jit:
                jit.append(path)
        else:
            failures.append({"module": path, "reason": why})
            _trace_children(child, path, regions, failures, jit)


def owner_of(node: fx.Node) -> str:
    """Path (relative to the traced root) of the innermost module whose forward created ``node``;
    for a ``call_module`` node, of the module that called it ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]
    return paths[-1] if paths else ""
