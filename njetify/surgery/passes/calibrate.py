"""Data-aware calibration (DESIGN §3): refit α layer by layer on the inputs each layer really sees.

Layers are visited in the order the forward calls them; each is refitted on the
inputs produced by the layers before it, which are already converted and
calibrated. One partial forward per layer and batch (the forward stops at the
layer), in eval mode without gradients; BatchNorm statistics are not touched.
"""

from __future__ import annotations

import time

from torch import nn

from ...fit import dense_kernel
from ...modes import evaluating
from ..context import SurgeryContext
from ..util import call
from .convs import fit_layer


class _Reached(Exception):
    """Raised by the capture hook to end a forward pass early."""


def execution_order(model: nn.Module, layers: dict[int, nn.Module], x) -> list[nn.Module]:
    """The layers of ``layers`` (id → module) in the order one forward on ``x`` first calls them."""
    order: list[nn.Module] = []
    seen: set[int] = set()

    def hook(m, args):
        if id(m) not in seen:
            seen.add(id(m))
            order.append(m)

    handles = [m.register_forward_pre_hook(hook) for m in layers.values()]
    try:
        call(model, x)
    finally:
        for h in handles:
            h.remove()
    return order


def calibrate_pass(ctx: SurgeryContext) -> None:
    """Refit every converted layer data-aware on ``ctx.calibration`` (list of input batches)."""
    batches = ctx.calibration
    if not batches:
        ctx.report.calibration = {"fit": "weight-space", "batches": 0}
        if ctx.report.converted:
            ctx.report.note("no calibration data: α fitted in weight space (give calibration_data for a "
                            "data-aware fit that preserves the outputs better)")
        return
    t0 = time.perf_counter()
    by_id = {id(c.layer): c for c in ctx.converted.values()}
    layers = {id(m): m for m in ctx.model.modules() if id(m) in by_id}
    with evaluating(ctx.model):
        order = execution_order(ctx.model, layers, batches[0])
        for layer in order:
            captured = []

            def hook(m, args, captured=captured):
                captured.append(args[0].detach())
                raise _Reached

            handle = layer.register_forward_pre_hook(hook)
            try:
                for x in batches:
                    try:
                        call(ctx.model, x)
                    except _Reached:
                        pass
            finally:
                handle.remove()
            done = by_id[id(layer)]
            err = fit_layer(layer, dense_kernel(done.conv.weight.detach(), done.conv.dilation[0]), captured)
            row = ctx.report.row("conv", done.path)
            if row is not None:
                row.fit_error = err
                row.extra["fit"] = "data-aware"
    reached = {id(m) for m in order}
    unreached = sorted(c.path for c in ctx.converted.values() if id(c.layer) not in reached)
    ctx.report.calibration = {
        "fit": "data-aware",
        "batches": len(batches),
        "layers": len(order),
        "unreached": unreached,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if unreached:
        ctx.report.note(f"{len(unreached)} converted layer(s) not reached by the calibration data keep the "
                        f"weight-space fit: {', '.join(unreached[:5])}{' ...' if len(unreached) > 5 else ''}")
