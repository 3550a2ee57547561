"""The calibrate pass: hand the converted layers to :mod:`njetify.calibration` and report what it did.

With calibration data every converted layer (and tied ASPP head) is refitted by output
matching (:func:`njetify.calibration.calibrate_model`), σ₀ chosen by fit where the recipe
says ``sigma_init: fit``; without data the fidelity gate reads the weight-space error
(:func:`njetify.calibration.calibrate_weights`) and σ₀ stays the kernel rule's.
A layer that fails the gate is swapped back to its original conv at once (``_revert``).
"""

from __future__ import annotations

from ..calibration import LayerOptions, calibrate_model, calibrate_weights, restore_conv, sigma_candidates
from .context import SurgeryContext


def _paths(ctx: SurgeryContext) -> list[str]:
    """Converted conv paths and tied-branch paths, in report order."""
    convs = [r.path for r in ctx.report.select("conv", "converted")]
    branches = [r.path for r in ctx.report.select("aspp", "converted") if r.op.startswith("tied branch")]
    return convs + branches


def _layer_options(ctx: SurgeryContext, original, with_data: bool):
    """Per path: σ₀ candidates for ``sigma_init: fit`` (only with data: without, σ₀ stays the kernel
    rule's) and the fidelity gate ``max_fit_error``."""

    def options(path: str) -> LayerOptions:
        st = ctx.recipe.settings_for(path)
        sigmas = None
        if st.sigma_init == "fit" and with_data:
            conv = original.get_submodule(path)
            sigmas = sigma_candidates(conv.kernel_size[0], conv.dilation[0], st.extent)
        return LayerOptions(sigmas=sigmas, max_error=st.max_fit_error)

    return options


def _revert(ctx: SurgeryContext, original):
    def revert(path: str, reason: str) -> None:
        restore_conv(ctx.model, original, path)
        row = ctx.rows.get(path) or next((r for r in ctx.report.select("aspp") if r.path == path), None)
        if row is not None:
            row.action, row.reason, row.params_after = "kept", reason, row.params_before
            row.extra["reverted"] = True
        for r in ctx.report.select("subsample", "subsampled"):
            if r.extra.get("source") == path:
                r.reason = f"σ source {path} reverted to its original conv: factor fixed at 1/{r.stride}"
                r.extra["source"] = None

    return revert


def calibrate_pass(ctx: SurgeryContext) -> None:
    """Calibrate every converted layer on ``ctx.calibration`` (list of input batches) or, without
    data, apply the gate in weight space; fill the report rows and ``report.calibration``."""
    original = ctx.state["original"]
    paths = _paths(ctx)
    ctx.kernels.clear()
    if not paths:
        ctx.report.calibration = {"fit": "weight-space", "batches": 0}
        return
    options, revert = _layer_options(ctx, original, bool(ctx.calibration)), _revert(ctx, original)
    if ctx.calibration:
        result = calibrate_model(original, ctx.model, paths, ctx.calibration, layer_options=options, revert=revert)
        fit = "output-matching"
    else:
        result = calibrate_weights(original, ctx.model, paths, layer_options=options, revert=revert)
        fit = "weight-space"
        ctx.report.note("no calibration data: α fitted in weight space (give calibration_data for output "
                        "matching, which preserves the outputs much better)")
    rows = {r.path: r for r in ctx.report.rows if r.kind in ("conv", "aspp")}
    for res in result.layers:
        for k, path in enumerate(res.paths):
            row = rows.get(path)
            if row is None:
                continue
            row.extra["fit"] = fit if res.status in ("calibrated", "weight-space") else res.status
            if res.status != "reverted":
                k = min(k, len(res.sigma0) - 1)
                row.sigma0, row.size = res.sigma0[k], res.size[k]
                row.fit_error = res.weight_error if res.kind == "conv" else row.fit_error
                if res.reason and not row.reason:
                    row.reason = res.reason
            row.error_before, row.error_after = res.error_before, res.error_after
            if res.candidates:
                row.extra["sigma_candidates"] = res.candidates
    _record_decisions(ctx, result)
    by = {s: [r.path for r in result.select(s)] for s in ("reverted", "unreached", "skipped")}
    ctx.report.calibration = {"fit": fit, **result.summary(), **by}
    if by["unreached"]:
        ctx.report.note(f"{len(by['unreached'])} converted layer(s) not reached by the calibration data keep the "
                        f"weight-space fit: {_some(by['unreached'])}")
    if by["reverted"]:
        ctx.report.note(f"{len(by['reverted'])} layer(s) stay the original conv (fidelity gate, recipe "
                        f"max_fit_error): {_some(by['reverted'])}")


def _record_decisions(ctx: SurgeryContext, result) -> None:
    """Write the per-layer decisions into ``report.recipe`` as rules (σ₀ chosen by fit →
    ``sigma_init: σ₀``; a reverted layer → ``max_fit_error: 0``) and turn the gate off there, so that
    redoing the conversion without data (``njetify.load``) rebuilds this very model."""
    rules = ctx.report.recipe.setdefault("rules", [])
    for res in result.layers:
        for path in res.paths:
            if res.status == "reverted":
                rules.append({"match": _literal(path), "max_fit_error": 0.0})
            elif res.candidates and res.kind == "conv":
                rules.append({"match": _literal(path), "sigma_init": res.sigma0[0]})
    ctx.report.recipe["max_fit_error"] = None


def _literal(path: str) -> str:
    """A glob that matches ``path`` only."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in path)


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
