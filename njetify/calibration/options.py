"""Settings of the calibration engine: global ones, and the per-layer ones a recipe decides."""

from __future__ import annotations

from dataclasses import dataclass

from .. import options as O
from ..options import MAX_FIT_ERROR

__all__ = ["MAX_FIT_ERROR", "CalibrationOptions", "LayerOptions"]


@dataclass
class CalibrationOptions:
    """Engine settings (the defaults are the measured choices of docs/calibration.md).

    max_samples: output positions per layer over all batches (seeded random subset).
    ridge: ridge weight ρ relative to the mean diagonal of the Gram matrix (pulls α towards
        the weight-space fit).
    dense_strided: fit strided layers on every stride-1 position (the original conv evaluated at
        stride 1) instead of the positions the stride keeps.
    search_fraction: share of the positions used to rank σ₀ candidates (the winner is refitted on all).
    sigma_tolerance: a smaller σ₀ wins when its error is within this relative margin of the best
        (smaller filters train faster); the search, from small to large σ₀, stops once the error of the
        largest σ₀ tried exceeds the best by more than this margin.
    search_max_dim: widest regression (C_g·F + biases) whose σ₀ is searched; wider layers keep their σ₀
        (on timm resnet50 the three 512-channel 3×3 convs, 5120 unknowns, would take most of the time).
    direct_max_dim: widest regression (C_g·F + biases) solved from a float64 Gram matrix; wider
        ones use preconditioned conjugate gradients on a stored float32 design.
    design_bytes: memory bound of that stored design (it caps the positions of wide layers).
    max_iter: conjugate-gradient iterations for wide layers.
    wide_solver: ``"pcg"`` (conjugate gradients, the joint fit) or ``"per_channel"`` (each input
        channel on its own, :mod:`.channel_fit`: no stored design, much faster on ASPP-sized layers).
    seed: seeds the position sampling.
    """

    max_samples: int = O.CALIBRATION_MAX_SAMPLES
    ridge: float = O.OUTPUT_MATCHING_RIDGE
    dense_strided: bool = False
    search_fraction: float = O.SIGMA_SEARCH_FRACTION
    sigma_tolerance: float = O.SIGMA_TOLERANCE
    search_max_dim: int = O.SEARCH_MAX_DIM
    direct_max_dim: int = O.DIRECT_MAX_DIM
    design_bytes: int = O.DESIGN_BYTES
    max_iter: int = O.PCG_MAX_ITER
    wide_solver: str = O.WIDE_SOLVER
    seed: int = 0


@dataclass
class LayerOptions:
    """Per-layer settings. ``sigmas``: σ₀ candidates to try (None: keep the layer's σ);
    ``max_error``: the fidelity gate (None: no gate; 0: always revert)."""

    sigmas: tuple[float, ...] | None = None
    max_error: float | None = MAX_FIT_ERROR
