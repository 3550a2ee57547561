"""σ₀ by fit: which scales to try for a layer, and which one to keep."""

from __future__ import annotations

from .. import basis as B
from ..fit import sigma_from_kernel
from ..options import SIGMA_FRACTIONS as FRACTIONS


def sigma_candidates(kernel_size: int, dilation: int = 1, extent: float = 2.0,
                     fractions=FRACTIONS) -> tuple[float, ...]:
    """σ₀ candidates from the kernel rule ``d·(k−1)/(2·extent)`` up to the largest σ whose filter is
    one size (2 px) larger: 3×3 at extent 2 → (0.5, 0.6, 0.75, 1.0); 5×5 → (1.0, 1.1, 1.25, 1.5).
    A 1×1 kernel (σ₀ = 0 by the rule) gets no candidates. ``fractions``: where between the two
    (recipe ``calibration.sigma_fractions``)."""
    s0 = sigma_from_kernel(kernel_size, dilation, extent)
    if s0 <= 0:
        return ()
    top = (B.half_width(s0, extent) + 1) / extent
    return tuple(round(s0 + (top - s0) * f, 6) for f in fractions)


def choose(errors: dict[float, float], tolerance: float = 0.02) -> float:
    """The smallest σ whose error is within ``tolerance`` (relative) of the lowest error."""
    best = min(errors.values())
    return min(s for s, e in errors.items() if e <= best * (1 + tolerance) + 1e-12)
