"""Pass ``calibrate``: hand the converted layers to :mod:`njetify.calibration` and report what it did.

One engine (:func:`njetify.calibration.calibrate`): with calibration data every converted layer
(and tied ASPP head) is refitted by output matching, σ₀ chosen by fit where the recipe says
``sigma_init: fit``; without data the fidelity gate reads the weight-space error and σ₀ stays the
kernel rule's. The engine's settings are the recipe's ``calibration:`` block. A layer whose
:class:`~njetify.calibration.GateDecision` is "revert" is swapped back to its original conv at once
(through the rewriter, so a failed conversion still rolls back), followed by its subsampling fixed
at ``1/stride``; its :class:`~njetify.surgery.decisions.Reversion` is built from that decision's fields.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ...calibration import CalibrationOptions, GateDecision, LayerOptions, calibrate, fix_subsamples, sigma_candidates
from ...calibration.revert import reverted_module
from ..context import CalibrationOutcome, SurgeryContext
from ..decisions import HeadRefit, Refit, Reversion


class _Originals:
    """The original conv of every converted path, answering ``get_submodule(path)`` as the
    original model would — all the data-free engine asks of it, without copying the model."""

    def __init__(self, convs: dict[str, nn.Module]):
        self._convs = convs

    def get_submodule(self, target: str) -> nn.Module:
        try:
            return self._convs[target]
        except KeyError:
            raise AttributeError(f"no converted conv at {target!r}") from None


def calibrate_pass(ctx: SurgeryContext) -> None:
    """Calibrate every converted layer on ``ctx.calibration`` (list of input batches) or, without
    data, apply the gate in weight space; a decision per layer (:class:`~njetify.surgery.decisions.Refit`,
    :class:`~njetify.surgery.decisions.Reversion` for a layer the gate put back) and ``ctx.calibrated``."""
    paths = [p for p, c in ctx.converted.items() if c.calibrated]
    if not paths:
        ctx.calibrated = CalibrationOutcome()
        return
    convs = {p: ctx.converted[p].conv for p in paths}
    options, revert = _layer_options(ctx, convs, bool(ctx.calibration)), _revert(ctx, convs)
    engine = engine_options(ctx.recipe)
    if ctx.calibration:
        result = calibrate(ctx.original, ctx.model, paths, ctx.calibration, options=engine,
                           layer_options=options, revert=revert)
        fit = "output-matching"
        if all(r.error_after is None for r in result.layers):  # a report never claims a fit that did not run
            fit = "weight-space"
            ctx.note(f"calibration data was given but no layer was fitted on it ({_tally(result)}): every "
                     "converted layer keeps its weight-space fit; the rows say why")
    else:
        result = calibrate(_Originals(convs), ctx.model, paths, None, options=engine, layer_options=options,
                           revert=revert)
        fit = "weight-space"
        ctx.note("no calibration data: α fitted in weight space (give calibration_data for output "
                        "matching, which preserves the outputs much better)")
    _decide(ctx, result, fit, options)
    by = {s: [r.path for r in result.select(s)] for s in ("reverted", "unreached", "skipped")}
    ctx.calibrated = CalibrationOutcome(fit, result.summary(), *(tuple(by[s]) for s in by), gated=True)
    if by["unreached"]:
        ctx.note(f"{len(by['unreached'])} converted layer(s) not reached by the calibration data keep the "
                        f"weight-space fit: {_some(by['unreached'])}")
    if by["reverted"]:
        ctx.note(f"{len(by['reverted'])} layer(s) stay the original conv (fidelity gate, recipe "
                        f"max_fit_error): {_some(by['reverted'])}")


def engine_options(recipe) -> CalibrationOptions:
    """The engine's settings from a recipe: its ``calibration:`` block and ``search_max_dim`` (None: no limit)."""
    block = dataclasses.asdict(recipe.calibration)
    block.pop("sigma_fractions")  # per layer: the σ₀ candidates (:func:`_layer_options`)
    limit = recipe.search_max_dim
    return CalibrationOptions(**block, search_max_dim=limit if limit is not None else 2**62)


def _layer_options(ctx: SurgeryContext, convs: dict[str, nn.Module], with_data: bool):
    """Per path: σ₀ candidates for ``sigma_init: fit`` (only with data: without, σ₀ stays the kernel
    rule's) and the fidelity gate ``max_fit_error``. A tied ASPP head is not gated unless a recipe
    rule names its branches with a ``max_fit_error``: tying is what was asked for, and one α shared
    by all rates starts far from every branch until fine-tuning (DESIGN §5)."""
    tied = {p for head in ctx.tied for p in head.branches}

    def options(path: str) -> LayerOptions:
        st = ctx.recipe.settings_for(path)
        sigmas = None
        if st.sigma_init == "fit" and with_data:
            conv = convs[path]
            sigmas = sigma_candidates(conv.kernel_size[0], conv.dilation[0], st.extent,
                                      ctx.recipe.calibration.sigma_fractions)
        gate = st.max_fit_error
        if path in tied and not any(r.max_fit_error is not None for r in ctx.recipe.rules_for(path)):
            gate = None
        return LayerOptions(sigmas=sigmas, max_error=gate)

    return options


def _revert(ctx: SurgeryContext, convs: dict[str, nn.Module]):
    """``revert(path, decision)`` for the engine: the original conv back at ``path`` through the rewriter, its
    subsamplings fixed at ``1/stride`` first (the decision is recorded once the engine is done)."""
    def revert(path: str, decision: GateDecision) -> None:
        old = ctx.module(path)
        fix_subsamples(ctx.model, old)
        ctx.rewriter.replace(path, reverted_module(old, convs[path]))

    return revert


def _decide(ctx: SurgeryContext, result, fit: str, options) -> None:
    """The engine's result as decisions: a :class:`Reversion` per path the gate put back (with what it
    measured and its limit), then a :class:`Refit` per path and a :class:`HeadRefit` per tied head."""
    heads = {p: head for head in ctx.tied for p in head.branches}
    for verdict in result.decisions:  # the engine's typed verdicts: what it measured, the limit, the comparison
        if verdict.reverted:
            for path in verdict.paths:
                ctx.decide(Reversion(path, measure=verdict.measured, comparator=verdict.comparison,
                                     limit=verdict.limit, gate=verdict.reason))
    for res in result.layers:
        status = fit if res.status in ("calibrated", "weight-space") else res.status
        reverted = res.status == "reverted"
        for k, path in enumerate(res.paths):
            k = min(k, len(res.sigma0) - 1)
            ctx.decide(Refit(
                path, unit=res.kind, fit=status, reverted=reverted,
                sigma0=res.sigma0[k] if k >= 0 else None, size=res.size[k] if 0 <= k < len(res.size) else None,
                weight_error=res.weight_error, error_before=res.error_before, error_after=res.error_after,
                candidates=tuple(res.candidates.items()), reason=res.reason, solver=res.solver))
        head = heads.get(res.paths[0]) if res.kind == "tied" else None
        if head is not None:
            ctx.decide(HeadRefit(head.path, fit=status, reverted=reverted, sigma0=tuple(res.sigma0),
                                 sizes=tuple(res.size), error_before=res.error_before, error_after=res.error_after,
                                 reason=res.reason, solver=res.solver))


def calibrate_done(ctx: SurgeryContext) -> str | None:
    """The ``calibrate`` pass's ``ensures``: every converted layer the engine refits has a decision; None
    when so, else the layers left."""
    if ctx.calibrated is None:
        return "it left 'calibrated' unset"
    decided = {d.path for d in ctx.decided(Refit)}
    left = [p for p, c in ctx.converted.items() if c.calibrated and p not in decided]
    return f"{len(left)} converted layer(s) got no calibration decision ({', '.join(left[:3])})" if left else None


def _tally(result) -> str:
    return ", ".join(f"{len(result.select(s))} {s}" for s in ("unreached", "skipped") if result.select(s))


def _some(paths: list[str]) -> str:
    """The first five paths, and how many more there are and where they are listed."""
    more = f" and {len(paths) - 5} more (each has its own row in the convolutions table)" if len(paths) > 5 else ""
    return ", ".join(paths[:5]) + more
