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
    Shapes: ``(N, C·H·W)`` → ``(N, out_features)``.
    """

    map_shape: tuple[int, int, int]

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
        leaf = as_traced_leaf(self, x)
        if leaf is not None:
            return leaf
        if x.dim() == 2 and x.shape[-1] != self.in_features:
            c, h0, w0 = self.map_shape
            h, w = self.map_size(x.shape[-1])
            x = F.adaptive_avg_pool2d(x.view(x.shape[0], c, h, w), (h0, w0)).flatten(1)
        return super().forward(x)

    def map_size(self, width: int) -> tuple[int, int]:
        """``(H, W)`` of a flattened input ``width`` values wide (raises when it is not ``C·H·W``)."""
        c, h0, w0 = self.map_shape
        if width % c:
            raise ValueError(f"GuardedLinear: an input of width {width} is not a flattened map of {c} channels "
                             f"(built for {c}x{h0}x{w0})")
        area = width // c
        pairs = [(d, area // d) for d in range(1, math.isqrt(area) + 1) if area % d == 0]
        pairs += [(b, a) for a, b in pairs]
        return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(h0 / w0)))

    def extra_repr(self) -> str:
        c, h, w = self.map_shape
        return f"{super().extra_repr()}, map={c}x{h}x{w}"
