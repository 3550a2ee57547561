"""The model-level entry point: output-matching calibration of every converted layer (DESIGN §3)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from torch import nn

from ..modes import evaluating
from .gate import RevertFn, apply_gate, options_for
from .layer_fit import fit_unit, sample_budget
from .options import CalibrationOptions, LayerOptions
from .results import CalibrationResult, LayerResult
from .progress import report_progress
from .revert import fixed_r_reason, is_auto_r, retarget_subsamples, subsamples_of
from .sweep import Sweep
from .targets import batch_size, collect_targets
from .units import build_units


def calibrate_model(
    original: nn.Module,
    converted: nn.Module,
    paths: Iterable[str],
    batches: list,
    *,
    options: CalibrationOptions | None = None,
    layer_options: Mapping[str, LayerOptions] | Callable[[str], LayerOptions] | None = None,
    revert: RevertFn | None = None,
) -> CalibrationResult:
    """Refit every converted layer so that it reproduces the original conv's outputs.

    For each layer, in the order the converted model's forward reaches it: inputs = what the
    layer receives in ``converted`` (earlier layers already fitted, so their errors are
    compensated); targets = what the original conv at the same path outputs in ``original``; α
    and the bias solve a ridge regression on the basis responses of all input channels of the
    layer's group. Cost: one forward of ``original`` and one of ``converted`` per batch.

    Args:
        original: the unconverted model (not modified).
        converted: the converted model; modified in place (α, bias, σ₀, reverted layers).
        paths: module paths of the converted layers (``NJetConv2d`` or ``TiedNJetBranch``; every
            branch of a tied head); ``original`` holds the original ``nn.Conv2d`` at each path.
        batches: model inputs (a tensor, a tuple of positional arguments or a dict of keyword
            arguments per batch), already on the models' device and dtype.
        options: engine settings (:class:`CalibrationOptions`).
        layer_options: per path, :class:`LayerOptions` (σ₀ candidates, fidelity gate); a mapping or
            a callable ``path → LayerOptions`` (default: no σ₀ search, gate at ``MAX_FIT_ERROR``).
        revert: ``revert(path, reason)`` swaps the original conv back in at ``path`` when a layer
            fails the gate; called at once, before later layers are fitted. Default:
            :func:`~njetify.calibration.revert.restore_conv`.

    Returns:
        :class:`CalibrationResult`: one :class:`LayerResult` per layer (tied head: one for the head).
    """
    if original is converted:
        raise ValueError("calibration: original and converted are the same module; keep an unconverted copy")
    opts = options or CalibrationOptions()
    per_layer = options_for(layer_options)
    t0 = time.perf_counter()
    units = build_units(original, converted, list(paths))
    result = CalibrationResult(batches=len(batches), images=sum(batch_size(b) for b in batches))
    done: dict[int, LayerResult] = {}
    with evaluating(original), evaluating(converted):
        budgets = {u.index: sample_budget(u, opts) for u in units}
        targets = collect_targets(original, units, batches, budgets=budgets, dense_strided=opts.dense_strided,
                                  seed=opts.seed)
        result.target_seconds = time.perf_counter() - t0
        watch = {}
        for u in units:
            for p in (u.paths if u.tied else [u.path]):
                watch[converted.get_submodule(p)] = u.index
        sweep = Sweep(converted, batches, watch)

        def fit(key, inputs):
            u = units[key]
            lo = per_layer(u.path)
            auto, lock = [], None
            if not u.tied:
                auto = [p for p, ss in subsamples_of(converted, u.module) if is_auto_r(ss)]
                lock = fixed_r_reason(converted, u.module)
            before = u.sigmas()
            if not _has_targets(targets[u.index], inputs):
                res = _unfitted(u, "the original conv recorded no output on the calibration batches that reach it "
                                   "(its forward hooks did not run: a compiled or scripted original model?): "
                                   "weight-space fit kept")
                apply_gate(u, res, lo, converted, original, revert, sweep)
                done[key] = res
                report_progress(len(done), len(units))
                return
            res = fit_unit(u, inputs, targets[u.index], opts, lo, lock)
            if res.sigma0 != before and auto:
                retarget_subsamples(converted, u.module, auto)
            apply_gate(u, res, lo, converted, original, revert, sweep)
            done[key] = res
            report_progress(len(done), len(units))

        sweep.run(fit)
        for u in units:
            if u.index not in done:
                res = _unfitted(u, "not reached by the calibration data: weight-space fit kept")
                apply_gate(u, res, per_layer(u.path), converted, original, revert, None)
                done[u.index] = res
    result.layers = list(done.values())
    result.seconds = time.perf_counter() - t0
    return result


def _has_targets(unit_targets: list, inputs: list) -> bool:
    """Whether the original conv's outputs were recorded on any batch whose input reached the layer."""
    return any(branch.get(b) is not None for branch in unit_targets for b, _ in inputs)


def _unfitted(u, reason: str) -> LayerResult:
    """The result of a unit that keeps its weight-space fit (status ``"unreached"``)."""
    return LayerResult(path=u.path, paths=u.paths + u.extra_paths, kind="tied" if u.tied else "conv",
                       status="unreached", sigma0=u.sigmas(), weight_error=u.weight_error(),
                       size=[b.shape[-1] for b, _, _ in u.bases()], reason=reason)
