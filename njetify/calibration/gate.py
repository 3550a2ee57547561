"""The fidelity gate: a layer fitted worse than its ``max_error`` goes back to the original conv."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from .options import LayerOptions
from .results import LayerResult
from .revert import restore_conv
from .units import Unit

#: ``revert(path, reason)``: put the original conv back at ``path`` of the converted model.
RevertFn = Callable[[str, str], None]


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


def apply_gate(u: Unit, res: LayerResult, lo: LayerOptions, converted: nn.Module, original: nn.Module,
               revert: RevertFn | None, sweep) -> None:
    """Revert the unit when its error is above ``lo.max_error`` (the output error after the fit, else
    the weight-space error): ``revert`` (default :func:`restore_conv`) for each of its paths, at once;
    calls of the old layer still in progress in ``sweep`` finish with the original conv."""
    measured = res.status == "calibrated"
    err = res.error_after if measured else res.weight_error
    if lo.max_error is None or err is None or (err <= lo.max_error and lo.max_error > 0):
        return  # max_error 0 reverts even an exact fit
    what = "output" if measured else "weight-space"
    cmp = ">" if err > lo.max_error else "≥"
    reason = f"fidelity gate: relative {what} error {err:.3f} {cmp} max_fit_error {lo.max_error:g}: original conv kept"
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
