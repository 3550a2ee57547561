"""The factorised N-Jet convolution: separable Gaussian-derivative filtering plus a 1×1 mix.

``W[o, c] = Σ_f α[o, c, f] · G_{j_f}(y) G_{i_f}(x)`` (DESIGN §2, §7), so with ``A_j`` the
y-axis operator of order j and ``Bx_i`` the transposed x-axis operator of order i
(:func:`~njetify.layers.axis_operators.axis_operators`; padding, crop and stride inside):

    out[n, o] = Σ_{c, f} α[o, c, f] · A_{j_f} · x[n, c] · Bx_{i_f}

Two evaluation orders, both exact:

* **basis-first** (:func:`~njetify.layers.basis_first.basis_first`): filter every input channel
  along x with the N+1 orders, then along y with the orders each pair needs, and mix the ``C·F``
  maps into the outputs: channels-last on small maps, per plane on large ones, the y-pass banded
  in both. Cost per output pixel ≈ ``O·Cg·F`` (mix) ``+ C·((N+1)·W + F·(tile + s))`` (filtering;
  the x-pass applies its operator whole). Backward recomputes the filtered maps instead of saving
  them: autograd keeps only x.
* **mix-first** (:func:`mix` then :func:`filter_sum`): mix ``C_in`` into ``O·F`` maps, then per
  x-order i filter ``Σ_j A_j M_ij`` (one GEMM over the stacked orders) and along x, summing.
  Cost ≈ ``O·Cg·F`` at the input resolution ``+ O·F·H + O·(N+1)·W``; it keeps the ``O·F``
  mixed maps for backward. Needed for one σ per output channel; shared by tied branches.

The maps are laid out so every product is a large matrix product or a batch of per-plane
products writing in place (no depthwise conv, no gather of the ``(i, j)`` pairs, no copies);
transient maps live in reusable CPU scratch buffers (:mod:`~njetify.layers.workspace`). Gradients are
first-order only (``once_differentiable``): for double backward use ``path="dense"``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ..basis import basis_blocks, num_basis, order_of as nf_order
from .axis_operators import axis_operators
from .basis_first import axis_bands, basis_first
from .workspace import release_workspace, workspace  # noqa: F401 (release_workspace: public here)



# -------------------------------------------------------------------------------- mix-first
def mix(x: torch.Tensor, alpha: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """1×1 mix of ``x (N, C, H, W)`` into ``(N, G, F·Og, H, W)`` maps, ordered (x-order i, o, y-order j).

    ``alpha (O, C/groups, F)``; G = groups, Og = O/G. The input of :func:`filter_sum`.
    Under autocast it computes in the autocast dtype.
    """
    n, c, h, w = x.shape
    out_ch, cg, nf = alpha.shape
    og = out_ch // groups
    dtype = _compute_dtype(x)
    rows_o, rows_f = _mix_rows(nf_order(nf), og, x.device)
    a = alpha.to(dtype).view(groups, og, cg, nf).transpose(2, 3)[:, rows_o, rows_f]  # (G, F·Og, Cg): one gather
    with torch.autocast(x.device.type, enabled=False):
        m = torch.matmul(a, x.to(dtype).reshape(n, groups, cg, h * w))
    return m.view(n, groups, nf * og, h, w)


@lru_cache(maxsize=64)
def _mix_rows(order: int, og: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Output channel and basis index of each mixed map, in (x-order i, o, y-order j) order."""
    rows = [(o, f) for _, idx in basis_blocks(order) for o in range(og) for f in idx]
    return torch.tensor([o for o, _ in rows], device=device), torch.tensor([f for _, f in rows], device=device)


def _stack_orders(ay: torch.Tensor, ji: int) -> torch.Tensor:
    """``(..., M, Ho, H)`` → ``(..., Ho, J_i·H)``: the first ``ji`` orders side by side."""
    a = ay[..., :ji, :, :]
    return a.transpose(-3, -2).reshape(*a.shape[:-3], a.shape[-2], ji * a.shape[-1])


class _FilterSum(Function):
    @staticmethod
    def forward(ctx, m, ay, bx):
        ctx.save_for_backward(m, ay, bx)
        n, groups, rows, h, w = m.shape
        order = ay.shape[-3] - 1
        og = rows // num_basis(order)
        ho, wo = ay.shape[-2], bx.shape[-1]
        out = None
        for i, ji, mi in _blocks_of(m, order, og):
            t = _ystage(_stack_orders(ay, ji), mi)  # (N, G, Og, Ho, W)
            if out is None:
                out = torch.matmul(t, _x_op(bx, i))
            else:
                out.add_(torch.matmul(t, _x_op(bx, i), out=workspace("o", out.shape, out)))
        return out.view(n, groups * og, ho, wo)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        m, ay, bx = ctx.saved_tensors
        need_m, need_ay, need_bx = ctx.needs_input_grad[:3]
        n, groups, rows, h, w = m.shape
        order = ay.shape[-3] - 1
        og = rows // num_basis(order)
        ho, wo = ay.shape[-2], bx.shape[-1]
        per_out = ay.dim() == 5
        gout = gout.contiguous().view(n, groups, og, ho, wo)
        dm = torch.empty_like(m) if need_m else None  # every block is written below
        day = torch.zeros_like(ay) if need_ay else None
        dbx = torch.zeros_like(bx) if need_bx else None
        off = 0
        for i, ji, mi in _blocks_of(m, order, og):
            stacked = _stack_orders(ay, ji)
            bxi = _x_op(bx, i)
            if need_bx:
                t = _ystage(stacked, mi)
                if per_out:
                    dbx[..., i, :, :] = torch.einsum("ngohw,ngohv->gowv", t, gout)
                else:
                    dbx[i] = t.reshape(-1, w).T @ gout.reshape(-1, wo)
                del t
            dt = torch.matmul(gout, bxi.transpose(-1, -2), out=workspace("dt", (n, groups, og, ho, w), m))
            if need_m:  # (N, G, Og, J_i·H, W), written in place sample by sample
                dmi = dm[:, :, off : off + og * ji].view(n, groups, og, ji * h, w)
                for k in range(n):
                    torch.matmul(stacked.transpose(-1, -2), dt[k], out=dmi[k])
            if need_ay:  # Σ over samples (and channels when σ is shared) of dt · miᵀ, plane by plane
                tmp = workspace("tmp", (n, groups, og, ho, ji * h), m)
                for k in range(n):
                    torch.matmul(dt[k], mi[k].transpose(-1, -2), out=tmp[k])
                ds = tmp.sum(0) if per_out else tmp.sum((0, 1, 2))
                day[..., :ji, :, :] += ds.view(*ds.shape[:-1], ji, h).transpose(-3, -2)
            off += og * ji
        return dm, day, dbx


def _blocks_of(m: torch.Tensor, order: int, og: int):
    """Yield ``(i, J_i, M_i)`` with ``M_i (N, G, Og, J_i·H, W)`` the mixed maps of x-order i (views)."""
    n, groups, _, h, w = m.shape
    off = 0
    for i in range(order + 1):
        ji = order + 1 - i
        yield i, ji, m[:, :, off : off + og * ji].reshape(n, groups, og, ji * h, w)
        off += og * ji


def _x_op(bx: torch.Tensor, i: int) -> torch.Tensor:
    """The x-operator of order i: ``(W, Wo)`` shared, or ``(G, Og, W, Wo)`` per output channel."""
    return bx[..., i, :, :]


def _ystage(stacked: torch.Tensor, mi: torch.Tensor) -> torch.Tensor:
    """``stacked (Ho, J_i·H)`` or ``(G, Og, Ho, J_i·H)`` times ``mi (N, G, Og, J_i·H, W)``, sample by sample
    (one large batched product each, no copy of ``mi``)."""
    out = workspace("t", (*mi.shape[:3], stacked.shape[-2], mi.shape[-1]), mi)
    for k in range(mi.shape[0]):
        torch.matmul(stacked, mi[k], out=out[k])
    return out


def filter_sum(m: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor) -> torch.Tensor:
    """Filter mixed maps and sum over the basis: the second half of the mix-first order.

    Args:
        m: ``(N, G, F·Og, H, W)`` from :func:`mix`.
        ay: y-axis operators ``(N+1, Ho, H)``, or ``(G, Og, N+1, Ho, H)`` with one σ per output channel.
        bx: transposed x-axis operators ``(N+1, W, Wo)`` or ``(G, Og, N+1, W, Wo)``.

    Returns ``(N, O, Ho, Wo)`` (no bias).
    """
    return _FilterSum.apply(m, ay, bx)


# ------------------------------------------------------------------------------ entry point
def axis_pair(g: torch.Tensor, hw, pads, stride: int = 1, mode: str = "zeros") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ay, bx)`` for 1-D filters ``g (…, N+1, s)`` on an ``hw = (H, W)`` input with pads
    ``[left, right, top, bottom]`` (negative: crop): ``ay (…, N+1, Ho, H)``, ``bx (…, N+1, W, Wo)``."""
    ay = axis_operators(g, hw[0], (pads[2], pads[3]), stride, mode)
    bx = axis_operators(g, hw[1], (pads[0], pads[1]), stride, mode).transpose(-1, -2)
    return ay, bx


def factorised_conv2d(
    x: torch.Tensor,
    alpha: torch.Tensor,
    g: torch.Tensor,
    pads,
    *,
    stride: int = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
    order: str = "basis_first",
    mixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The N-Jet convolution ``Σ_f α_f (G_i ⊗ G_j) * x`` without forming the 2-D filter.

    Same result as ``F.conv2d(F.pad(x, pads, padding_mode), W, stride=stride, groups=groups)``
    with ``W = α · basis`` (negative pads crop).

    Args:
        x: ``(N, C, H, W)``.
        alpha: ``(O, C/groups, F)``.
        g: 1-D Gaussian derivatives ``(N+1, s)``, or ``(O, N+1, s)`` for one σ per output channel
            (then ``order`` must be ``"mix_first"``).
        pads: ``[left, right, top, bottom]`` in pixels.
        order: ``"basis_first"`` or ``"mix_first"``.
        mixed: ``mix(x, alpha, groups)`` when already computed (tied branches share it).

    Returns ``(N, O, Ho, Wo)`` without bias. Under autocast it computes in the autocast dtype.
    """
    dtype = _compute_dtype(x)
    ay, bx = axis_pair(g.to(dtype), x.shape[-2:], pads, stride, padding_mode)
    alpha = alpha.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        if order == "basis_first":
            if g.dim() != 2:
                raise ValueError("basis_first needs one σ for all output channels; use order='mix_first'")
            bands = axis_bands(x.shape[-2], (pads[2], pads[3]), g.shape[-1], stride, padding_mode)
            return basis_first(x.to(dtype), alpha, ay, bx, groups, bands)
        if order != "mix_first":
            raise ValueError(f"order must be 'basis_first' or 'mix_first', got {order!r}")
        if g.dim() == 3:  # one σ per output channel
            og = alpha.shape[0] // groups
            ay, bx = ay.unflatten(0, (groups, og)), bx.unflatten(0, (groups, og))
        m = mix(x, alpha, groups) if mixed is None else mixed
        return filter_sum(m.to(dtype), ay, bx)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in: the autocast dtype when autocast is on, else ``x``'s."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype
