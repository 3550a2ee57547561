"""Joint least-squares fits for tied N-Jet branches (DESIGN §3 and §5).

K convolutions share one α and keep one σ each. The shared α minimises

    Σ_k ‖α · B_k − W_k‖²       (weight space, every kernel on its own dense grid)

where ``B_k`` is the basis at σ_k on the branch's ``s_k × s_k`` grid and ``W_k`` the
branch's kernel spread on its dense ``d(k−1)+1`` grid. Dilated kernels are never
materialised densely: ``W_k`` is non-zero only at its k² taps, so ``W_k B_kᵀ`` needs the
basis at the taps only and ``‖W_k‖²`` is the norm of the k×k weight. A 3×3 kernel at
rate 24 therefore costs 9 basis samples, not a 49×49 grid per (out, in) pair.

The data-aware fit minimises the branches' *output* error on recorded inputs instead,
per input channel c (as :func:`njetify.fit.data_aware_fit`, summed over branches):

    α_oc = α0_oc + (Σ_k w_k,oc M_k,c − α0_oc Q_k,c) (Σ_k Q_k,c + λI)⁻¹

with ``q = B_k p`` the basis responses, ``P_t`` the input at tap t,
``M_k = E[P qᵀ]`` (C, T, F) and ``Q_k = E[q qᵀ]`` (C, F, F) collected by
:class:`TiedMoments` with separable convolutions (no s²-sized patches are formed).
All solves run in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import basis as B
from ..fit import CHUNK_BYTES, RIDGE


def tap_offsets(kernel_size: int, dilation: int) -> torch.Tensor:
    """``(k², 2)`` integer (dy, dx) offsets of a k×k kernel's taps from its centre, row-major."""
    r = torch.arange(kernel_size) - (kernel_size - 1) // 2
    dy, dx = torch.meshgrid(r * dilation, r * dilation, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], 1)


def basis_at_taps(basis2d: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Basis values at tap offsets: ``(F, s, s)`` × ``(T, 2)`` → ``(F, T)``; taps outside the grid are 0."""
    half = (basis2d.shape[-1] - 1) // 2
    out = basis2d.new_zeros(basis2d.shape[0], offsets.shape[0])
    inside = (offsets.abs() <= half).all(1)
    idx = offsets[inside] + half
    out[:, inside] = basis2d[:, idx[:, 0], idx[:, 1]]
    return out


def _gram_pinv(bases: list[torch.Tensor]) -> torch.Tensor:
    """``(Σ_k B_k B_kᵀ)⁺`` (F×F) from the stacked full-grid bases, with pinv's cut-off on B, not on B Bᵀ."""
    stacked = torch.cat([b.flatten(1) for b in bases], 1)  # (F, Σ s_k²)
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    keep = s > s.max() * max(stacked.shape) * torch.finfo(stacked.dtype).eps
    u, s = u[:, keep], s[keep]
    return (u / s**2) @ u.T


def joint_weight_fit(
    weights: list[torch.Tensor], dilations: list[int], bases: list[torch.Tensor]
) -> tuple[torch.Tensor, float, list[float]]:
    """Shared α minimising ``Σ_k ‖α B_k − W_k‖²``.

    Args:
        weights: K kernels ``(O, C/groups, k, k)`` (k odd), as stored in the convs.
        dilations: K dilation rates; kernel k is spread on a ``d(k−1)+1`` grid.
        bases: K bases ``(F, s_k, s_k)``, each at its branch's σ.

    Returns:
        ``alpha (O, C/groups, F)`` in float64, the joint relative error
        ``sqrt(Σ_k ‖α B_k − W_k‖² / Σ_k ‖W_k‖²)`` and the per-branch relative errors.
    """
    bases = [b.detach().double() for b in bases]
    rhs = 0
    taps = []
    for w, d, b in zip(weights, dilations, bases):
        bt = basis_at_taps(b, tap_offsets(w.shape[-1], d))  # (F, T)
        taps.append(bt)
        rhs = rhs + w.detach().double().flatten(2) @ bt.T  # (O, Cg, F)
    alpha = rhs @ _gram_pinv(bases)
    errs, num, den = [], 0.0, 0.0
    for w, b, bt in zip(weights, bases, taps):
        e2, n2 = _branch_error2(alpha, w.detach().double().flatten(2), b.flatten(1), bt)
        errs.append((e2 / n2) ** 0.5 if n2 > 0 else e2**0.5)
        num, den = num + e2, den + n2
    return alpha, (num / den) ** 0.5 if den > 0 else num**0.5, errs


def _branch_error2(alpha, w, b, bt) -> tuple[float, float]:
    """``‖α B − W‖²`` and ``‖W‖²`` over the dense grid, from F-sized quantities only."""
    gram = b @ b.T  # (F, F)
    fit2 = torch.einsum("ocf,fg,ocg->", alpha, gram, alpha)
    cross = torch.einsum("ocf,oct,ft->", alpha, w, bt)
    w2 = (w**2).sum()
    return float((fit2 - 2 * cross + w2).clamp_min(0)), float(w2)


class TiedMoments:
    """Input statistics of K tied branches that read the same input.

    Per branch k and input channel c, accumulates ``M_k = E[P qᵀ]`` (T_k × F) and
    ``Q_k = E[q qᵀ]`` (F × F) over the positions the branch evaluates, where
    ``q_f`` is the response of channel c to basis filter f (at σ_k) and ``P_t`` the
    input at tap t of the branch's (dilated) kernel.

    Args:
        bases1d: K tensors ``(N+1, s_k)`` of 1-D Gaussian derivatives at σ_k.
        order: the basis order N.
        offsets: K tap-offset tables ``(T_k, 2)`` (:func:`tap_offsets`).
        trims: K trims (pixels per side the branch's output is smaller than "same").
    """

    def __init__(self, bases1d, order: int, offsets, trims):
        self.g1 = [g.detach().double() for g in bases1d]
        self.orders = B.basis_orders(order)
        self.offsets, self.trims = list(offsets), [int(t) for t in trims]
        self.m: list[torch.Tensor | None] = [None] * len(self.g1)
        self.q: list[torch.Tensor | None] = [None] * len(self.g1)
        self.count = [0] * len(self.g1)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add one batch ``x (N, C, H, W)`` of the branches' common input."""
        x = x.detach().double()
        n, c, h, w = x.shape
        for k, g1 in enumerate(self.g1):
            half, nf = (g1.shape[-1] - 1) // 2, len(self.orders)
            if self.m[k] is None:
                self.m[k] = x.new_zeros(c, self.offsets[k].shape[0], nf)
                self.q[k] = x.new_zeros(c, nf, nf)
            chunk = max(1, CHUNK_BYTES // max(1, 8 * n * h * w * (2 * nf + self.offsets[k].shape[0])))
            for c0 in range(0, c, chunk):
                xc = x[:, c0 : c0 + chunk]
                q = _basis_responses(xc, g1, self.orders, half)  # (n, cc, F, h, w)
                p = _tap_responses(xc, self.offsets[k])  # (n, cc, T, h, w)
                t = self.trims[k]
                if t > 0:
                    q, p = q[..., t : h - t, t : w - t], p[..., t : h - t, t : w - t]
                q, p = q.flatten(3), p.flatten(3)
                self.m[k][c0 : c0 + chunk] += torch.einsum("nctl,ncfl->ctf", p, q)
                self.q[k][c0 : c0 + chunk] += torch.einsum("ncfl,ncgl->cfg", q, q)
            self.count[k] += n * max(0, h - 2 * max(self.trims[k], 0)) * max(0, w - 2 * max(self.trims[k], 0))


def _basis_responses(x, g1, orders, half) -> torch.Tensor:
    """Responses of every channel of ``x (n, c, h, w)`` to the F separable basis filters: ``(n, c, F, h, w)``."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    ny = g1.shape[0]
    ys = F.conv2d(flat, g1.view(ny, 1, -1, 1), padding=(half, 0))  # (nc, N+1, h, w): G_j along y
    iy = torch.tensor([j for _, j in orders], device=x.device)
    ix = torch.tensor([i for i, _ in orders], device=x.device)
    sel = ys.index_select(1, iy)  # (nc, F, h, w)
    q = F.conv2d(sel, g1.index_select(0, ix).view(len(orders), 1, 1, -1), padding=(0, half), groups=len(orders))
    return q.view(n, c, len(orders), h, w)


def _tap_responses(x, offsets) -> torch.Tensor:
    """``x`` at every tap offset with zero padding: ``(n, c, T, h, w)``; P_t(y, x) = x(y + dy_t, x + dx_t)."""
    h, w = x.shape[-2:]
    r = int(offsets.abs().max())
    xp = F.pad(x, (r, r, r, r))
    return torch.stack([xp[..., r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets.tolist()], 2)


def joint_data_aware_fit(
    weights: list[torch.Tensor],
    dilations: list[int],
    bases: list[torch.Tensor],
    moments: TiedMoments,
    groups: int = 1,
) -> tuple[torch.Tensor, float, list[float]]:
    """Shared α minimising the branches' summed output error on the recorded inputs.

    Starts from :func:`joint_weight_fit` and fits its residual, so channels that never
    fire keep their weight-space coefficients.

    Returns:
        ``alpha (O, C/groups, F)`` in float64, and the joint and per-branch *weight-space*
        relative errors of that α (the output error is measured by the caller).
    """
    if any(m is None for m in moments.m) or min(moments.count) == 0:
        raise ValueError("joint_data_aware_fit: no calibration position reached the branches (moments are empty)")
    alpha0, _, _ = joint_weight_fit(weights, dilations, bases)
    num, den = 0, 0
    for w, m, q, cnt in zip(weights, moments.m, moments.q, moments.count):
        m, q = m / cnt, q / cnt
        w = w.detach().double().flatten(2)  # (O, Cg, T)
        num = num + _per_group(w, m, groups, "oct,ctf->ocf") - _per_group(alpha0, q, groups, "ocg,cgf->ocf")
        den = den + q
    nf = den.shape[-1]
    ridge = RIDGE * den.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    inv = torch.linalg.inv(den + ridge[:, None, None] * torch.eye(nf, dtype=den.dtype, device=den.device))
    alpha = alpha0 + _per_group(num, inv, groups, "ocf,cfg->ocg")
    errs, tot, norm = [], 0.0, 0.0
    for w, d, b in zip(weights, dilations, bases):
        bb = b.detach().double()
        bt = basis_at_taps(bb, tap_offsets(w.shape[-1], d))
        e2, n2 = _branch_error2(alpha, w.detach().double().flatten(2), bb.flatten(1), bt)
        errs.append((e2 / n2) ** 0.5 if n2 > 0 else e2**0.5)
        tot, norm = tot + e2, norm + n2
    return alpha, (tot / norm) ** 0.5 if norm > 0 else tot**0.5, errs


def _per_group(a: torch.Tensor, per_channel: torch.Tensor, groups: int, eq: str) -> torch.Tensor:
    """Apply a per-input-channel table ``(C, ...)`` to ``a (O, Cg, ...)`` group by group (one batched einsum)."""
    out_ch, cg = a.shape[:2]
    ins, out = eq.split("->")
    lhs, rhs = ins.split(",")
    batched = f"z{lhs},z{rhs}->z{out}"
    res = torch.einsum(
        batched,
        a.reshape(groups, out_ch // groups, *a.shape[1:]),
        per_channel.reshape(groups, cg, *per_channel.shape[1:]),
    )
    return res.reshape(out_ch, *res.shape[2:])
