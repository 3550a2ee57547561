"""Pass ``finish``: totals, a check of the converted model on the example inputs, the last notes."""

from __future__ import annotations

import warnings

from ...layers import sigma_layers
from ...modes import evaluating
from ..context import SurgeryContext
from ..util import call, count_params
from .analyse import out_shapes


def finish_pass(ctx: SurgeryContext) -> None:
    """Parameter totals; the output shapes on the example inputs must be the original's (else a
    warning and a note); a note when nothing was converted."""
    ctx.report.params_after = count_params(ctx.model)
    if not sigma_layers(ctx.model) and ctx.recipe.convs:
        msg = (f"{ctx.report.model_class or 'the model'} has no convertible convolution: nothing was converted, "
               "the model is returned unchanged")
        ctx.report.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
    if ctx.out_shapes is None:
        return
    inputs = ctx.example_inputs
    try:
        with evaluating(ctx.model):
            got = out_shapes(call(ctx.model, inputs[0]) if len(inputs) == 1 else ctx.model(*inputs))
    except Exception as e:  # noqa: BLE001 - reported, not raised: the user decides
        got = f"{type(e).__name__}: {e}"
    if got != ctx.out_shapes:
        msg = f"the converted model's output on example_inputs is {got}, the original's {ctx.out_shapes}"
        ctx.report.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
