"""Every allowed value of njetify's options, and the checks that enforce them — in one place.

The layers, the recipes, the surgery and the command line import these tuples and
checks, so an allowed value (an order, a subsampling mode, a size cap) is defined
once and every error names the option, the value and what is allowed.
"""

from __future__ import annotations

import math

from .basis import MAX_ORDER

__all__ = [
    "AMP_MODES", "ASPP_TIE", "CALIBRATION_MAX_SAMPLES", "CLASS_WEIGHTS", "DESIGN_BYTES", "DIRECT_MAX_DIM", "INTERPOLATIONS", "MAX_FIT_ERROR", "MAX_ORDER", "MOMENTS_RIDGE", "OPTIMIZERS", "OUTPUT_MATCHING_RIDGE",
    "PCG_MAX_ITER", "PCG_TOL", "WIDE_SOLVER", "WIDE_SOLVERS",
    "PADDING_MODES", "SCHEDULES", "SEARCH_MAX_DIM", "SIGMA_PER", "SIGMA_FRACTIONS", "SIGMA_PER_AXIS", "SIGMA_SEARCH_FRACTION", "SIGMA_TOLERANCE", "SUBSAMPLE_MODES", "SUBSAMPLE_WHERE", "TASKS",
    "check_choice", "check_max_size", "check_order", "check_positive", "check_r", "order_problem", "r_problem",
]

#: ``subsample.mode``: strided ops → stride 1 + safe-subsampling, or keep them.
SUBSAMPLE_MODES = ("safe", "keep")
#: ``subsample.where``: only where the network subsampled, or after every N-Jet layer.
SUBSAMPLE_WHERE = ("original", "every_layer")
#: ``subsample.interpolation``: how a safe-subsampling resizes its map.
INTERPOLATIONS = ("nearest", "bilinear", "area")
#: ``sigma_per``: one σ per layer (the paper) or one per output channel.
SIGMA_PER = ("layer", "channel")
#: Padding modes of a convolution (as ``nn.Conv2d``).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: ``aspp.tie``: tie detected DeepLab ASPP heads ("auto": when found, silently otherwise).
ASPP_TIE = ("auto", True, False)
#: ``sigma_per_axis``: one σ per axis for non-square kernels only ("auto"), for every stride-1 kernel, never.
SIGMA_PER_AXIS = ("auto", True, False)
#: ``max_fit_error`` default, the fidelity gate: a layer whose relative output error after the fit
#: (weight-space error without data) is above this stays the original convolution
#: (docs/calibration.md gives the measurements behind the value).
MAX_FIT_ERROR = 0.5

# --- calibration engine defaults (``calibration:`` recipe block, :class:`njetify.calibration.CalibrationOptions`;
# docs/calibration.md gives the measurements behind each value)
#: Ridge weight ρ of the output-matching regression, relative to the mean diagonal of its Gram matrix
#: (pulls α towards the weight-space fit).
OUTPUT_MATCHING_RIDGE = 1e-3
#: Ridge weight of the per-input-channel solver (:mod:`njetify.calibration.channel_fit`) relative to each
#: channel's mean diagonal of ``Σ q qᵀ``; keeps channels that never fire at the weight-space fit.
MOMENTS_RIDGE = 1e-6
#: Output positions per layer over all calibration batches (seeded random subset).
CALIBRATION_MAX_SAMPLES = 8192
#: Share of the positions used to rank σ₀ candidates.
SIGMA_SEARCH_FRACTION = 0.25
#: A smaller σ₀ wins when its output error is within this relative margin of the best.
SIGMA_TOLERANCE = 0.02
#: Widest regression (C_g·F + biases) whose σ₀ is searched (recipe ``search_max_dim``).
SEARCH_MAX_DIM = 4096
#: Widest regression solved from a float64 Gram matrix; wider ones use conjugate gradients.
DIRECT_MAX_DIM = 8192
#: Memory bound (bytes) of the stored float32 design of a wide layer.
DESIGN_BYTES = 2**30
#: ``sigma_init: fit``: where between the kernel rule's σ₀ and the largest σ of one filter size more the
#: σ₀ candidates sit (0: the kernel rule's σ₀; 1: the largest σ whose filter is 2 px larger).
SIGMA_FRACTIONS = (0.0, 0.2, 0.5, 1.0)
#: Conjugate-gradient iterations (and relative residual tolerance) for wide layers.
PCG_MAX_ITER = 60
PCG_TOL = 1e-4
#: ``calibration.wide_solver``: how a layer wider than ``direct_max_dim`` is solved — conjugate gradients
#: on a stored design (the joint fit), or per input channel (no design stored; channels decoupled).
WIDE_SOLVERS = ("pcg", "per_channel")
WIDE_SOLVER = "pcg"

#: ``finetune.optimizer``: SGD with momentum, or AdamW.
OPTIMIZERS = ("sgd", "adamw")
#: ``finetune.schedule``: learning-rate schedule after the warm-up.
SCHEDULES = ("cosine", "step", "constant")
#: ``finetune.amp``: full precision, bf16 autocast (CPU and CUDA), fp16 autocast + GradScaler (CUDA only).
AMP_MODES = ("none", "bf16", "fp16")
#: ``finetune.class_weights`` (segmentation loss; None: unweighted).
CLASS_WEIGHTS = ("inverse_frequency",)
#: ``task`` of the trainer.
TASKS = ("classification", "segmentation")


def order_problem(value) -> str | None:
    """None when ``value`` is an allowed derivative order, else what is allowed."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ORDER:
        return None
    return f"an int in 0..{MAX_ORDER} (the basis has (N+1)(N+2)/2 filters)"


def check_order(value, name: str = "order") -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``0..MAX_ORDER``."""
    problem = order_problem(value)
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}")


def check_positive(name: str, value) -> None:
    """Raise unless ``value`` is a positive finite number."""
    try:
        ok = not isinstance(value, bool) and 0 < float(value) < math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not ok:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_choice(name: str, value, allowed: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_max_size(value, name: str = "max_size") -> None:
    """Raise ``ValueError`` unless ``value`` is None or a positive int (a filter-size cap in pixels)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int (pixels) or None, got {value!r}")


def r_problem(value) -> str | None:
    """None when ``value`` is an allowed ``subsample.r`` (``"auto"`` or a positive finite number), else what is allowed."""
    if isinstance(value, str) and value == "auto":
        return None
    if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < float(value) < math.inf:
        return None
    return "'auto' or a positive number (the paper uses 4; 'auto': the factor at σ₀ is 1/the original stride)"


def check_r(value, name: str = "r") -> None:
    """Raise ``ValueError`` unless ``value`` is ``"auto"`` or a positive number (the paper uses 4)."""
    problem = r_problem(value)
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}")
