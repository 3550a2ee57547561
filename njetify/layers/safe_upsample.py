"""SafeUpsample: an upsampling that resizes to the map it merges with (DESIGN §9).

A decoder upsamples a coarse map by a fixed factor (``nn.Upsample``, ``F.interpolate(scale_factor=…)``,
a strided ``ConvTranspose2d``) and adds or concatenates it to an encoder map. Once the encoder's
strides follow σ (safe-subsampling), a fixed factor no longer gives the partner's size. A
SafeUpsample takes the partner as a second input and resizes to its size — a shape-only rule,
so a baked model keeps working at other input sizes:

* when the fixed factor already gives the partner's size (every σ at σ₀), it calls the original
  ``F.interpolate`` with the original arguments: the very same pixels;
* otherwise it interpolates to the partner's size with the same mode.

Without a partner (``ref=None``) it is the original upsampling, so the module still works where
it is called on its own. ``scale_factor=None`` makes it a pure "match the partner's size" step
(placed after a transposed convolution: identity when the sizes agree).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..options import check_choice

#: Interpolation modes of ``F.interpolate`` a SafeUpsample accepts (2-D maps).
MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


class SafeUpsample(nn.Module):
    """Upsample ``x`` by ``scale_factor``, or to the spatial size of ``ref`` when that differs.

    Args:
        scale_factor: the original factor (a number or ``(fy, fx)``); None: resize to ``ref`` only.
        mode: ``F.interpolate`` mode (``"nearest"``, ``"bilinear"``, …).
        align_corners: as for ``F.interpolate`` (None for nearest/area).
        source: what it replaced, for reports (``"interpolate"``, ``"Upsample"``, ``"ConvTranspose2d"``).

    Shapes: ``x (N, C, H, W)``, ``ref (N', C', H', W')`` → ``(N, C, H', W')``; without ``ref``
    ``(N, C, ⌊H·fy⌋, ⌊W·fx⌋)``.
    """

    scale: List[float]
    has_scale: bool
    mode: str
    align_corners: Optional[bool]

    def __init__(self, scale_factor=None, mode: str = "nearest", align_corners: Optional[bool] = None,
                 source: str = "interpolate"):
        super().__init__()
        check_choice("mode", mode, MODES)
        if scale_factor is None:
            scale = [1.0, 1.0]
        else:
            scale = [float(s) for s in scale_factor] if isinstance(scale_factor, (tuple, list)) else [float(scale_factor)] * 2
            if len(scale) != 2 or min(scale) <= 0:
                raise ValueError(f"SafeUpsample: scale_factor must be a positive number or (fy, fx), got {scale_factor!r}")
        self.scale = scale
        self.has_scale = scale_factor is not None
        self.mode = mode
        self.align_corners = None if mode in ("nearest", "nearest-exact", "area") else align_corners
        self.source = source

    @classmethod
    def from_upsample(cls, m: nn.Upsample) -> "SafeUpsample":
        """The SafeUpsample of an ``nn.Upsample`` with ``scale_factor`` (not ``size``)."""
        if m.scale_factor is None:
            raise ValueError("SafeUpsample.from_upsample: the Upsample has a fixed size, not a scale factor")
        if getattr(m, "recompute_scale_factor", None):
            raise ValueError("SafeUpsample.from_upsample: recompute_scale_factor=True is not supported")
        return cls(m.scale_factor, m.mode, m.align_corners, source=type(m).__name__).train(m.training)

    def fixed_size(self, height: int, width: int) -> List[int]:
        """Output ``[H', W']`` of the fixed factor for an input of ``height × width``."""
        return [int(math.floor(height * self.scale[0])), int(math.floor(width * self.scale[1]))]

    def forward(self, x: torch.Tensor, ref: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if ref is None:
            if not self.has_scale:
                return x
            return F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=self.align_corners)
        target = [ref.shape[-2], ref.shape[-1]]
        if self.has_scale and self.fixed_size(h, w) == target:
            return F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=self.align_corners)
        if [h, w] == target:
            return x
        return F.interpolate(x, size=target, mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        factor = f"scale_factor={tuple(self.scale)}" if self.has_scale else "scale_factor=None"
        ac = f", align_corners={self.align_corners}" if self.align_corners is not None else ""
        return f"{factor}, mode={self.mode!r}{ac}, to the size of its partner (replaces {self.source})"
