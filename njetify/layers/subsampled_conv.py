"""A plain convolution that used to be strided: it runs at stride 1 and then safe-subsamples.

Used for the strided convolutions that do not become N-Jet layers (1×1 shortcuts, kernels
a recipe skips): the module keeps its class family (``isinstance(m, nn.Conv2d)``), its
``weight`` / ``bias`` parameters and their state_dict keys; only the stride moves into the
``subsample`` child (DESIGN §4 and §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._clone import clone_as
from ._fx import as_traced_leaf

from .safe_subsample import SafeSubsample, exact_stride, strided_pick

__all__ = ["SubsampledConv2d"]


class SubsampledConv2d(nn.Conv2d):
    """``nn.Conv2d`` at stride 1 followed by its ``subsample`` (a :class:`SafeSubsample`).

    Build it with :meth:`from_conv`, which shares the original's parameters. Its ``subsample``
    child is a :class:`SafeSubsample` (a :class:`FixedSubsample` once baked: then it scripts).
    Shapes: ``(N, C_in, H, W)`` → ``(N, C_out, H', W')``; at σ₀ exactly the strided conv's output.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, subsample: SafeSubsample) -> "SubsampledConv2d":
        """The same convolution (same parameter objects, hooks and attributes) at stride 1, then ``subsample``.

        ``conv`` must be a plain ``nn.Conv2d`` (a subclass with its own forward has semantics
        this class cannot keep)."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"SubsampledConv2d.from_conv: expected a plain nn.Conv2d, got {type(conv).__name__}")
        new = clone_as(conv, cls)
        new.stride = (1, 1)
        new.subsample = subsample
        return new

    def frozen(self) -> nn.Module:
        """This conv with its subsampling frozen (:meth:`SafeSubsample.frozen`), as :meth:`strided_if_exact`
        makes it: what :func:`njetify.bake` puts in its place."""
        new = clone_as(self, SubsampledConv2d)
        new.subsample = self.subsample.frozen() if isinstance(self.subsample, SafeSubsample) else self.subsample
        return new.strided_if_exact()

    def strided_if_exact(self) -> nn.Module:
        """A plain ``nn.Conv2d`` at stride k (same parameters) when ``subsample`` keeps exactly every
        k-th pixel of every input size (:func:`~njetify.layers.safe_subsample.exact_stride`: a frozen
        nearest factor of exactly 1/k), else ``self``: the same outputs, at 1/k² of the work."""
        k = exact_stride(self.subsample)
        if k is None or isinstance(self.padding, str):
            return self
        conv = clone_as(self, nn.Conv2d)
        del conv.subsample
        conv.stride = (k, k)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            leaf = as_traced_leaf(self, x)
            if leaf is not None:
                return leaf
        if not torch.jit.is_scripting() and self.padding_mode == "zeros" and x.dim() == 4 \
                and not isinstance(self.padding, str):
            k = strided_pick(self.subsample, *_full_size(self, x), x.device)
            if k is not None:  # the subsampling keeps every k-th pixel: the same output at stride k
                return self.subsample.already_picked(F.conv2d(x, self.weight, self.bias, k, self.padding,
                                                              self.dilation, self.groups))
        return self.subsample(self._conv_forward(x, self.weight, self.bias))


def _full_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``conv``'s stride-1 output on ``x``."""
    return tuple(x.shape[-2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1)
                 for i in range(2))
