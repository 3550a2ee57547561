"""Output-matching calibration of converted models (DESIGN §3).

:func:`calibrate_model` refits every converted layer, in execution order, so that it
reproduces the original conv's outputs on the inputs it receives in the converted
model; σ₀ can be chosen by fit and layers that stay poor are reverted.
"""

from .batches import prepare_batches
from .engine import GateDecision, calibrate, calibrate_model, calibrate_weights
from .options import MAX_FIT_ERROR, CalibrationOptions, LayerOptions
from .progress import on_progress
from .results import CalibrationResult, LayerResult
from .revert import fix_subsamples, restore_conv, retarget_subsamples
from .sigma_search import sigma_candidates

__all__ = [
    "MAX_FIT_ERROR", "CalibrationOptions", "CalibrationResult", "GateDecision", "LayerOptions", "LayerResult",
    "calibrate", "calibrate_model",
    "calibrate_weights", "fix_subsamples", "on_progress", "prepare_batches", "restore_conv", "retarget_subsamples",
    "sigma_candidates",
]
