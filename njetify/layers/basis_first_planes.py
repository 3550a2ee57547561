"""Basis-first in the NCHW layout, one image plane at a time: the better layout on large maps with few channels.

The same product as :mod:`njetify.layers.basis_first` (see there), with the maps kept NCHW: the
x-pass is one GEMM over every row of every plane, ``(N·C·H, W) @ (W, (N+1)·Wo)``, the y-pass a
batch of per-plane products ``(J·Ho, H) @ (H, Wo)`` written in place into ``(N, C, F, Ho, Wo)``, the
mix one batched GEMM ``(O, C·F) @ (C·F, Ho·Wo)`` per sample.

The y-pass runs in the y-operator's bands (:func:`~njetify.layers.basis_first.axis_bands`): each
tile of output rows reads only the input rows it touches, the J_i y-orders of a tile in one batched
product into a small scratch tile copied into place (train steps 12–40 % faster at 56²–112², σ 1
and 4: ``docs/measured/basis_first_planes_cpu.txt``). The x-pass applies its operator whole: banded,
its products (a few taps deep) ran no faster.
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


Band = tuple[int, int, int, int]  # (out_start, out_stop, in_start, in_stop), as in basis_first


def _ops(ay: torch.Tensor, ji: int, band: Band) -> torch.Tensor:
    """The y-orders ``0..ji−1`` of the operator on one band, stacked: ``(J_i·T, H_band)``."""
    a, b, lo, hi = band
    return ay[:ji, a:b, lo:hi].reshape(ji * (b - a), hi - lo)


def _tile(r: torch.Tensor, off: int, ji: int, band: Band, slot: str | None = None) -> torch.Tensor:
    """Rows ``a:b`` of the maps ``off:off+ji`` of ``r (N, C, F, Ho, Wo)`` as ``(N·C, J_i·T, Wo)``.

    A view when the band spans every row. Otherwise a scratch tile: a copy of those rows, or, with a
    ``slot``, an empty tile for the caller to fill (and copy back)."""
    a, b = band[0], band[1]
    n, c, _, ho, wo = r.shape
    block = r[:, :, off : off + ji]
    if a == 0 and b == ho:
        return _planes(block).flatten(1, 2)
    t = workspace(slot or "planes_tile", (n * c, ji, b - a, wo), r)
    if slot is None:
        t.copy_(_planes(block[:, :, :, a:b]))
    return t.view(n * c, ji * (b - a), wo)


def _ypass(ay: torch.Tensor, z: torch.Tensor, order: int, ho: int, bands: tuple[Band, ...]) -> torch.Tensor:
    """y-orders on the x-filtered maps: ``R[n, c, (i, j)] = A_j · Z[n, c, :, i]`` → scratch ``(N, C, F, Ho, Wo)``
    with the basis in block order (x-order i, then y-order j ≤ N − i)."""
    n, c, h, m, wo = z.shape
    r = workspace("planes_r", (n, c, num_basis(order), ho, wo), z)
    off = 0
    for i in range(order + 1):
        ji = order + 1 - i
        src = _planes(z[:, :, :, i])  # (N·C, H, Wo), rows strided
        for band in bands:
            a, b, lo, hi = band
            dst = _tile(r, off, ji, band, slot="planes_out")
            torch.matmul(_ops(ay, ji, band), src[:, lo:hi], out=dst)
            if not (a == 0 and b == ho):
                _planes(r[:, :, off : off + ji, a:b]).copy_(dst.view(n * c, ji, b - a, wo))
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
    def forward(ctx, x, alpha, ay, bx, groups: int, bands):
        ctx.save_for_backward(x, alpha, ay, bx)
        ctx.groups, ctx.bands = groups, bands
        n, ho, wo = x.shape[0], ay.shape[1], bx.shape[2]
        order = ay.shape[0] - 1
        r = _ypass(ay, _xpass(x, bx), order, ho, bands)
        a = _alpha_blocks(alpha, groups)
        out = torch.matmul(a, r.view(n, groups, -1, ho * wo))  # (N, G, Og, Ho·Wo)
        return out.view(n, -1, ho, wo)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, alpha, ay, bx = ctx.saved_tensors
        groups, bands = ctx.groups, ctx.bands
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
            r = _ypass(ay, z, order, ho, bands).view(n, groups, cg * nf, ho * wo)
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
                dzi, zi = _planes(dz[:, :, :, i]), _planes(z[:, :, :, i])  # (N·C, H, Wo)
                whole = len(bands) == 1 and bands[0] == (0, ho, 0, h)
                if not whole:
                    dzi.zero_()
                for band in bands:
                    a, b, lo, hi = band
                    block = _tile(dr, off, ji, band)  # (N·C, J_i·T, Wo)
                    op = _ops(ay, ji, band)
                    if whole:
                        torch.matmul(op.T, block, out=dzi)
                    else:
                        dzi[:, lo:hi] += torch.matmul(op.T, block, out=workspace("planes_dzt", (n * c, hi - lo, wo), x))
                    if need_ay:
                        tmp = workspace("planes_tmp", (n * c, ji * (b - a), hi - lo), x)
                        torch.matmul(block, zi[:, lo:hi].transpose(1, 2), out=tmp)
                        day[:ji, a:b, lo:hi] += tmp.sum(0).view(ji, b - a, hi - lo)
                off += ji
            dzf = dz.view(-1, m * wo)
            bxf = bx.transpose(0, 1).reshape(w, m * wo)
            if need_x:
                dx = (dzf @ bxf.T).view(n, c, h, w)
            if need_bx:
                dbx = (x.reshape(-1, w).T @ dzf).view(w, m, wo).transpose(0, 1)
        return dx, dalpha, day, dbx, None, None


def basis_first_planes(x: torch.Tensor, alpha: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor,
                       groups: int = 1, bands_y: tuple[Band, ...] | None = None) -> torch.Tensor:
    """Basis-first in the NCHW layout; arguments and result as :func:`~njetify.layers.basis_first.basis_first`."""
    if bands_y is None:
        bands_y = ((0, ay.shape[1], 0, ay.shape[2]),)
    return _BasisFirstPlanes.apply(x.contiguous(), alpha, ay, bx, groups, bands_y)
