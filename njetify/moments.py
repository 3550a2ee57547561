"""Input statistics for the data-aware fits of :mod:`njetify.fit`.

For K kernels that read the same input (one layer: K = 1; tied ASPP branches: K > 1),
per kernel k and input channel c, :class:`TapMoments` accumulates ``M_k = E[P qᵀ]``
(T_k × F) and ``Q_k = E[q qᵀ]`` (F × F) over the positions the layer evaluates, where
``q_f`` is the response of channel c to basis filter f (at σ_k) and ``P_t`` the input at
tap t of kernel k. Basis responses come from separable convolutions and the taps from
shifted views, channel chunk by channel chunk: no s²-sized patch and no dense dilated
grid is formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import basis as B
from .fit import CHUNK_BYTES


class TapMoments:
    """Running ``E[P qᵀ]`` and ``E[q qᵀ]`` of K kernels' inputs.

    Args:
        bases1d: K tensors ``(N+1, s_k)`` of 1-D Gaussian derivatives at σ_k.
        order: the basis order N.
        offsets: K tap-offset tables ``(T_k, 2)`` (:func:`njetify.fit.tap_offsets`).
        trims: K trims (pixels per side the output is smaller than "same"; negative: larger).
        stride: the layer's stride (positions it evaluates).
    """

    def __init__(self, bases1d, order: int, offsets, trims, stride: int = 1):
        self.g1 = [g.detach().double() for g in bases1d]
        self.orders = B.basis_orders(order)
        self.offsets, self.trims = list(offsets), [int(t) for t in trims]
        self.stride = int(stride)
        self.m: list[torch.Tensor | None] = [None] * len(self.g1)
        self.q: list[torch.Tensor | None] = [None] * len(self.g1)
        self.count = [0] * len(self.g1)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add one batch ``x (N, C, H, W)`` of the kernels' common input."""
        x = x.detach().double()
        n, c = x.shape[:2]
        for k, g1 in enumerate(self.g1):
            half, nf = (g1.shape[-1] - 1) // 2, len(self.orders)
            t = self.trims[k]
            xk = F.pad(x, [-t] * 4) if t < 0 else x  # a larger output reads zeros beyond the input
            h, w = xk.shape[-2:]
            taps = self.offsets[k].shape[0]
            if self.m[k] is None:
                self.m[k] = x.new_zeros(c, taps, nf)
                self.q[k] = x.new_zeros(c, nf, nf)
            chunk = max(1, CHUNK_BYTES // max(1, 8 * n * h * w * (2 * nf + taps)))
            t = max(t, 0)
            for c0 in range(0, c, chunk):
                xc = xk[:, c0 : c0 + chunk]
                q = _basis_responses(xc, g1, self.orders, half)  # (n, cc, F, h, w)
                p = _tap_responses(xc, self.offsets[k])  # (n, cc, T, h, w)
                q = q[..., t : h - t : self.stride, t : w - t : self.stride].flatten(3)
                p = p[..., t : h - t : self.stride, t : w - t : self.stride].flatten(3)
                self.m[k][c0 : c0 + chunk] += torch.einsum("nctl,ncfl->ctf", p, q)
                self.q[k][c0 : c0 + chunk] += torch.einsum("ncfl,ncgl->cfg", q, q)
            rows = len(range(t, h - t, self.stride)) if h > 2 * t else 0
            cols = len(range(t, w - t, self.stride)) if w > 2 * t else 0
            self.count[k] += n * rows * cols


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
