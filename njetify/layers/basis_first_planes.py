"""Basis-first in the NCHW layout, one image plane at a time: the better layout on large maps with few channels.

The same product as :mod:`njetify.layers.basis_first` (see there), with the maps kept NCHW: the
x-pass is one GEMM over every row of every plane, ``(N·C·H, W) @ (W, (N+1)·Wo)``, the y-pass a
batch of per-plane products ``(J·Ho, H) @ (H, Wo)`` written in place into ``(N, C, F, Ho, Wo)``, the
mix one batched GEMM ``(O, C·F) @ (C·F, Ho·Wo)`` per sample. The operators are applied whole (no
bands): on the maps where this layout wins, each plane's product is large enough to run well.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ..basis import basis_blocks, num_basis, order_of
from .workspace import workspace


def _planes(t: torch.Tensor) -> torch.Tensor:
    """View ``(N, C, ...)`` with the first two dims merged (no copy)."""
    return t.flatten(0, 1)


def _xpass(x: torch.Tensor, bx: torch.Tensor) -> torch.Tensor:
    """Every x-order on every row of ``x (N, C, H, W)``: one GEMM → scratch ``(N, C, H, M, Wo)``."""
    n, c, h, w = x.shape
    m, _, wo = bx.shape
    z = workspace("planes_z", (n, c, h, m, wo), x)
    torch.mm(x.reshape(-1, w), bx.transpose(0, 1).reshape(w, m * wo), out=z.view(-1, m * wo))
    return z


def _ypass(ay: torch.Tensor, z: torch.Tensor, order: int, ho: int) -> torch.Tensor:
    """y-orders on the x-filtered maps: ``R[n, c, (i, j)] = A_j · Z[n, c, :, i]`` → scratch ``(N, C, F, Ho, Wo)``
    with the basis in block order (x-order i, then y-order j ≤ N − i)."""
    n, c, h, m, wo = z.shape
    r = workspace("planes_r", (n, c, num_basis(order), ho, wo), z)
    off = 0
    for i in range(order + 1):
        ji = order + 1 - i
        src = _planes(z[:, :, :, i])  # (N·C, H, Wo), rows strided
        dst = _planes(r[:, :, off : off + ji]).flatten(1, 2)  # (N·C, J_i·Ho, Wo)
        torch.matmul(ay[:ji].reshape(ji * ho, h), src, out=dst)
        off += ji
    return r


@lru_cache(maxsize=None)
def _block_perm(order: int) -> tuple[int, ...]:
    """Basis indices in block order (x-order i, then y-order j): the mix's column order."""
    return tuple(f for _, idx in basis_blocks(order) for f in idx)


def _alpha_blocks(alpha: torch.Tensor, groups: int) -> torch.Tensor:
    """``α (O, Cg, F)`` → ``(G, Og, Cg·F)`` with columns (c, block-ordered f)."""
    out_ch, cg, nf = alpha.shape
    perm = _perm_index(order_of(nf), alpha.device)
    return alpha[:, :, perm].reshape(groups, out_ch // groups, cg * nf)


@lru_cache(maxsize=None)
def _perm_index(order: int, device: torch.device, inverse: bool = False) -> torch.Tensor:
    """:func:`_block_perm` (or its inverse) as an index tensor on ``device``."""
    perm = torch.tensor(_block_perm(order))
    return (perm.argsort() if inverse else perm).to(device)


# ------------------------------------------------------------------------------ basis-first
class _BasisFirstPlanes(Function):
    @staticmethod
    def forward(ctx, x, alpha, ay, bx, groups: int):
        ctx.save_for_backward(x, alpha, ay, bx)
        ctx.groups = groups
        n, ho, wo = x.shape[0], ay.shape[1], bx.shape[2]
        order = ay.shape[0] - 1
        r = _ypass(ay, _xpass(x, bx), order, ho)
        a = _alpha_blocks(alpha, groups)
        out = torch.matmul(a, r.view(n, groups, -1, ho * wo))  # (N, G, Og, Ho·Wo)
        return out.view(n, -1, ho, wo)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, alpha, ay, bx = ctx.saved_tensors
        groups = ctx.groups
        need_x, need_a, need_ay, need_bx = ctx.needs_input_grad[:4]
        n, c, h, w = x.shape
        m, ho, wo = ay.shape[0], ay.shape[1], bx.shape[2]
        order = m - 1
        out_ch, cg, nf = alpha.shape
        gout = gout.contiguous().view(n, groups, out_ch // groups, ho * wo)
        a = _alpha_blocks(alpha, groups)
        z = _xpass(x, bx)
        dx = dalpha = day = dbx = None
        if need_a:
            r = _ypass(ay, z, order, ho).view(n, groups, cg * nf, ho * wo)
            da = torch.matmul(gout, r.transpose(-1, -2)).sum(0)  # (G, Og, Cg·F), block order
            dalpha = da.view(out_ch, cg, nf)[:, :, _perm_index(order, x.device, True)]
        if need_x or need_ay or need_bx:
            dr = workspace("planes_dr", (n, groups, cg * nf, ho * wo), x)
            torch.matmul(a.transpose(1, 2), gout, out=dr)
            dr = dr.view(n, c, nf, ho, wo)
            dz = workspace("planes_dz", (n, c, h, m, wo), x)
            day = torch.zeros_like(ay) if need_ay else None
            off = 0
            for i in range(m):
                ji = m - i
                block = _planes(dr[:, :, off : off + ji]).flatten(1, 2)  # (N·C, J_i·Ho, Wo)
                torch.matmul(ay[:ji].reshape(ji * ho, h).T, block, out=_planes(dz[:, :, :, i]))
                if need_ay:
                    zi = _planes(z[:, :, :, i])  # (N·C, H, Wo)
                    tmp = workspace("planes_tmp", (n * c, ji * ho, h), x)
                    torch.matmul(block, zi.transpose(1, 2), out=tmp)
                    day[:ji] += tmp.sum(0).view(ji, ho, h)
                off += ji
            dzf = dz.view(-1, m * wo)
            bxf = bx.transpose(0, 1).reshape(w, m * wo)
            if need_x:
                dx = (dzf @ bxf.T).view(n, c, h, w)
            if need_bx:
                dbx = (x.reshape(-1, w).T @ dzf).view(w, m, wo).transpose(0, 1)
        return dx, dalpha, day, dbx, None


def basis_first_planes(x: torch.Tensor, alpha: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor,
                       groups: int = 1) -> torch.Tensor:
    """Basis-first in the NCHW layout; arguments and result as :func:`~njetify.layers.basis_first.basis_first`."""
    return _BasisFirstPlanes.apply(x.contiguous(), alpha, ay, bx, groups)
