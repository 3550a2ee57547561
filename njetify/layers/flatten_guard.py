"""A Linear layer behind a flatten whose feature map now follows σ: it resizes the map back.

After safe-subsampling, the map that a ``flatten → Linear`` head reads changes size with σ,
and the Linear's ``in_features`` no longer match. :class:`GuardedLinear` is the same
``nn.Linear`` (same parameters and state_dict keys, still ``isinstance(m, nn.Linear)``) that,
when its input has the wrong width, unflattens it to the map it came from, resizes that map
to the original size by adaptive average pooling (which also upsamples by replication)
and flattens it again — exactly what a resize placed before the flatten would do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._clone import clone_as
from ._fx import as_traced_leaf

__all__ = ["GuardedLinear"]


class GuardedLinear(nn.Linear):
    """``nn.Linear`` that accepts a flattened ``(N, C·H·W)`` map of any size ``H × W``.

    ``map_shape = (C, H₀, W₀)`` is the map the layer was built for (``C·H₀·W₀ == in_features``).
    A wider or narrower input is read as ``(N, C, H, W)`` with ``H·W`` from its width and
    ``H : W`` as close to ``H₀ : W₀`` as the divisors allow (exact for square maps).
    Shapes: ``(N, C·H·W)`` → ``(N, out_features)``. The forward scripts (``torch.jit.script``).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, map_shape: tuple[int, int, int]) -> "GuardedLinear":
        """The same layer (same parameter objects, hooks and attributes), guarded for ``map_shape``."""
        if type(linear) not in (nn.Linear, cls):
            raise TypeError(f"GuardedLinear.from_linear: expected a plain nn.Linear, got {type(linear).__name__}")
        c, h, w = (int(v) for v in map_shape)
        if c * h * w != linear.in_features:
            raise ValueError(f"GuardedLinear: map_shape {map_shape} has {c * h * w} values, the layer reads "
                             f"in_features={linear.in_features}")
        new = clone_as(linear, cls)
        new.map_shape = (c, h, w)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            leaf = as_traced_leaf(self, x)
            if leaf is not None:
                return leaf
        if x.dim() == 2 and x.shape[-1] != self.in_features:
            c, h0, w0 = self.map_shape
            h, w = self.map_size(x.shape[-1])
            x = F.adaptive_avg_pool2d(x.view(x.shape[0], c, h, w), [h0, w0]).flatten(1)
        return F.linear(x, self.weight, self.bias)

    def map_size(self, width: int) -> tuple[int, int]:
        """``(H, W)`` of a flattened input ``width`` values wide (raises when it is not ``C·H·W``):
        the divisor pair of ``width / C`` whose aspect is nearest ``H₀ : W₀``."""
        c, h0, w0 = self.map_shape
        if width % c:
            raise ValueError(f"GuardedLinear: an input of width {width} is not a flattened map of {c} channels "
                             f"(built for {c}x{h0}x{w0})")
        area = width // c
        target = math.log(h0 / w0)
        best, best_gap = (1, area), math.inf
        d = 1
        while d * d <= area:
            if area % d == 0:
                for h in (d, area // d):
                    gap = abs(math.log(h / (area // h)) - target)
                    if gap < best_gap:
                        best, best_gap = (h, area // h), gap
            d += 1
        return best

    def extra_repr(self) -> str:
        c, h, w = self.map_shape
        return f"{super().extra_repr()}, map={c}x{h}x{w}"
