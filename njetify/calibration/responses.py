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

from ..fit import CHUNK_BYTES  # gathered patches and response maps are processed in chunks of this size
from ..layers.padding import tf_same_pads


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
    factors = separable(basis) if _maps_cheaper(x_pad, positions.shape[0], size) else None
    if factors is not None:
        return _from_maps(x_pad, factors, positions, step)
    b = basis.detach().to(x.dtype).flatten(1).T  # (s², F)
    c = x.shape[1]
    chunk = max(1, CHUNK_BYTES // max(1, c * size * size * x.element_size()))
    out = []
    for s0 in range(0, positions.shape[0], chunk):
        p = gather_patches(x_pad, positions[s0 : s0 + chunk], size, step)  # (s, C, size²)
        out.append(p @ b)
    return torch.cat(out) if out else x.new_zeros(0, c, basis.shape[0])


def _maps_cheaper(x_pad: torch.Tensor, samples: int, size: int) -> bool:
    """Whether two 1-D passes over the whole padded input (``2·N·H·W·s`` multiply-adds per channel and
    filter) cost less than the ``S·s²`` of gathering every sampled patch."""
    n, _, h, w = x_pad.shape
    return 2 * n * h * w * size < samples * size * size


def separable(basis: torch.Tensor, tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(columns (F, s), rows (F, s))`` with ``basis[f] = outer(columns[f], rows[f])`` when every
    filter of ``basis (F, s, s)`` has rank one (Gaussian derivatives do); None otherwise."""
    u, sv, vh = torch.linalg.svd(basis.detach().double())
    if sv.shape[-1] > 1 and bool((sv[:, 1] > tol * sv[:, 0].clamp_min(1e-300)).any()):
        return None
    scale = sv[:, :1].sqrt()
    return u[:, :, 0] * scale, vh[:, 0, :] * scale


def _from_maps(x_pad: torch.Tensor, factors, positions: torch.Tensor, step: int) -> torch.Tensor:
    """:func:`basis_responses` through whole response maps of separable filters, channel chunk by chunk."""
    cols, rows = (f.to(x_pad.dtype) for f in factors)
    nf, size = cols.shape
    n, c, h, w = x_pad.shape
    pn, pi, pj = positions.to(x_pad.device).unbind(1)
    chunk = max(1, CHUNK_BYTES // max(1, 2 * n * nf * h * w * x_pad.element_size()))
    out = []
    for c0 in range(0, c, chunk):
        xc = x_pad[:, c0 : c0 + chunk]
        cc = xc.shape[1]
        ys = F.conv2d(xc.reshape(n * cc, 1, h, w), cols.view(nf, 1, size, 1))  # (n·cc, F, h−s+1, w)
        q = F.conv2d(ys, rows.view(nf, 1, 1, size), groups=nf).view(n, cc, nf, h - size + 1, w - size + 1)
        out.append(q[pn, :, :, pi * step, pj * step])  # (S, cc, F)
    return torch.cat(out, 1) if out else x_pad.new_zeros(positions.shape[0], 0, nf)
