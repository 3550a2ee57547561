"""Without calibration data: σ₀ by weight-space error, and the fidelity gate on that error."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from torch import nn

from .gate import RevertFn, apply_gate, options_for
from .options import CalibrationOptions, LayerOptions
from .results import CalibrationResult, LayerResult
from .revert import fixed_r_reason, is_auto_r, retarget_subsamples, subsamples_of
from .sigma_search import choose
from .units import build_units


def calibrate_weights(
    original: nn.Module,
    converted: nn.Module,
    paths: Iterable[str],
    *,
    options: CalibrationOptions | None = None,
    layer_options: Mapping[str, LayerOptions] | Callable[[str], LayerOptions] | None = None,
    revert: RevertFn | None = None,
) -> CalibrationResult:
    """The data-free counterpart of :func:`~njetify.calibration.calibrate_model` (same arguments
    but the batches): each layer with σ₀ candidates keeps the one with the lowest weight-space
    error (smallest within ``options.sigma_tolerance``), then layers whose weight-space error is
    above their gate are reverted. Status of every result: ``"weight-space"``."""
    opts = options or CalibrationOptions()
    per_layer = options_for(layer_options)
    t0 = time.perf_counter()
    result = CalibrationResult()
    for u in build_units(original, converted, list(paths)):
        lo = per_layer(u.path)
        res = LayerResult(path=u.path, paths=u.paths + u.extra_paths, kind="tied" if u.tied else "conv",
                          status="weight-space")
        lock = None if u.tied else fixed_r_reason(converted, u.module)
        if lo.sigmas and len(lo.sigmas) > 1 and not u.tied and u.uniform_sigma() and not lock:
            start = u.sigmas()[0]
            auto = [p for p, ss in subsamples_of(converted, u.module) if is_auto_r(ss)]
            for s in lo.sigmas:
                u.set_sigma(s)
                res.candidates[round(float(s), 6)] = u.weight_space_fit()
            chosen = choose(res.candidates, opts.sigma_tolerance)
            u.set_sigma(chosen)
            u.weight_space_fit()
            if abs(chosen - start) > 1e-9 and auto:
                retarget_subsamples(converted, u.module, auto)
        elif lock and lo.sigmas and len(lo.sigmas) > 1:
            res.reason = f"σ₀ kept: {lock}"
        res.weight_error = u.weight_error()
        res.sigma0 = [round(v, 6) for v in u.sigmas()]
        res.size = [b.shape[-1] for b, _, _ in u.bases()]
        apply_gate(u, res, lo, converted, original, revert, None)
        result.layers.append(res)
    result.seconds = time.perf_counter() - t0
    return result
