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
from .safe_subsample import SafeSubsample, strided_pick

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
    The forward scripts (``torch.jit.script``): it reads plain copies of the spec's numbers.
    """

    __jit_ignored_attributes__ = ["spec"]

    def __init__(self, spec: PoolSpec):
        super().__init__()
        self.spec = spec

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "spec":  # the numbers the forward reads (a dataclass does not script)
            self._max = value.kind == "max"
            self._kernel, self._padding, self._dilation = value.kernel, value.padding, value.dilation
            self._extra, self._include_pad = value.extra, value.count_include_pad
            self._divisor = int(value.divisor_override or 0)

    def __setstate__(self, state):  # a module pickled before the copies existed
        super().__setstate__(state)
        self.spec = self.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            leaf = as_traced_leaf(self, x)
            if leaf is not None:
                return leaf
        return self.pool(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling of ``spec`` at stride 1."""
        k, p = self._kernel, self._padding
        h, w = x.shape[-2], x.shape[-1]
        # A map that σ made smaller than the window still gives one output (no crash at large σ).
        dk = self._dilation * (k - 1) + 1
        eh = max(self._extra, dk - h - 2 * p)
        ew = max(self._extra, dk - w - 2 * p)
        if self._max:
            if eh or ew:
                x = F.pad(x, [0, ew, 0, eh], value=float("-inf"))
            return F.max_pool2d(x, k, 1, p, self._dilation)
        if not (eh or ew) and self._divisor == 0:
            return F.avg_pool2d(x, k, 1, p, False, self._include_pad)
        # Sum over each window divided by the count strided avg_pool uses for it.
        sums = F.avg_pool2d(F.pad(x, [0, ew, 0, eh]), k, 1, p, False, True, divisor_override=1)
        if self._divisor:
            return sums / self._divisor
        ones = x.new_ones(1, 1, h, w)
        if self._include_pad:  # padding counts, the ceil-mode overhang does not
            ones = F.pad(F.pad(ones, [p, p, p, p], value=1.0), [0, ew, 0, eh])
        else:
            ones = F.pad(ones, [p, p + ew, p, p + eh])
        counts = F.avg_pool2d(ones, k, 1, 0, False, True, divisor_override=1)
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
        if not torch.jit.is_scripting():
            leaf = as_traced_leaf(self, x)
            if leaf is not None:
                return leaf
            picked = self._picked_pool(x)
            if picked is not None:
                return picked
        return self.subsample(self.pool(x))

    def _picked_pool(self, x: torch.Tensor) -> torch.Tensor | None:
        """A max pool whose subsampling keeps exactly every k-th pixel (:func:`strided_pick`) runs at
        stride k: the same output, without the stride-1 map (inside a graph too: the host decides; None otherwise)."""
        if not self._max or x.dim() != 4:
            return None
        k, p, d = self._kernel, self._padding, self._dilation
        dk = d * (k - 1) + 1
        h, w = x.shape[-2] + 2 * p - dk + 1, x.shape[-1] + 2 * p - dk + 1
        if self._extra or h < 1 or w < 1:
            return None
        stride = strided_pick(self.subsample, h, w, x.device)
        if stride is None:
            return None
        return self.subsample.already_picked(F.max_pool2d(x, k, stride, p, d))

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, safe-subsampled"
