"""1-D Gaussian-derivative filtering along one image axis, as a matrix.

A separable N-Jet layer filters along y and x with the 1-D derivatives ``G_m`` (DESIGN §2).
Along one axis of length L, "pad (or crop) the signal, then correlate with a filter of s
taps at a stride" is a linear map ``R^L → R^L_out``; :func:`axis_operators` returns its
matrix for every derivative order at once. Padding mode, negative pads (crops), stride and
TensorFlow-"SAME" asymmetric pads are all folded into the matrix, so the factorised path
needs no ``F.pad`` and gives exactly what ``F.pad`` + ``F.conv2d`` give with the dense filter.

Applying the matrix is a matrix product — one large GEMM instead of a depthwise 1-D conv,
which is what makes the factorised path fast on CPUs. Its cost is ``L_out·L`` per column
rather than ``L_out·s``: cheap while L is a few times s (the feature maps where large filters
matter), and counted as such by the cost model (:mod:`njetify.layers.path_cost`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def axis_geometry(length: int, pads: tuple[int, int], size: int, stride: int) -> tuple[int, int, int, int, int]:
    """``(crop_before, crop_after, pad_before, pad_after, out_length)`` of one axis.

    ``pads`` are (before, after) pixels, negative for a crop. Raises ``ValueError`` when the
    filter does not fit the padded axis (the dense ``F.conv2d`` would fail the same way).
    """
    before, after = pads
    cb, ca, pb, pa = max(-before, 0), max(-after, 0), max(before, 0), max(after, 0)
    padded = length - cb - ca + pb + pa
    out = (padded - size) // stride + 1
    if length - cb - ca < 1 or out < 1:
        raise ValueError(
            f"the input side {length} px (pads {before}, {after}) is too small for a {size} px filter"
        )
    return cb, ca, pb, pa, out


def axis_operators(
    g: torch.Tensor, length: int, pads: tuple[int, int], stride: int = 1, mode: str = "zeros"
) -> torch.Tensor:
    """Matrices of "pad, then correlate with ``g`` at ``stride``" along one axis.

    Args:
        g: 1-D filters ``(*S, M, s)`` (s odd): M derivative orders, optionally per output
            channel (``S = (O,)``); differentiable.
        length: input length L in pixels.
        pads: (before, after) pixels of padding, negative to crop.
        stride: output stride.
        mode: ``"zeros" | "reflect" | "replicate" | "circular"`` (as ``F.pad``).

    Returns:
        ``(*S, M, L_out, L)``: ``out = A @ signal`` for every order.
    """
    size = g.shape[-1]
    cb, ca, pb, pa, out = axis_geometry(length, pads, size, stride)
    inner = length - cb - ca
    padded = inner + pb + pa
    idx, mask = _toeplitz_index(out, padded, size, stride, torch.device(g.device))
    t = torch.where(mask, g[..., idx], g.new_zeros(()))  # (*S, M, L_out, padded): T[y, p] = g[p − y·stride]
    if mode == "zeros":
        return F.pad(t[..., pb : pb + inner], (cb, ca))
    return t @ _pad_matrix(length, cb, ca, pb, pa, mode, torch.device(g.device), g.dtype)


@lru_cache(maxsize=256)
def _toeplitz_index(out: int, padded: int, size: int, stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``p − y·stride`` (clamped) and its validity mask, ``(out, padded)`` each."""
    rel = torch.arange(padded, device=device)[None, :] - stride * torch.arange(out, device=device)[:, None]
    return rel.clamp(0, size - 1), (rel >= 0) & (rel < size)


@lru_cache(maxsize=256)
def _pad_matrix(length, cb, ca, pb, pa, mode, device, dtype) -> torch.Tensor:
    """0/1 matrix ``(padded, L)`` of cropping by (cb, ca) then padding by (pb, pa) in ``mode``."""
    inner = length - cb - ca
    limit = inner if mode == "circular" else inner - 1
    if mode in ("reflect", "circular") and max(pb, pa) > limit:
        raise ValueError(
            f"{mode} padding of {max(pb, pa)} px needs an input side larger than {max(pb, pa)} px, got {inner}"
        )
    q = torch.arange(-pb, inner + pa)
    if mode == "reflect":
        q = torch.where(q < 0, -q, q)
        q = torch.where(q >= inner, 2 * (inner - 1) - q, q)
    elif mode == "replicate":
        q = q.clamp(0, inner - 1)
    elif mode == "circular":
        q = q % inner
    else:
        raise ValueError(f"padding mode must be zeros, reflect, replicate or circular, got {mode!r}")
    mat = torch.zeros(inner + pb + pa, length, dtype=dtype)
    mat[torch.arange(len(q)), q + cb] = 1.0
    return mat.to(device)
