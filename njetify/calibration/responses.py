"""Basis responses ``q_{c,f} = B_f ∗ x_c`` at sampled output positions of a layer.

A position is ``(n, i, j)``: image n of the batch, row i and column j of the grid
the targets live on. The patch the layer sees for that position starts at row
``i·step`` and column ``j·step`` of the layer's padded input, where ``step`` is the
original conv's stride when the targets are the original conv's outputs (the
positions that survive subsampling) and 1 when they are stride-1 outputs.

Only the sampled patches are gathered, never a full ``C·F``-channel response map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers.padding import tf_same_pads

#: Gathered patches are processed in chunks of about this many bytes.
CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Geometry:
    """How a layer pads its input: ``padding`` ("same" | "dynamic_same"), ``trim`` (pixels per
    side the output is smaller than "same"), ``stride`` used for dynamic pads, ``padding_mode``."""

    padding: str = "same"
    trim: int = 0
    stride: int = 1
    padding_mode: str = "zeros"

    def pads(self, height: int, width: int, size: int) -> list[int]:
        """``[left, right, top, bottom]`` for an ``size × size`` filter (negative: crop)."""
        if self.padding == "same":
            p = (size - 1) // 2 - self.trim
            return [p, p, p, p]
        return tf_same_pads(height, width, size, self.stride)

    def pad(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """``x (N, C, H, W)`` padded (or cropped) as the layer pads it for an ``size``-px filter."""
        pads = self.pads(x.shape[-2], x.shape[-1], size)
        if min(pads) < 0:
            left, right, top, bottom = [max(-p, 0) for p in pads]
            x = x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
            pads = [max(p, 0) for p in pads]
        if not any(pads):
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, pads, mode=mode)

    def out_size(self, height: int, width: int, size: int, step: int) -> tuple[int, int]:
        """Output grid ``(H', W')`` of an ``size``-px filter evaluated every ``step`` pixels."""
        left, right, top, bottom = self.pads(height, width, size)
        return ((height + top + bottom - size) // step + 1, (width + left + right - size) // step + 1)


@dataclass(frozen=True)
class TransposedGeometry(Geometry):
    """A transposed conv seen as a correlation: the input with ``stride − 1`` zeros inserted between
    pixels, padded so that the flipped filter's outputs are the layer's (``crop``: the layer's first
    kept pixel of its full output for an ``size``-px filter, a function of ``size``)."""

    kernel: int = 2
    pad_: int = 0
    output_padding: int = 0

    def _length(self, n: int) -> int:
        return (n - 1) * self.stride - 2 * self.pad_ + self.kernel + self.output_padding

    def pads(self, height: int, width: int, size: int) -> list[int]:
        left = size - 1 - (self.pad_ + (size - 1) // 2 - (self.kernel - 1) // 2)
        out = []
        for n in (width, height):
            stuffed = (n - 1) * self.stride + 1
            out += [left, self._length(n) + size - 1 - stuffed - left]
        return out

    def pad(self, x: torch.Tensor, size: int) -> torch.Tensor:
        s = self.stride
        if s > 1:
            u = x.new_zeros(*x.shape[:-2], (x.shape[-2] - 1) * s + 1, (x.shape[-1] - 1) * s + 1)
            u[..., ::s, ::s] = x
        else:
            u = x
        return F.pad(u, self.pads(x.shape[-2], x.shape[-1], size))  # negative pads crop

    def out_size(self, height: int, width: int, size: int, step: int) -> tuple[int, int]:
        return self._length(height), self._length(width)


def sample_positions(n: int, height: int, width: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """``(S, 3)`` distinct ``(n, i, j)`` positions: ``per_image·n`` of the ``n·H·W`` (all when fewer)."""
    total = n * height * width
    count = min(total, max(1, per_image) * n)
    flat = torch.arange(total) if count == total else torch.randperm(total, generator=generator)[:count].sort().values
    hw = height * width
    return torch.stack([flat // hw, (flat % hw) // width, flat % width], 1)


def take(y: torch.Tensor, positions: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Values of ``y (N, O, H, W)`` at ``(n, i·step, j·step)``: ``(S, O)``."""
    n, i, j = positions.to(y.device).unbind(1)
    return y[n, :, i * step, j * step]


def gather_patches(x_pad: torch.Tensor, positions: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """``size × size`` patches of the padded input at the positions: ``(S, C, size²)``."""
    n, i, j = positions.to(x_pad.device).unbind(1)
    r = torch.arange(size, device=x_pad.device)
    rows = (i * step)[:, None, None] + r[None, :, None]
    cols = (j * step)[:, None, None] + r[None, None, :]
    patches = x_pad[n[:, None, None], :, rows, cols]  # (S, size, size, C): advanced dims first
    return patches.flatten(1, 2).transpose(1, 2)


def basis_responses(
    x: torch.Tensor, basis: torch.Tensor, geometry: Geometry, positions: torch.Tensor, step: int
) -> torch.Tensor:
    """``q (S, C, F)`` with ``q[s, c, f] = Σ_uv B_f(u, v) · x_pad[n, c, i·step + u, j·step + v]``.

    Args:
        x: the layer's input ``(N, C, H, W)``.
        basis: ``(F, s, s)`` (one σ for every output of the layer).
        geometry: how the layer pads its input.
        positions: ``(S, 3)`` rows ``(n, i, j)``.
        step: pixels between neighbouring positions in the padded input.

    Returns float32 (float64 when ``x`` is float64), on ``x``'s device.
    """
    size = basis.shape[-1]
    x_pad = geometry.pad(x, size)
    b = basis.detach().to(x.dtype).flatten(1).T  # (s², F)
    c = x.shape[1]
    chunk = max(1, CHUNK_BYTES // max(1, c * size * size * x.element_size()))
    out = []
    for s0 in range(0, positions.shape[0], chunk):
        p = gather_patches(x_pad, positions[s0 : s0 + chunk], size, step)  # (s, C, size²)
        out.append(p @ b)
    return torch.cat(out) if out else x.new_zeros(0, c, basis.shape[0])
