"""Safe pooling: a max/avg pool run at stride 1, then resized by a σ-driven factor (DESIGN §4).

Picking every ``stride``-th pixel of :class:`StridelessPool2d`'s output (a
:class:`~njetify.layers.SafeSubsample` at σ₀) gives exactly what the strided pool gave:
same windows, same count of outputs, floor and ceil mode, both ``count_include_pad``
settings. :class:`SafePool2d` is the pair, the module that replaces a strided pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._fx import as_traced_leaf
from .safe_subsample import SafeSubsample

__all__ = ["PoolSpec", "SafePool2d", "StridelessPool2d"]


@dataclass
class PoolSpec:
    """A 2-D max/avg pooling with square parameters (pixels)."""

    kind: str  # "max" | "avg"
    kernel: int
    stride: int
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    @property
    def extra(self) -> int:
        """Right/bottom pixels added at stride 1 so ceil mode keeps its last, partial window."""
        return self.stride - 1 if self.ceil_mode else 0

    @property
    def offset(self) -> int:
        """Side of the stride-1 output minus the side of the input."""
        return 2 * self.padding - self.dilation * (self.kernel - 1) + self.extra

    def describe(self) -> str:
        ceil = " ceil" if self.ceil_mode else ""
        pad = f" p{self.padding}" if self.padding else ""
        return f"{self.kind} {self.kernel}x{self.kernel} s{self.stride}{pad}{ceil}"


class StridelessPool2d(nn.Module):
    """The pooling of ``spec`` at stride 1 (see module docstring).

    Shapes: ``(N, C, H, W)`` → ``(N, C, H + offset, W + offset)`` with ``offset = spec.offset``.
    """

    def __init__(self, spec: PoolSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaf = as_traced_leaf(self, x)
        if leaf is not None:
            return leaf
        return self.pool(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling of ``spec`` at stride 1."""
        s = self.spec
        h, w = x.shape[-2:]
        # A map that σ made smaller than the window still gives one output (no crash at large σ).
        dk = s.dilation * (s.kernel - 1) + 1
        eh = max(s.extra, dk - h - 2 * s.padding)
        ew = max(s.extra, dk - w - 2 * s.padding)
        if s.kind == "max":
            if eh or ew:
                x = F.pad(x, (0, ew, 0, eh), value=float("-inf"))
            return F.max_pool2d(x, s.kernel, 1, s.padding, s.dilation)
        if not (eh or ew) and s.divisor_override is None:
            return F.avg_pool2d(x, s.kernel, 1, s.padding, False, s.count_include_pad)
        # Sum over each window divided by the count strided avg_pool uses for it.
        sums = F.avg_pool2d(F.pad(x, (0, ew, 0, eh)), s.kernel, 1, s.padding, False, True, divisor_override=1)
        if s.divisor_override is not None:
            return sums / s.divisor_override
        p = s.padding
        ones = x.new_ones(1, 1, h, w)
        if s.count_include_pad:  # padding counts, the ceil-mode overhang does not
            ones = F.pad(F.pad(ones, (p, p, p, p), value=1.0), (0, ew, 0, eh))
        else:
            ones = F.pad(ones, (p, p + ew, p, p + eh))
        counts = F.avg_pool2d(ones, s.kernel, 1, 0, False, True, divisor_override=1)
        return sums / counts.clamp_min(1)

    def extra_repr(self) -> str:
        return f"{self.spec.describe()} at stride 1"


class SafePool2d(StridelessPool2d):
    """A strided pool made safe: the pool of ``spec`` at stride 1, then its ``subsample``.

    At σ₀ (``r="auto"``) it returns exactly what the strided pool returned.
    Shapes: ``(N, C, H, W)`` → ``(N, C, H', W')`` with H' = ``subsample.output_size(H + spec.offset)``.
    """

    def __init__(self, spec: PoolSpec, subsample: SafeSubsample):
        super().__init__(spec)
        self.subsample = subsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaf = as_traced_leaf(self, x)
        return leaf if leaf is not None else self.subsample(self.pool(x))

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, safe-subsampled"
