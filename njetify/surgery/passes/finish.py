"""Pass ``finish``: totals, a check of the converted model on the example inputs, the last notes."""

from __future__ import annotations

import math
import warnings

import torch

from ...layers import SafeSubsample, sigma_layers, sigma_parameters
from ...modes import evaluating
from ..context import SurgeryContext
from ..decisions import Refit
from ...inputs import call_model
from ..robust import failure_note
from ..util import count_params
from .analyse import out_shapes
from .costs import cost_summary


def finish_pass(ctx: SurgeryContext) -> None:
    """Parameter totals; the output shapes on the example inputs must be the original's (else a
    warning and a note); a note when nothing was converted."""
    ctx.params_after = count_params(ctx.model)
    cost_summary(ctx)
    note = failure_note(ctx.failures)
    if note:
        ctx.note(note)
        warnings.warn(f"njetify: {note}", stacklevel=4)
    reverted = ctx.calibrated.reverted if ctx.calibrated is not None else ()
    if not sigma_layers(ctx.model) and ctx.converted and reverted:
        msg = (f"the fidelity gate reverted every converted layer ({len(reverted)}) to its original conv: "
               "the model computes what it did before (give calibration_data, raise the recipe's "
               "max_fit_error, or set it to null to keep N-Jet layers)")
        ctx.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
    elif not sigma_layers(ctx.model) and ctx.recipe.convs and not ctx.failures:
        msg = (f"{ctx.model_class or 'the model'} has no convertible convolution: nothing was converted, "
               "the model is returned unchanged")
        ctx.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
    if ctx.out_shapes is None:
        return
    inputs = ctx.example_inputs
    try:
        with evaluating(ctx.model):
            got = out_shapes(call_model(ctx.model, inputs[0] if len(inputs) == 1 else inputs))
    except Exception as e:  # noqa: BLE001 - reported, not raised: the user decides
        got = f"{type(e).__name__}: {e}"
    if got != ctx.out_shapes:
        msg = f"the converted model's output on example_inputs is {got}, the original's {ctx.out_shapes}"
        ctx.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
    elif any(isinstance(m, SafeSubsample) for m in ctx.model.modules()):
        _probe_larger_sigma(ctx)


def finish_ready(ctx: SurgeryContext) -> str | None:
    """The ``finish`` pass's check: when ``calibrate`` ran, every converted layer the engine refits went
    through it — a layer converted after it (by a pass that does not declare 'converted') would keep an
    unchecked fit; None when so."""
    if ctx.calibrated is None or not ctx.calibrated.gated:
        return None
    decided = {d.path for d in ctx.decided(Refit)}
    late = [p for p, c in ctx.converted.items() if c.calibrated and p not in decided]
    if not late:
        return None
    return (f"{len(late)} converted layer(s) were never calibrated nor gated ({', '.join(late[:3])}"
            f"{' ...' if len(late) > 3 else ''}): a pass after 'calibrate' converted them; 'calibrate' provides "
            "'calibrated': put the pass that converts them before 'calibrate' (and declare provides=('converted',))")


def _probe_larger_sigma(ctx: SurgeryContext, factor: float = 1.3) -> None:
    """Run the example inputs with every σ ``factor`` times larger (maps shrink) and restore σ; a
    failure means branches meet where the analysis could not see them: warn and say so."""
    params = sigma_parameters(ctx.model)
    saved = [p.detach().clone() for p in params]
    inputs = ctx.example_inputs
    try:
        with evaluating(ctx.model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a size cap hit at the probe's σ is not the user's concern
            for p in params:
                p.add_(math.log(factor))
            call_model(ctx.model, inputs[0] if len(inputs) == 1 else inputs)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        msg = (f"with every σ {factor:g}x larger the converted model fails ({type(e).__name__}: "
               f"{str(e).splitlines()[0][:160]}): its safe-subsampling meets a branch that njetify could not "
               "analyse; fine-tuning will fail once σ grows — convert with subsample='keep', or report it")
        ctx.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=4)
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
