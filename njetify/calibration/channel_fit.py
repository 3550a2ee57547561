"""The per-input-channel solver: output matching with the input channels decoupled.

A layer too wide for a Gram matrix (``C_g·F + K > direct_max_dim``) is solved by conjugate
gradients on a stored design (:mod:`.iterative`) unless the recipe says
``calibration: {wide_solver: per_channel}``; ``from_conv(inputs=...)`` solves every layer this way
(:mod:`.on_inputs`). Then every input channel c's share of the original conv's output,
``w_{o,c} ∗ x_c`` (the original kernel at its taps, on the layer's input), is fitted by
``α_{o,c} · q_c`` on its own, from the moments at the sampled positions

    M_{k,c} = Σ P_{k,c} q_{k,c}ᵀ   (taps × F, per branch k)      Q_c = Σ_k Σ q_{k,c} q_{k,c}ᵀ   (F × F)

— C solves of size F instead of one of size C·F. Memory: ``8·C·F·(T + F)`` bytes per branch and no
stored design; the input is read a chunk of channels at a time (a chunk's responses, taps and
padded input take about ``CHUNK_BYTES``). Correlations between input channels are ignored: the joint
fit uses them, and overfits them on a few images (docs/calibration.md). Each solve is pulled towards
the weight-space fit by :data:`~njetify.options.MOMENTS_RIDGE` times the channel's mean diagonal of
``Q_c``, so channels that never fire keep it. The biases are then refitted on the real outputs'
residual, and the errors reported are the real outputs' (:func:`solve_channels`, one more pass over
the positions).
"""

from __future__ import annotations

import math

import torch

from ..options import MOMENTS_RIDGE
from .responses import CHUNK_BYTES, Geometry, basis_responses, sample_positions, take
from .ridge import split_targets

__all__ = ["ChannelStats", "accumulate_channels", "solve_channels", "tap_values"]


def tap_values(x: torch.Tensor, geometry: Geometry, offsets: torch.Tensor, positions: torch.Tensor,
               step: int) -> torch.Tensor:
    """``P (S, C, T)``: the layer's input at every tap ``(dy, dx)`` around each position's centre.

    The centre is that of the layer's own (odd-sized) patch at the position, and the input is
    padded as the layer pads it, so ``Σ_t w_t P_t`` is what a conv with those taps outputs there.
    """
    r = int(offsets.abs().max()) if offsets.numel() else 0
    x_pad = geometry.pad(x, 2 * r + 1)
    n, i, j = positions.to(x.device).unbind(1)
    dy, dx = offsets.to(x.device).unbind(1)
    rows = (i * step + r)[:, None] + dy[None, :]  # (S, T)
    cols = (j * step + r)[:, None] + dx[None, :]
    return x_pad[n[:, None], :, rows, cols].transpose(1, 2)  # (S, T, C) -> (S, C, T)


def taps_mismatch(unit, inputs, targets) -> str | None:
    """Why the original kernels' taps on the layer's input do not give the original convs' outputs
    (checked at 8 positions of the first batch's first image; None when they do)."""
    b, x = inputs[0]
    x = x[:1]  # one image: the check needs only a few positions
    for k, (_, geometry, _) in enumerate(unit.bases()):
        smp, conv = targets[k].get(b), unit.originals[k]
        if smp is None:
            continue
        if smp.step != conv.stride[0] or conv.stride[0] != conv.stride[1]:
            return "the targets are not on the original conv's output grid"
        kernel, offsets = unit.taps(k)
        pos = sample_positions(1, *smp.grid, 8, torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = take(conv(x), pos).double()
        p = tap_values(x, geometry, offsets, pos, smp.step).double()  # (S, C, T)
        g = unit.groups
        pred = torch.einsum("sgct,goct->sgo", p.reshape(p.shape[0], g, -1, p.shape[-1]),
                            kernel.double().reshape(g, -1, *kernel.shape[1:])).flatten(1)
        if conv.bias is not None:
            pred = pred + conv.bias.detach().double()
        if float((pred - ref).norm()) > 1e-4 * float(ref.norm()) + 1e-6:
            return "the kernel's taps do not reproduce the original conv (its padding)"
    return None


def channel_chunks(channels: int, per_group: int, per_chunk: int) -> list[tuple[int, int]]:
    """Ranges ``[c0, c1)`` of about ``per_chunk`` input channels that hold whole groups or lie in one."""
    if per_chunk >= per_group:
        step = (per_chunk // per_group) * per_group
        return [(c0, min(c0 + step, channels)) for c0 in range(0, channels, step)]
    return [(c0, min(c0 + per_chunk, g0 + per_group)) for g0 in range(0, channels, per_group)
            for c0 in range(g0, g0 + per_group, per_chunk)]


def _chunks_for(unit, x: torch.Tensor, size: int, samples: int, taps: int) -> list[tuple[int, int]]:
    n, c, h, w = x.shape
    pad = n * (h + size) * (w + size)
    per_channel = 8 * (pad + samples * (unit.num_basis + taps) + 2 * n * h * w * unit.num_basis)
    return channel_chunks(c, c // unit.groups, max(1, CHUNK_BYTES // per_channel))


class ChannelStats:
    """Per-channel moments of one unit's regression, and their solve.

    Args:
        channels: C input channels. groups: conv groups. num_basis: F.
        kernels: per branch, the original kernel at its taps ``(O', C_g, T_k)`` (O' = the outputs fitted).
    """

    solver = "per-channel"

    def __init__(self, channels: int, groups: int, num_basis: int, kernels: list[torch.Tensor], device=None):
        self.groups, self.num_basis = groups, num_basis
        self.kernels = [w.detach().double().to(device) for w in kernels]
        f64 = dict(dtype=torch.float64, device=device)
        self.m = [torch.zeros(channels, w.shape[-1], num_basis, **f64) for w in kernels]
        self.q = torch.zeros(channels, num_basis, num_basis, **f64)
        self.count = 0

    def update(self, q: torch.Tensor, p: torch.Tensor, branch: int = 0, first: int = 0) -> None:
        """Add samples of branch ``branch`` for channels ``first…first+c``: responses ``q (S, c, F)``
        and tap values ``p (S, c, T)``."""
        q, p = q.double(), p.double()
        c = slice(first, first + q.shape[1])
        self.m[branch][c] += torch.einsum("sct,scf->ctf", p, q)
        self.q[c] += torch.einsum("scf,scg->cfg", q, q)

    def solve(self, x0: torch.Tensor, rho: float = MOMENTS_RIDGE) -> torch.Tensor:
        """Unknowns ``(groups, C_g·F + K, O')`` from the start ``x0`` (:func:`~.ridge.pack` layout): each
        channel's α refitted, the bias rows kept (:func:`solve_channels` refits them)."""
        if self.count == 0:
            raise ValueError("per-channel fit: no calibration position reached the layer")
        g, nf = self.groups, self.num_basis
        cg = self.q.shape[0] // g
        lam = rho * self.q.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
        eye = torch.eye(nf, dtype=self.q.dtype, device=self.q.device)
        inv = torch.linalg.inv(self.q + lam[:, None, None] * eye).reshape(g, cg, nf, nf)
        qg = self.q.reshape(g, cg, nf, nf)
        x, og = x0.clone(), x0.shape[-1]
        a0 = x0[:, : cg * nf].reshape(g, cg, nf, og)  # α₀ (g, C_g, F, O')
        step = max(1, CHUNK_BYTES // max(1, 32 * cg * (nf + max(w.shape[-1] for w in self.kernels))))
        for o0 in range(0, og, step):
            cols = slice(o0, o0 + step)
            num = -torch.einsum("gcfh,gcho->gcfo", qg, a0[..., cols])
            for w, m in zip(self.kernels, self.m):
                wg = w.reshape(g, og, cg, -1)[:, cols]  # (g, o, C_g, T)
                num += torch.einsum("goct,gctf->gcfo", wg, m.reshape(g, cg, -1, nf))
            x[:, : cg * nf, cols] = (a0[..., cols] + inv @ num).reshape(g, cg * nf, -1)
        return x


def _kernels(unit, cols) -> list[torch.Tensor]:
    out = []
    for k in range(unit.num_branches):
        w = unit.taps(k)[0]
        if cols is not None:
            w = w.reshape(unit.groups, -1, *w.shape[1:])[:, cols.to(w.device)].flatten(0, 1)
        out.append(w)
    return out


def _passes(unit, inputs, targets, every: int):
    """Per batch, branch and chunk of input channels: ``(branch, sample, q (S, c, F), c0, c1)`` plus
    what the chunk needs: its input ``x[:, c0:c1]``, the branch geometry and the positions."""
    for b, x in inputs:
        for k, (basis, geometry, _) in enumerate(unit.bases()):
            smp = targets[k].get(b)
            if smp is None:
                continue
            pos = smp.positions[::every]
            taps = unit.taps(k)[1]
            for c0, c1 in _chunks_for(unit, x, basis.shape[-1] + 2 * int(taps.abs().max()), pos.shape[0], taps.shape[0]):
                xc = x[:, c0:c1]
                yield k, smp, pos, basis_responses(xc, basis, geometry, pos, smp.step), (c0, c1), xc, geometry, taps


def accumulate_channels(unit, inputs, targets, every: int = 1, cols=None) -> ChannelStats:
    """The unit's per-channel moments at its current σ: every ``every``-th position, output channels
    ``cols`` of each group (all when None)."""
    channels = unit.groups * unit.taps(0)[0].shape[1]
    stats = ChannelStats(channels, unit.groups, unit.num_basis, _kernels(unit, cols), unit.module.alpha.device)
    counted = set()
    for k, smp, pos, q, (c0, _), xc, geometry, taps in _passes(unit, inputs, targets, every):
        stats.update(q, tap_values(xc, geometry, taps, pos, smp.step), k, c0)
        if id(smp) not in counted:
            counted.add(id(smp))
            stats.count += pos.shape[0]
    return stats


def solve_channels(unit, stats: ChannelStats, x0: torch.Tensor, inputs, targets, every: int = 1, cols=None,
                   rho: float = MOMENTS_RIDGE) -> tuple[torch.Tensor, float, float]:
    """Solve, refit the bias rows on the residual of the unit's real outputs, and measure the relative
    output errors of ``x0`` and of the solution at the positions: ``(x, before, after)``."""
    x = stats.solve(x0, rho)
    g, nf, og = unit.groups, unit.num_basis, x0.shape[-1]
    dim = x0.shape[1] - unit.num_bias
    cg = dim // nf
    alphas = [u[:, :dim].reshape(g, cg, nf, og).float() for u in (x0, x)]
    preds: dict[tuple[int, int], list[torch.Tensor]] = {}
    for k, smp, pos, q, (c0, c1), *_ in _passes(unit, inputs, targets, every):
        key = (k, id(smp))
        if key not in preds:
            preds[key] = [torch.zeros(pos.shape[0], g, og, device=x.device) for _ in alphas]
        g0, g1 = c0 // cg, (c1 - 1) // cg + 1
        qg = q.float().reshape(q.shape[0], g1 - g0, -1, nf)  # (S, groups in chunk, channels of each, F)
        for pred, a in zip(preds[key], alphas):
            pred[:, g0:g1] += torch.einsum("sgcf,gcfo->sgo", qg, a[g0:g1, c0 - g0 * cg : c0 - g0 * cg + qg.shape[2]])
    return _finish(unit, x0, x, preds, targets, every, cols)


def _finish(unit, x0, x, preds, targets, every, cols):
    """Bias rows refitted to the mean residual of each branch; the relative errors before and after."""
    og, k_bias = x0.shape[-1], unit.num_bias
    dim = x0.shape[1] - k_bias
    sq0 = sq = tt = 0.0
    shift = torch.zeros(k_bias, unit.groups, og, dtype=torch.float64, device=x.device)  # Σ residual per branch
    counts = [0] * k_bias
    for k, branch in enumerate(targets):
        for smp in branch.values():
            if (k, id(smp)) not in preds:
                continue
            t = smp.values[::every].to(x.device).float()
            if cols is not None:
                t = t.reshape(t.shape[0], unit.groups, -1)[:, :, cols.to(t.device)].flatten(1)
            t = split_targets(t, unit.groups).transpose(0, 1).double()  # (S, g, O')
            b0 = x0[:, dim + k].to(t.device) if k_bias else 0.0  # the start's bias, kept by the solve
            r0, r = (t - b0 - p.double() for p in preds[(k, id(smp))])
            sq0, sq, tt = sq0 + float(r0.pow(2).sum()), sq + float(r.pow(2).sum()), tt + float(t.pow(2).sum())
            if k_bias:
                shift[k] += r.sum(0)
                counts[k] += r.shape[0]
    x = x.clone()
    for k, n in enumerate(counts):
        if n:
            x[:, dim + k] += shift[k] / n
            sq -= float(n * (shift[k] / n).pow(2).sum())
    rel = (lambda e: math.sqrt(max(e, 0.0) / tt)) if tt > 0 else (lambda e: math.sqrt(max(e, 0.0)))
    return x, rel(sq0), rel(sq)
