"""Least-squares projection of pretrained kernels onto the N-Jet basis (DESIGN §3, §5).

K ≥ 1 kernels may share one α (tied ASPP branches; a single layer is K = 1), each with
its own basis ``B_k`` (at σ_k, on an ``s_k × s_k`` grid). The fit is in weight space, in float64:
``min_α Σ_k ‖α B_k − W_k‖²``. (The data-based fit, on the layers' outputs, is the calibration
engine's: :mod:`njetify.calibration`, also behind ``from_conv(inputs=...)``.)

Memory stays bounded: a kernel is used at its own taps only — a dilated 3×3 kernel at
rate 36 is 9 taps, never the dense 73×73 grid — so ``W Bᵀ`` needs the basis at the taps,
``(Σ_k B_k B_kᵀ)⁺`` is F×F, and the weight-space error splits exactly into the residual at
the taps plus ``‖α B_off‖²`` (the basis off the taps) computed through an F×F factor. Work
runs in chunks of output channels: no float64 tensor of size ``O·C·s²`` is ever formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Temporary tensors of the fits and statistics are built in chunks of about this many bytes.
CHUNK_BYTES = 64 * 2**20


def sigma_from_kernel(kernel_size: int, dilation: int = 1, extent: float = 2.0) -> float:
    """σ₀ whose filter support matches a k×k kernel of dilation d: ``d·(k−1)/(2·extent)`` (DESIGN §3)."""
    return dilation * (kernel_size - 1) / (2.0 * extent)


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


def tap_offsets(kernel_size, dilation) -> torch.Tensor:
    """``(k_y·k_x, 2)`` integer (dy, dx) offsets of a kernel's taps from its centre, row-major;
    ``kernel_size`` and ``dilation`` are ints or ``(y, x)`` pairs (odd sizes)."""
    (ky, kx), (dy_, dx_) = (v if isinstance(v, (tuple, list)) else (v, v) for v in (kernel_size, dilation))
    dy, dx = torch.meshgrid((torch.arange(ky) - (ky - 1) // 2) * dy_, (torch.arange(kx) - (kx - 1) // 2) * dx_,
                            indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], 1)


def basis_at_taps(basis2d: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Basis values at tap offsets: ``(F, s, s)`` × ``(T, 2)`` → ``(F, T)``; taps outside the grid are 0."""
    half = (basis2d.shape[-1] - 1) // 2
    out = basis2d.new_zeros(basis2d.shape[0], offsets.shape[0])
    inside = (offsets.abs() <= half).all(1)
    idx = offsets[inside] + half
    out[:, inside] = basis2d[:, idx[:, 0], idx[:, 1]]
    return out


class _Branch:
    """One kernel's view of its basis: ``taps (F, T)`` and ``off (r, F)`` with
    ``‖α B_off‖² = ‖α offᵀ‖²`` for the basis at the grid points that are not taps."""

    def __init__(self, basis2d: torch.Tensor, kernel_size: int, dilation: int):
        b = basis2d.detach().double()
        offsets = tap_offsets(kernel_size, dilation)
        self.taps = basis_at_taps(b, offsets)
        half = (b.shape[-1] - 1) // 2
        off = b.clone()
        inside = offsets[(offsets.abs() <= half).all(1)] + half
        off[:, inside[:, 0], inside[:, 1]] = 0
        m = off.flatten(1).T  # (s², F)
        # R of m = QR: geqrf, whose R is linalg.qr's up to signs (linalg.qr stalls ~8 ms in thread start-up)
        self.off = torch.triu(torch.geqrf(m)[0][: min(m.shape)])  # (min(s², F), F)
        self.full = b.flatten(1)


def _gram_pinv(branches: list[_Branch]) -> torch.Tensor:
    """``(Σ_k B_k B_kᵀ)⁺`` (F×F) from the stacked full-grid bases, with pinv's cut-off on B, not on B Bᵀ."""
    stacked = torch.cat([b.full for b in branches], 1)  # (F, Σ s_k²)
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    keep = s > s.max() * max(stacked.shape) * torch.finfo(stacked.dtype).eps
    u, s = u[:, keep], s[keep]
    return (u / s**2) @ u.T


def _chunks(out_channels: int, per_row_bytes: int):
    """Slices of output channels whose temporaries take about :data:`CHUNK_BYTES`."""
    step = max(1, CHUNK_BYTES // max(1, per_row_bytes))
    for o0 in range(0, out_channels, step):
        yield slice(o0, min(out_channels, o0 + step))


def _taps(weight: torch.Tensor, rows: slice) -> torch.Tensor:
    return weight[rows].detach().double().flatten(2)  # (rows, Cg, T)


def _errors(alpha: torch.Tensor, weights, branches) -> tuple[float, list[float]]:
    """Joint and per-kernel relative weight-space errors ``‖α B_k − W_k‖ / ‖W_k‖`` on the dense grids."""
    e2, n2 = [0.0] * len(weights), [0.0] * len(weights)
    cg, nf = alpha.shape[1:]
    per_row = 8 * cg * max(nf, max(w[0, 0].numel() for w in weights))
    for rows in _chunks(alpha.shape[0], 3 * per_row):
        a = alpha[rows]
        for k, (w, br) in enumerate(zip(weights, branches)):
            wt = _taps(w, rows)
            e2[k] += float((a @ br.taps - wt).square().sum()) + float((a @ br.off.T).square().sum())
            n2[k] += float(wt.square().sum())
    errs = [(e / n) ** 0.5 if n > 0 else e**0.5 for e, n in zip(e2, n2)]
    num, den = sum(e2), sum(n2)
    return ((num / den) ** 0.5 if den > 0 else num**0.5), errs


def joint_weight_fit(
    weights: list[torch.Tensor], dilations: list[int], bases: list[torch.Tensor]
) -> tuple[torch.Tensor, float, list[float]]:
    """Shared α minimising ``Σ_k ‖α B_k − W_k‖²``.

    Args:
        weights: K kernels ``(O, C/groups, k, k)`` (k odd), as stored in the convs.
        dilations: K dilation rates; kernel k covers a ``d(k−1)+1`` grid.
        bases: K bases ``(F, s_k, s_k)``, each at its kernel's σ.

    Returns:
        ``alpha (O, C/groups, F)`` in float64, the joint relative error
        ``sqrt(Σ_k ‖α B_k − W_k‖² / Σ_k ‖W_k‖²)`` and the per-kernel relative errors.
    """
    branches = [_Branch(b, w.shape[-1], d) for w, d, b in zip(weights, dilations, bases)]
    pinv = _gram_pinv(branches)
    out_ch, cg = weights[0].shape[:2]
    alpha = torch.empty(out_ch, cg, pinv.shape[0], dtype=torch.float64, device=weights[0].device)
    per_row = 8 * cg * max(w[0, 0].numel() for w in weights)
    for rows in _chunks(out_ch, 2 * per_row):
        rhs = sum(_taps(w, rows) @ br.taps.T for w, br in zip(weights, branches))  # (rows, Cg, F)
        alpha[rows] = rhs @ pinv
    err, errs = _errors(alpha, weights, branches)
    return alpha, err, errs


def weight_space_fit(weight: torch.Tensor, basis: torch.Tensor, dilation: int = 1) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients of one kernel ``(O, C, k, k)`` (dilation d) in ``basis (F, s, s)``.

    Returns ``alpha (O, C, F)`` in weight's dtype and the relative error ``‖W_fit − W‖ / ‖W‖``
    on the common grid. The dense dilated grid is never formed.
    """
    alpha, err, _ = joint_weight_fit([weight], [dilation], [basis])
    return alpha.to(weight.dtype), err


def weight_errors(alpha: torch.Tensor, weights: list[torch.Tensor], dilations: list[int],
                  bases: list[torch.Tensor]) -> tuple[float, list[float]]:
    """Joint and per-kernel relative errors ``‖α B_k − W_k‖ / ‖W_k‖`` of coefficients ``alpha (O, C, F)``
    against kernels ``W_k (O, C, k, k)`` of dilation ``d_k`` in ``bases`` ``(F, s_k, s_k)`` (taps only)."""
    branches = [_Branch(b, w.shape[-1], d) for w, d, b in zip(weights, dilations, bases)]
    return _errors(alpha.detach().double(), weights, branches)
