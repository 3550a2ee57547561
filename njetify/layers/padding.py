"""TensorFlow "SAME" padding, shared by N-Jet layers and their baked form."""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(height: int, width: int, size: int, stride: int) -> list[int]:
    """Pads ``[left, right, top, bottom]`` for a ``size``×``size`` kernel: per axis
    ``max((⌈L/stride⌉−1)·stride + size − L, 0)`` in total, the smaller half first."""
    pads: List[int] = []  # annotated: torch.jit.script reads an empty list as List[Tensor]
    for length in [width, height]:
        total = max((math.ceil(length / stride) - 1) * stride + size - length, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Conv2dDynamicSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    The baked form of an N-Jet layer with ``padding="dynamic_same"`` (from timm's
    ``Conv2dSame``). Shapes: ``(N, C_in, H, W)`` → ``(N, C_out, ⌈H/stride⌉, ⌈W/stride⌉)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = tf_same_pads(x.shape[-2], x.shape[-1], self.kernel_size[0], self.stride[0])
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, pads, mode=mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def crop(x: torch.Tensor, crops: list[int]) -> torch.Tensor:
    """Remove (left, right, top, bottom) pixels from the last two dims (a negative padding)."""
    left, right, top, bottom = crops[0], crops[1], crops[2], crops[3]
    h, w = x.shape[-2], x.shape[-1]
    return x[..., top : h - bottom, left : w - right]


def pad_or_crop(x: torch.Tensor, pads: List[int], padding_mode: str = "zeros") -> torch.Tensor:
    """``x`` padded by ``pads`` ``[left, right, top, bottom]`` in ``padding_mode`` (negative: crop); scripts."""
    if min(pads) < 0:
        x = crop(x, [max(-p, 0) for p in pads])
        pads = [max(p, 0) for p in pads]
    if max(pads) == 0:
        return x
    return F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
