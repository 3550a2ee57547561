"""Least-squares projection of pretrained kernels onto the N-Jet basis (DESIGN §3).

Two fits, both solved in float64:

* weight space — ``min_α ‖Σ_f α_f B_f − W‖²`` for every (out, in) pair at once
  with one pseudo-inverse of the ``F × s²`` basis matrix;
* data-aware — weights the fit by the second moments of the layer's real input
  patches, ``α_oc = W_oc C_c Bᵀ (B C_c Bᵀ)⁻¹``, which minimises the error of the
  layer's *output*. :class:`PatchMoments` collects ``C_c Bᵀ = E[p qᵀ]`` and
  ``B C_c Bᵀ = E[q qᵀ]`` (with ``q = B p``) batch by batch, so the s²×s² patch
  covariance is never formed.

Kernels are compared on a dense square grid: a dilated k×k kernel becomes a
``d(k−1)+1`` grid with zeros between taps, and the smaller of kernel and basis
is zero-padded to the larger, centred.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Tikhonov weight of the data-aware fit relative to the mean eigenvalue of
#: ``E[q qᵀ]``; keeps channels that never fire (dead ReLUs) at the weight-space fit.
RIDGE = 1e-6

#: Patch tensors of the data-aware statistics are built in channel chunks of about this many bytes.
CHUNK_BYTES = 64 * 2**20


def dense_kernel(weight: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Spread a ``(..., k, k)`` kernel on its dense ``d(k−1)+1`` grid, zeros between taps."""
    if dilation == 1:
        return weight
    k = weight.shape[-1]
    size = dilation * (k - 1) + 1
    out = weight.new_zeros(*weight.shape[:-2], size, size)
    out[..., ::dilation, ::dilation] = weight
    return out


def center_pad(t: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two (square, odd) dims of ``t`` to ``size × size``, centred."""
    p = (size - t.shape[-1]) // 2
    return F.pad(t, (p, p, p, p)) if p > 0 else t


def weight_space_fit(weight: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients of ``weight`` in ``basis``.

    Args:
        weight: dense kernels ``(O, C, k, k)`` (k odd).
        basis: ``(F, s, s)`` (s odd) — one σ for all outputs.

    Returns:
        ``alpha (O, C, F)`` in weight's dtype, and the relative error
        ``‖W_fit − W‖ / ‖W‖`` on the common grid.
    """
    grid = max(weight.shape[-1], basis.shape[-1])
    w = center_pad(weight.double(), grid).flatten(2)  # (O, C, g²)
    b = center_pad(basis.detach().double(), grid).flatten(1)  # (F, g²)
    alpha = w @ torch.linalg.pinv(b)  # (O, C, F)
    return alpha.to(weight.dtype), relative_error(alpha @ b, w)


def relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    """``‖approx − target‖ / ‖target‖`` (0 when both are 0)."""
    norm = target.norm()
    if norm == 0:
        return float((approx - target).norm())
    return float((approx - target).norm() / norm)


class PatchMoments:
    """Running second moments of a layer's input patches, projected on a basis.

    Accumulates, per input channel c, ``E[p qᵀ]`` (s²×F) and ``E[q qᵀ]`` (F×F),
    where p is the s×s patch the conv sees and ``q = B p``.

    Args:
        basis: ``(F, s, s)`` at the initial σ.
        padding: zero padding the layer applies (``(s−1)/2`` for "same").
        stride: positions the layer evaluates (the original conv's stride).
    """

    def __init__(self, basis: torch.Tensor, padding: int, stride: int = 1):
        self.basis = basis.detach().double()
        self.size = basis.shape[-1]
        self.padding = padding
        self.stride = stride
        self.pq: torch.Tensor | None = None  # (C, s², F)
        self.qq: torch.Tensor | None = None  # (C, F, F)
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add one batch ``x (N, C, H, W)`` of the layer's inputs."""
        x = x.detach().double()
        n, c = x.shape[:2]
        s, nf = self.size, self.basis.shape[0]
        if self.pq is None:
            self.pq = x.new_zeros(c, s * s, nf)
            self.qq = x.new_zeros(c, nf, nf)
        x = F.pad(x, [self.padding] * 4)
        positions = _positions(x.shape[-2], s, self.stride) * _positions(x.shape[-1], s, self.stride)
        chunk = max(1, CHUNK_BYTES // max(1, n * s * s * positions * 8))
        for c0 in range(0, c, chunk):
            xc = x[:, c0 : c0 + chunk]
            cc = xc.shape[1]
            flat = xc.reshape(n * cc, 1, *xc.shape[-2:])
            p = F.unfold(flat, s, stride=self.stride).view(n, cc, s * s, -1)
            q = torch.einsum("fk,nckl->ncfl", self.basis.flatten(1), p)
            self.pq[c0 : c0 + cc] += torch.einsum("nckl,ncfl->ckf", p, q)
            self.qq[c0 : c0 + cc] += torch.einsum("ncfl,ncgl->cfg", q, q)
        self.count += n * positions


def _positions(length: int, size: int, stride: int) -> int:
    return max(0, (length - size) // stride + 1)


def data_aware_fit(
    weight: torch.Tensor, basis: torch.Tensor, moments: PatchMoments, groups: int = 1
) -> tuple[torch.Tensor, float]:
    """Coefficients that minimise the error of the layer's output on the recorded inputs.

    Fits the residual of the weight-space fit, so a channel with no signal keeps
    its weight-space coefficients.

    Args:
        weight: dense kernels ``(O, C/groups, k, k)``.
        basis: ``(F, s, s)``, the same basis the moments were recorded with.
        moments: statistics of the layer's inputs (all C input channels).

    Returns:
        ``alpha (O, C/groups, F)`` and the weight-space relative error of that α
        on the common grid (the output-space gain is measured by the caller).
    """
    if moments.pq is None:
        raise ValueError("data_aware_fit: no calibration batch reached this layer (moments are empty)")
    s = basis.shape[-1]
    if weight.shape[-1] > s:
        raise ValueError(
            f"data_aware_fit: kernel grid {weight.shape[-1]} is larger than the basis grid {s}; "
            "fit in weight space or use a larger σ"
        )
    alpha0, _ = weight_space_fit(weight, basis)
    alpha0 = alpha0.double()
    b = basis.detach().double().flatten(1)  # (F, s²)
    w = center_pad(weight.double(), s).flatten(2)  # (O, Cg, s²)
    resid = w - alpha0 @ b
    pq, qq = moments.pq / moments.count, moments.qq / moments.count
    nf = b.shape[0]
    ridge = RIDGE * qq.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)  # (C,)
    eye = torch.eye(nf, dtype=qq.dtype, device=qq.device)
    solve = torch.linalg.solve(qq + ridge[:, None, None] * eye, pq.transpose(1, 2))  # (C, F, s²)
    proj = solve.transpose(1, 2)  # (C, s², F) = E[pqᵀ] (E[qqᵀ] + λI)⁻¹
    out_ch, cg = weight.shape[:2]
    og = out_ch // groups
    alpha = alpha0.clone()
    for g in range(groups):
        rows = slice(g * og, (g + 1) * og)
        alpha[rows] += torch.einsum("ock,ckf->ocf", resid[rows], proj[g * cg : (g + 1) * cg])
    return alpha.to(weight.dtype), relative_error(alpha @ b, w)
