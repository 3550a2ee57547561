"""Passes ``trace`` and ``shapes``: trace the model for analysis, record shapes on example inputs."""

from __future__ import annotations

import torch

from ..analysis import analyse, record_shapes
from ..context import SurgeryContext


def trace_pass(ctx: SurgeryContext) -> None:
    """Trace the model (or its largest traceable parts) into ``ctx.analysis``; its mode into ``ctx.tracing``."""
    analysis = ctx.analysis = analyse(ctx.model)
    ctx.tracing = {"mode": analysis.mode, "regions": [r.prefix for r in analysis.regions],
                   "failures": analysis.failures}
    why = analysis.failures[0]["reason"] if analysis.failures else ""
    if analysis.jit_traced:
        where = ", ".join(p or "<model>" for p in analysis.jit_traced)
        ctx.note(f"traced with torch.jit.is_tracing() answering True ({where}): the forward skips a "
                        "data-dependent check when traced, as under torch.jit.trace")
    if analysis.mode == "fx-partial":
        ctx.note(f"the model does not trace whole ({why}); analysed {len(analysis.regions)} traceable "
                        "sub-module(s); strides outside them are kept")
    elif analysis.mode == "swap":
        ctx.note(f"no part of the model traces ({why}); convolutions swapped, subsampling kept")


def shapes_pass(ctx: SurgeryContext) -> None:
    """With example inputs: the original outputs' shapes (``ctx.out_shapes``) and every traced node's shape."""
    if ctx.example_inputs is None:
        return
    try:
        out = record_shapes(ctx.analysis, ctx.model, ctx.example_inputs)
    except Exception as e:  # noqa: BLE001 - the original model itself fails on the inputs
        raise ValueError(f"example_inputs: the original model fails on them ({type(e).__name__}: {e})") from None
    ctx.out_shapes = out_shapes(out)


def out_shapes(out):
    """Shapes of a model output (tensor, tuple/list or dict of tensors), as nested lists."""
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)):
        return [out_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: out_shapes(v) for k, v in out.items()}
    return None
