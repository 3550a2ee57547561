"""Pass ``calibrate``: hand the converted layers to :mod:`njetify.calibration` and report what it did.

One engine (:func:`njetify.calibration.calibrate`): with calibration data every converted layer
(and tied ASPP head) is refitted by output matching, σ₀ chosen by fit where the recipe says
``sigma_init: fit``; without data the fidelity gate reads the weight-space error and σ₀ stays the
kernel rule's. The engine's settings are the recipe's ``calibration:`` block. A layer whose
:class:`~njetify.calibration.Decision` is "revert" is swapped back to its original conv at once
(through the rewriter, so a failed conversion still rolls back), followed by its subsampling
fixed at ``1/stride``; its report row is written from the decision's fields.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ...calibration import CalibrationOptions, Decision, LayerOptions, calibrate, fix_subsamples, sigma_candidates
from ...calibration.revert import reverted_module
from ..context import SurgeryContext


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
    data, apply the gate in weight space; fill the report rows and ``report.calibration``."""
    paths = [p for p, c in ctx.converted.items() if c.calibrated]
    if not paths:
        ctx.report.calibration = {"fit": "weight-space", "batches": 0}
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
            ctx.report.note(f"calibration data was given but no layer was fitted on it ({_tally(result)}): every "
                            "converted layer keeps its weight-space fit; the rows say why")
    else:
        result = calibrate(_Originals(convs), ctx.model, paths, None, options=engine, layer_options=options,
                           revert=revert)
        fit = "weight-space"
        ctx.report.note("no calibration data: α fitted in weight space (give calibration_data for output "
                        "matching, which preserves the outputs much better)")
    _fill_rows(ctx, result, fit)
    _record_decisions(ctx, result)
    by = {s: [r.path for r in result.select(s)] for s in ("reverted", "unreached", "skipped")}
    ctx.report.calibration = {"fit": fit, **result.summary(), **by}
    if by["unreached"]:
        ctx.report.note(f"{len(by['unreached'])} converted layer(s) not reached by the calibration data keep the "
                        f"weight-space fit: {_some(by['unreached'])}")
    if by["reverted"]:
        ctx.report.note(f"{len(by['reverted'])} layer(s) stay the original conv (fidelity gate, recipe "
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
    tied = {p for row in ctx.tied for p in row.extra.get("branches", [])}

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
    def revert(path: str, decision: Decision) -> None:
        old = ctx.module(path)
        fix_subsamples(ctx.model, old)
        ctx.rewriter.replace(path, reverted_module(old, convs[path]))
        row = _conv_row(ctx, path)
        if row is not None:  # the number is in the err column: one footnote for all reverted layers
            row.action, row.params_after = "kept", row.params_before
            row.reason = decision.short_reason
            row.order = row.sigma0 = row.size = None
            row.extra["reverted"], row.extra["gate"] = True, decision.reason
        for r in ctx.report.select("subsample", "subsampled"):
            if r.extra.get("source") == path:
                r.reason = f"σ source {path} reverted to its original conv: factor fixed at 1/{r.stride}"
                r.extra["source"], r.extra["fixed"] = None, True  # counted as kept (ConversionReport)

    return revert


def _conv_row(ctx: SurgeryContext, path: str):
    return next((r for r in ctx.report.rows if r.kind == "conv" and r.path == path), None)


def _fill_rows(ctx: SurgeryContext, result, fit: str) -> None:
    """σ₀, sizes and errors of every result on its conv rows; a tied head's row gets the head's."""
    heads = {p: row for row in ctx.tied for p in row.extra.get("branches", [])}
    for res in result.layers:
        status = fit if res.status in ("calibrated", "weight-space") else res.status
        for k, path in enumerate(res.paths):
            row = _conv_row(ctx, path)
            if row is None:
                continue
            row.extra["fit"] = status
            if res.status != "reverted":
                k = min(k, len(res.sigma0) - 1)
                row.sigma0, row.size = res.sigma0[k], res.size[k]
                row.fit_error = res.weight_error if res.kind == "conv" else row.fit_error
                if res.reason and not row.reason:
                    row.reason = res.reason
            row.error_before, row.error_after = res.error_before, res.error_after
            if res.candidates:
                row.extra["sigma_candidates"] = res.candidates
        head = heads.get(res.paths[0]) if res.kind == "tied" else None
        if head is not None:
            head.extra["fit"] = status
            head.error_before, head.error_after = res.error_before, res.error_after
            if res.status == "reverted":
                head.action, head.reason, head.params_after = "kept", res.reason, head.params_before
            else:
                head.extra["sigma0"], head.extra["sizes"] = list(res.sigma0), list(res.size)
                head.size = max(res.size)


def _record_decisions(ctx: SurgeryContext, result) -> None:
    """Write the per-layer decisions into ``report.recipe`` as rules (σ₀ chosen by fit →
    ``sigma_init: σ₀``; a reverted layer → ``max_fit_error: 0``) and turn the gate off there, so that
    redoing the conversion without data (``njetify.load``) rebuilds this very model."""
    rules = ctx.report.recipe.setdefault("rules", [])
    for res in result.layers:
        for path in res.paths:
            rule = None
            if res.status == "reverted":
                rule = {"match": _literal(path), "max_fit_error": 0.0}
            elif res.candidates and res.kind == "conv":
                rule = {"match": _literal(path), "sigma_init": res.sigma0[0]}
            if rule is not None and rule not in rules:
                rules.append(rule)
    ctx.report.recipe["max_fit_error"] = None


def _literal(path: str) -> str:
    """A glob that matches ``path`` only."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in path)


def _tally(result) -> str:
    return ", ".join(f"{len(result.select(s))} {s}" for s in ("unreached", "skipped") if result.select(s))


def _some(paths: list[str]) -> str:
    """The first five paths, and how many more there are and where they are listed."""
    more = f" and {len(paths) - 5} more (each has its own row in the convolutions table)" if len(paths) > 5 else ""
    return ", ".join(paths[:5]) + more
