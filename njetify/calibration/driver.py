"""The model-level entry point: output-matching calibration of every converted layer (DESIGN §3)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .layer_fit import fit_unit, sample_budget
from .options import CalibrationOptions, LayerOptions
from .results import CalibrationResult, LayerResult
from .revert import fixed_r_reason, is_auto_r, restore_conv, retarget_subsamples, subsamples_of
from .sweep import Sweep
from .targets import _batch_size, collect_targets
from .units import Unit, build_units

RevertFn = Callable[[str, str], None]


@contextlib.contextmanager
def _eval(*models: nn.Module):
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _options_for(layer_options) -> Callable[[str], LayerOptions]:
    if layer_options is None:
        return lambda path: LayerOptions()
    if isinstance(layer_options, Mapping):
        return lambda path: layer_options.get(path, LayerOptions())
    if callable(layer_options):
        return layer_options
    raise TypeError(f"layer_options must be None, a mapping path → LayerOptions or a callable, "
                    f"got {type(layer_options).__name__}")


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
    options_for = _options_for(layer_options)
    t0 = time.perf_counter()
    units = build_units(original, converted, list(paths))
    result = CalibrationResult(batches=len(batches), images=sum(_batch_size(b) for b in batches))
    done: dict[int, LayerResult] = {}
    with _eval(original, converted):
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
            lo = options_for(u.path)
            auto, lock = [], None
            if not u.tied:
                auto = [p for p, ss in subsamples_of(converted, u.module) if is_auto_r(ss)]
                lock = fixed_r_reason(converted, u.module)
            before = u.sigmas()
            res = fit_unit(u, inputs, targets[u.index], opts, lo, lock)
            if res.sigma0 != before and auto:
                retarget_subsamples(converted, u.module, auto)
            _gate(u, res, lo, converted, original, revert, sweep)
            done[key] = res

        sweep.run(fit)
        for u in units:
            if u.index not in done:
                res = LayerResult(path=u.path, paths=u.paths + u.extra_paths, kind="tied" if u.tied else "conv",
                                  status="unreached", sigma0=u.sigmas(), weight_error=_weight_error(u),
                                  size=[b.shape[-1] for b, _, _ in u.bases()],
                                  reason="not reached by the calibration data: weight-space fit kept")
                _gate(u, res, options_for(u.path), converted, original, revert, None)
                done[u.index] = res
    result.layers = list(done.values())
    result.seconds = time.perf_counter() - t0
    return result


def _weight_error(u: Unit) -> float | None:
    err = getattr(u.module, "fit_error", None)
    return None if err is None else float(err)


def _gate(u: Unit, res: LayerResult, lo: LayerOptions, converted, original, revert, sweep) -> None:
    """Revert the unit when its error is above ``lo.max_error`` (output error after the fit, else
    the weight-space error)."""
    measured = res.status == "calibrated"
    err = res.error_after if measured else res.weight_error
    if lo.max_error is None or err is None or err <= lo.max_error:
        return
    what = "output" if measured else "weight-space"
    reason = f"fidelity gate: relative {what} error {err:.3f} > max_fit_error {lo.max_error:g}: original conv kept"
    olds = [converted.get_submodule(p) for p in res.paths]
    if revert is None:
        if u.tied:
            for p in res.paths:
                restore_conv(converted, original, p)
        else:
            restore_conv(converted, original, *res.paths)
    else:
        for p in res.paths:
            revert(p, reason)
    if sweep is not None:
        for old, p in zip(olds, res.paths):
            sweep.replace(old, converted.get_submodule(p))
    res.status, res.reason = "reverted", reason
