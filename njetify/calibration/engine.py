"""The calibration engine: units, batches and options in; fits and decisions out.

:func:`calibrate` is the one entry point. With batches, every converted layer (and tied ASPP head)
is refitted by output matching, in the order the converted model's forward reaches it
(:mod:`.layer_fit`, :mod:`.sweep`); without batches (``batches=None``), σ₀ candidates are ranked by
weight-space error. Either way each unit then meets the fidelity gate, whose verdict is a typed
:class:`GateDecision` (keep or revert, the error, the limit, what was measured) — data, never text to be
parsed. A revert is applied at once, through ``revert(path, decision)`` (the surgery's goes through
its :class:`~njetify.surgery.rewrite.Rewriter`; the default, :func:`~.revert.restore_conv`, edits the
module tree directly for standalone use), so later layers are fitted on the original conv's outputs.

:func:`calibrate_model` and :func:`calibrate_weights` are the two ways of calling it (with and
without data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from ..modes import evaluating
from .layer_fit import fit_unit, sample_budget
from .options import CalibrationOptions, LayerOptions
from .progress import report_progress
from .results import CalibrationResult, LayerResult
from .revert import auto_subsamples, fixed_r_reason, restore_conv, retarget_subsamples
from .sigma_search import choose
from .sweep import Sweep
from .targets import batch_size, collect_targets
from .units import Unit, build_units

__all__ = ["GateDecision", "RevertFn", "calibrate", "calibrate_model", "calibrate_weights", "gate"]


@dataclass(frozen=True)
class GateDecision:
    """The fidelity gate's verdict on one unit (a layer, or a tied head: ``paths`` are its branches).

    ``action``: ``"keep"`` (the σ layer stays) or ``"revert"`` (the original conv is back).
    ``error``: the error the gate compared (None: nothing to compare); ``limit``: the unit's
    ``max_fit_error`` (None: no gate); ``measured``: ``"output"`` (relative output error after the fit)
    or ``"weight-space"`` (relative weight-space error: no data, or the layer was not fitted on it).
    """

    path: str
    paths: tuple[str, ...]
    action: str
    error: float | None = None
    limit: float | None = None
    measured: str = "output"

    @property
    def reverted(self) -> bool:
        return self.action == "revert"

    @property
    def comparison(self) -> str:
        """``">"``, or ``"≥"`` for a gate at 0 that reverts even an exact fit."""
        return ">" if self.error is not None and self.limit is not None and self.error > self.limit else "≥"

    @property
    def reason(self) -> str | None:
        """The revert's reason in words, with the number (None when kept)."""
        if not self.reverted:
            return None
        return (f"fidelity gate: relative {self.measured} error {self.error:.3f} {self.comparison} max_fit_error "
                f"{self.limit:g}: original conv kept")


#: ``revert(path, decision)``: put the original conv back at ``path`` of the converted model.
RevertFn = Callable[[str, GateDecision], None]


def options_for(layer_options) -> Callable[[str], LayerOptions]:
    """``path → LayerOptions`` from None (defaults), a mapping or a callable."""
    if layer_options is None:
        return lambda path: LayerOptions()
    if isinstance(layer_options, Mapping):
        return lambda path: layer_options.get(path, LayerOptions())
    if callable(layer_options):
        return layer_options
    raise TypeError(f"layer_options must be None, a mapping path → LayerOptions or a callable, "
                    f"got {type(layer_options).__name__}")


def gate(res: LayerResult, lo: LayerOptions) -> GateDecision:
    """The verdict on ``res`` at ``lo.max_error``: the output error after the fit when it was fitted on
    data (status ``calibrated``), else the weight-space error; a limit of 0 reverts even an exact fit."""
    measured = res.status == "calibrated"
    err = res.error_after if measured else res.weight_error
    revert = not (lo.max_error is None or err is None or (err <= lo.max_error and lo.max_error > 0))
    return GateDecision(res.path, tuple(res.paths), "revert" if revert else "keep", err, lo.max_error,
                    "output" if measured else "weight-space")


def _apply(u: Unit, res: LayerResult, lo: LayerOptions, converted: nn.Module, original: nn.Module,
           revert: RevertFn | None, sweep, result: CalibrationResult) -> None:
    """Gate the unit, record the decision, and revert it at once when it fails (calls of the old layer
    still in progress in ``sweep`` finish with the original conv)."""
    decision = gate(res, lo)
    result.decisions.append(decision)
    if not decision.reverted:
        return
    olds = [converted.get_submodule(p) for p in res.paths]
    if revert is None:
        if u.tied:
            for p in res.paths:
                restore_conv(converted, original, p)
        else:
            restore_conv(converted, original, *res.paths)
    else:
        for p in res.paths:
            revert(p, decision)
    if sweep is not None:
        for old, p in zip(olds, res.paths):
            sweep.replace(old, converted.get_submodule(p))
    res.status, res.reason = "reverted", decision.reason


def calibrate(
    original: nn.Module,
    converted: nn.Module,
    paths: Iterable[str],
    batches: list | None,
    *,
    options: CalibrationOptions | None = None,
    layer_options: Mapping[str, LayerOptions] | Callable[[str], LayerOptions] | None = None,
    revert: RevertFn | None = None,
) -> CalibrationResult:
    """Fit every converted layer at ``paths`` and gate it; ``batches=None``: without data (weight space).

    Args:
        original: the unconverted model (not modified); without data anything that answers
            ``get_submodule(path)`` with the original conv.
        converted: the converted model; modified in place (α, bias, σ₀, reverted layers).
        paths: module paths of the converted layers (every branch of a tied head).
        batches: model inputs on the models' device and dtype, or None.
        options: engine settings (:class:`CalibrationOptions`, the recipe's ``calibration:`` block).
        layer_options: per path, σ₀ candidates and the gate (:class:`LayerOptions`); a mapping or a
            callable ``path → LayerOptions``.
        revert: ``revert(path, decision)`` swaps the original conv back in (default
            :func:`~njetify.calibration.revert.restore_conv`); called at once.

    Returns:
        :class:`CalibrationResult`: the fits (``layers``, one :class:`LayerResult` per unit) and the
        gate's ``decisions`` (one :class:`GateDecision` per unit, in the same order).
    """
    opts = options or CalibrationOptions()
    per_layer = options_for(layer_options)
    if batches is None:
        return _without_data(original, converted, list(paths), opts, per_layer, revert)
    return _with_data(original, converted, list(paths), batches, opts, per_layer, revert)


def calibrate_model(original, converted, paths, batches, *, options=None, layer_options=None,
                    revert=None) -> CalibrationResult:
    """Output-matching calibration on ``batches``: :func:`calibrate` with data.

    For each layer, in the order the converted model's forward reaches it: inputs = what the
    layer receives in ``converted`` (earlier layers already fitted, so their errors are
    compensated); targets = what the original conv at the same path outputs in ``original``; α
    and the bias solve a ridge regression on the basis responses of all input channels of the
    layer's group. Cost: one forward of ``original`` and one of ``converted`` per batch.
    """
    if original is converted:
        raise ValueError("calibration: original and converted are the same module; keep an unconverted copy")
    return calibrate(original, converted, paths, batches, options=options, layer_options=layer_options,
                     revert=revert)


def calibrate_weights(original, converted, paths, *, options=None, layer_options=None,
                      revert=None) -> CalibrationResult:
    """Without data: :func:`calibrate` with ``batches=None``. Each layer with σ₀ candidates keeps the one
    with the lowest weight-space error (smallest within ``options.sigma_tolerance``), then layers whose
    weight-space error is above their gate are reverted. Status of every result: ``"weight-space"``."""
    return calibrate(original, converted, paths, None, options=options, layer_options=layer_options,
                     revert=revert)


def _result(u: Unit, status: str, reason: str | None = None) -> LayerResult:
    return LayerResult(path=u.path, paths=u.paths + u.extra_paths, kind=u.kind,
                       status=status, sigma0=u.sigmas(), weight_error=u.weight_error(),
                       size=[b.shape[-1] for b, _, _ in u.bases()], reason=reason)


def _without_data(original, converted, paths, opts, per_layer, revert) -> CalibrationResult:
    t0 = time.perf_counter()
    result = CalibrationResult()
    for u in build_units(original, converted, paths):
        lo = per_layer(u.path)
        res = LayerResult(path=u.path, paths=u.paths + u.extra_paths, kind=u.kind,
                          status="weight-space")
        lock = fixed_r_reason(converted, u.module)  # a tied head drives no subsampling: None
        if lo.sigmas and len(lo.sigmas) > 1 and not u.tied and u.uniform_sigma() and not lock:
            start = u.sigmas()[0]
            auto = auto_subsamples(converted, u.module)
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
        _apply(u, res, lo, converted, original, revert, None, result)
        result.layers.append(res)
    result.seconds = time.perf_counter() - t0
    return result


def _with_data(original, converted, paths, batches, opts, per_layer, revert) -> CalibrationResult:
    t0 = time.perf_counter()
    units = build_units(original, converted, paths)
    result = CalibrationResult(batches=len(batches), images=sum(batch_size(b) for b in batches))
    done: dict[int, LayerResult] = {}
    with evaluating(original), evaluating(converted):
        budgets = {u.index: sample_budget(u, opts) for u in units}
        targets = collect_targets(original, units, batches, budgets=budgets, dense_strided=opts.dense_strided,
                                  seed=opts.seed)
        result.target_seconds = time.perf_counter() - t0
        watch = {}
        for u in units:
            for p in u.watch_paths:
                watch[converted.get_submodule(p)] = u.index
        sweep = Sweep(converted, batches, watch)

        def fit(key, inputs):
            u = units[key]
            lo = per_layer(u.path)
            auto, lock = auto_subsamples(converted, u.module), fixed_r_reason(converted, u.module)
            before = u.sigmas()
            if not _has_targets(targets[u.index], inputs):
                res = _result(u, "unreached", "the original conv recorded no output on the calibration batches "
                                              "that reach it (its forward hooks did not run: a compiled or scripted "
                                              "original model?): weight-space fit kept")
            else:
                res = fit_unit(u, inputs, targets[u.index], opts, lo, lock)
                if res.sigma0 != before and auto:
                    retarget_subsamples(converted, u.module, auto)
            _apply(u, res, lo, converted, original, revert, sweep, result)
            done[key] = res
            report_progress(len(done), len(units))

        sweep.run(fit)
        for u in units:
            if u.index not in done:
                res = _result(u, "unreached", "not reached by the calibration data: weight-space fit kept")
                _apply(u, res, per_layer(u.path), converted, original, revert, None, result)
                done[u.index] = res
    result.layers = list(done.values())
    by_path = {d.path: d for d in result.decisions}
    result.decisions = [by_path[r.path] for r in result.layers]  # the fits' order
    result.seconds = time.perf_counter() - t0
    return result


def _has_targets(unit_targets: list, inputs: list) -> bool:
    """Whether the original conv's outputs were recorded on any batch whose input reached the layer."""
    return any(branch.get(b) is not None for branch in unit_targets for b, _ in inputs)
