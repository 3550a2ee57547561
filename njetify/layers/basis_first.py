"""The basis-first order of the factorised N-Jet convolution: filter the inputs, then mix.

``out[n, o] = Σ_{c, f} α[o, c, f] · A_{j_f} · x[n, c] · Bx_{i_f}`` (DESIGN §2, §7), with ``A_j`` the
y-axis operator of derivative order j and ``Bx_i`` the transposed x-axis operator of order i
(:func:`~njetify.layers.axis_operators.axis_operators`; padding, crop and stride folded in).

The maps are channels-last, so that every product is a large matrix product:

* **x-pass**: the N+1 x-orders of every image row, ``Z[n, y, i] = Bxᵀ_i · x[n, y]``: one batched
  product over the ``N·H`` rows, each ``(Wo, W) @ (W, C)``;
* **y-pass**: for each basis pair ``f = (i, j)``, ``R_f[n] = A_j · Z[n, :, i]``: ``(Ho, H) @ (H, Wo·C)``
  per sample, written in place into one ``(F, N, Ho, Wo, C)`` buffer;
* **mix**: ``out = Σ_f R_f · α_fᵀ`` with ``R_f`` a ``(N·Ho·Wo, C)`` matrix: F accumulating GEMMs.

**Bands.** An axis operator is a band of ``s`` taps per output (wider at a stride, and at the borders
of a reflect/replicate/circular pad). :func:`axis_bands` cuts the y-operator's output rows into tiles
and keeps for each only the input rows it touches, so the y-pass costs ``O(tile + s)`` per output
instead of ``O(H)`` (one tile, the whole matrix, when that is cheaper: small maps). The x-pass applies
its operator whole: cut into tiles, its per-row products became too small to run well.

**Layout.** This layout wins on small maps with many channels (the mix and the y-pass are a few large
products); on large maps with few channels the per-plane layout of
:mod:`~njetify.layers.basis_first_planes` is faster, and :func:`basis_first` sends those there.

Backward recomputes Z and R instead of saving them (autograd keeps x, α and the operators) and
writes the operators' gradients only inside the bands: outside them the operators are structural
zeros that do not depend on σ. Transient maps live in the CPU scratch buffers of
:func:`~njetify.layers.workspace.workspace`. First-order only (``once_differentiable``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ..basis import basis_orders
from .axis_operators import axis_operators
from .basis_first_planes import basis_first_planes
from .workspace import workspace

#: Output positions per band tile (at least the filter size); a tiling that saves under a third
#: of the full matrix's work is not used.
TILE = 16
MIN_SAVING = 1 / 3

#: Output maps of up to this many pixels run channels-last; larger ones per plane (see :func:`basis_first`).
CHANNELS_LAST_MAX_PIXELS = 40 * 40

Band = tuple[int, int, int, int]  # (out_start, out_stop, in_start, in_stop)


@lru_cache(maxsize=512)
def axis_bands(length: int, pads: tuple[int, int], size: int, stride: int = 1, mode: str = "zeros") -> tuple[Band, ...]:
    """Tiles of one axis operator: ``(a, b, lo, hi)`` = outputs ``a:b`` read only inputs ``lo:hi``.

    Same geometry as :func:`~njetify.layers.axis_operators.axis_operators` (``pads`` (before, after),
    negative to crop). One tile covering the whole matrix when tiling would not pay.
    """
    ones = torch.ones(1, size, dtype=torch.float64)
    touched = axis_operators(ones, length, pads, stride, mode)[0] != 0  # (L_out, L)
    out = touched.shape[0]
    whole = ((0, out, 0, length),)
    tile = max(TILE, size)
    if out < 2 * tile:
        return whole
    bands = []
    for a in range(0, out, tile):
        b = min(a + tile, out)
        cols = touched[a:b].any(0).nonzero().flatten()
        bands.append((a, b, int(cols[0]), int(cols[-1]) + 1))
    work = sum((b - a) * (hi - lo) for a, b, lo, hi in bands)
    return tuple(bands) if work < (1 - MIN_SAVING) * out * length else whole


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → contiguous ``(N, H, W, C)`` (no copy when ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).contiguous()


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is stored channels-last and not also NCHW (one channel, or 1×1 maps, are both: NCHW, as ``conv2d``)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _like_input(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, C)`` → ``(N, C, H, W)`` in ``x``'s memory format."""
    t = t.permute(0, 3, 1, 2)
    return t if _is_channels_last(x) else t.contiguous()


def _xpass(xl: torch.Tensor, bxt: torch.Tensor) -> torch.Tensor:
    """``xl (N, H, W, C)``, ``bxt (M, Wo, W)`` → scratch ``(N, H, M, Wo·C)``: every x-order of every row."""
    n, h, w, c = xl.shape
    m, wo, _ = bxt.shape
    z = workspace("bf_z", (n * h, m * wo, c), xl)
    torch.bmm(bxt.reshape(m * wo, w).expand(n * h, -1, -1), xl.view(n * h, w, c), out=z)
    return z.view(n, h, m, wo * c)


def _ypass(ay: torch.Tensor, z: torch.Tensor, pairs, bands, slot: str) -> torch.Tensor:
    """``R[f] = A_{j_f} · Z[:, :, i_f]`` → scratch ``(F, N, Ho, Wo·C)``."""
    n, _, _, cols = z.shape
    r = workspace(slot, (len(pairs), n, ay.shape[1], cols), z)
    for f, (i, j) in enumerate(pairs):
        for a, b, lo, hi in bands:
            torch.matmul(ay[j, a:b, lo:hi], z[:, lo:hi, i], out=r[f, :, a:b])
    return r


def _mix(r: torch.Tensor, alpha: torch.Tensor, groups: int) -> torch.Tensor:
    """``Σ_f R_f α_fᵀ``: ``r (F, N, Ho, Wo·C)``, ``alpha (O, Cg, F)`` → ``(N·Ho·Wo, O)``."""
    nf, out_ch, cg = r.shape[0], alpha.shape[0], alpha.shape[1]
    rows = r[0].numel() // (cg * groups)
    out = r.new_empty(rows, out_ch)
    if groups == 1:
        at = alpha.permute(2, 1, 0)  # (F, C, O)
        torch.mm(r[0].view(rows, cg), at[0], out=out)
        for f in range(1, nf):
            out.addmm_(r[f].view(rows, cg), at[f])
        return out
    ag = _grouped(alpha, groups)  # (F, G, Cg, Og)
    out3 = out.view(rows, groups, -1)
    for f in range(nf):
        term = torch.einsum("pgc,gco->pgo", r[f].view(rows, groups, cg), ag[f])
        out3.copy_(term) if f == 0 else out3.add_(term)
    return out


def _grouped(alpha: torch.Tensor, groups: int) -> torch.Tensor:
    """``α (O, Cg, F)`` → ``(F, G, Cg, Og)``."""
    out_ch, cg, nf = alpha.shape
    return alpha.view(groups, out_ch // groups, cg, nf).permute(3, 0, 2, 1)


class _BasisFirst(Function):
    @staticmethod
    def forward(ctx, x, alpha, ay, bx, groups: int, bands_y):
        ctx.save_for_backward(x, alpha, ay, bx)
        ctx.groups, ctx.bands = groups, bands_y
        pairs = basis_orders(ay.shape[0] - 1)
        n, ho, wo = x.shape[0], ay.shape[1], bx.shape[2]
        z = _xpass(_channels_last(x), bx.transpose(1, 2))
        out = _mix(_ypass(ay, z, pairs, bands_y, "bf_r"), alpha, groups)
        return _like_input(out.view(n, ho, wo, -1), x)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, alpha, ay, bx = ctx.saved_tensors
        groups, bands_y = ctx.groups, ctx.bands
        need_x, need_a, need_ay, need_bx = ctx.needs_input_grad[:4]
        pairs = basis_orders(ay.shape[0] - 1)
        n, c, h, w = x.shape
        m, ho, wo = ay.shape[0], ay.shape[1], bx.shape[2]
        out_ch, cg, nf = alpha.shape
        og = out_ch // groups
        rows = n * ho * wo
        gl = _channels_last(gout).view(rows, out_ch)
        xl, bxt = _channels_last(x), bx.transpose(1, 2)
        z = _xpass(xl, bxt)
        r = _ypass(ay, z, pairs, bands_y, "bf_r")  # R, then overwritten by dR
        dalpha = day = dx = dbx = None
        if need_a:
            if groups == 1:
                dalpha = torch.stack([r[f].view(rows, c).T @ gl for f in range(nf)], -1).transpose(0, 1)
            else:
                gg = gl.view(rows, groups, og)
                da = torch.stack([torch.einsum("pgc,pgo->gco", r[f].view(rows, groups, cg), gg) for f in range(nf)])
                dalpha = da.permute(1, 3, 2, 0).reshape(out_ch, cg, nf)  # (F, G, Cg, Og) → (O, Cg, F)
        if not (need_x or need_ay or need_bx):
            return None, dalpha, None, None, None, None
        dr = r
        ag = _grouped(alpha, groups)
        for f in range(nf):
            if groups == 1:
                torch.mm(gl, alpha[:, :, f], out=dr[f].view(rows, c))
            else:
                dr[f].view(rows, groups, cg).copy_(torch.einsum("pgo,gco->pgc", gl.view(rows, groups, og), ag[f]))
        dz = workspace("bf_dz", z.shape, z).zero_()
        day = torch.zeros_like(ay) if need_ay else None
        for f, (i, j) in enumerate(pairs):
            for a, b, lo, hi in bands_y:
                op = ay[j, a:b, lo:hi]
                dz[:, lo:hi, i] += torch.matmul(op.T, dr[f, :, a:b], out=workspace("bf_t", (n, hi - lo, dz.shape[-1]), z))
                if need_ay:
                    day[j, a:b, lo:hi] += torch.bmm(dr[f, :, a:b], z[:, lo:hi, i].transpose(1, 2)).sum(0)
        dzr = dz.view(n * h, m * wo, c)
        if need_x:
            dx = _like_input(torch.bmm(bxt.reshape(m * wo, w).T.expand(n * h, -1, -1), dzr).view(n, h, w, c), x)
        if need_bx:
            dbx = torch.bmm(dzr, xl.view(n * h, w, c).transpose(1, 2)).sum(0).view(m, wo, w).transpose(1, 2)
        return dx, dalpha, day, dbx, None, None


def basis_first(x: torch.Tensor, alpha: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor, groups: int = 1,
                bands_y: tuple[Band, ...] | None = None) -> torch.Tensor:
    """Factorised N-Jet convolution, filtering the inputs first.

    Args:
        x: input ``(N, C, H, W)``; the output keeps its memory format.
        alpha: coefficients ``(O, C/groups, F)`` in :func:`~njetify.basis.basis_orders` order.
        ay: y-axis operators ``(N+1, Ho, H)``; bx: transposed x-axis operators ``(N+1, W, Wo)``.
        bands_y: the y-operator's bands from :func:`axis_bands` (default: the whole matrix).

    Returns ``(N, O, Ho, Wo)`` (no bias). One σ for all outputs. Maps of up to
    :data:`CHANNELS_LAST_MAX_PIXELS` output pixels (or a channels-last input) run in this module's
    layout, larger ones per plane (:mod:`~njetify.layers.basis_first_planes`): the faster layout on
    the shapes timed for this choice (docs/speed.md, "The two paths").
    """
    ho, wo = ay.shape[1], bx.shape[2]
    if bands_y is None:
        bands_y = ((0, ho, 0, ay.shape[2]),)
    if ho * wo > CHANNELS_LAST_MAX_PIXELS and not _is_channels_last(x):
        return basis_first_planes(x, alpha, ay, bx, groups, bands_y)
    return _BasisFirst.apply(x, alpha, ay, bx, groups, bands_y)
