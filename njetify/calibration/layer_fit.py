"""Fit one unit (an N-Jet layer or a tied head) on the inputs it receives in the converted model.

For every batch and branch: basis responses of the converted input at the sampled
positions, regressed on the original conv's outputs there (:mod:`.ridge` or, for wide
layers, :mod:`.iterative`). With σ₀ candidates, each is tried on a subset of the
positions and the winner (:func:`.sigma_search.choose`) is refitted on all of them.
"""

from __future__ import annotations

import math
import time

import torch

from .channel_fit import ChannelStats, accumulate_channels, solve_channels, taps_mismatch
from .iterative import DesignStore
from .options import CalibrationOptions, LayerOptions
from .responses import basis_responses, sample_positions, take
from .results import LayerResult
from .ridge import GramStats, design, pack, unpack
from .sigma_search import choose
from .targets import Sample
from .units import Unit

Inputs = list[tuple[int, torch.Tensor]]
Targets = list[dict[int, Sample]]


def is_wide(unit: Unit, opts: CalibrationOptions) -> bool:
    """True when the unit's regression is too wide for a Gram matrix."""
    return unit.dim + unit.num_bias > opts.direct_max_dim


def _design_budget(unit: Unit, opts: CalibrationOptions) -> int:
    """Positions a wide layer's stored design may hold (``design_bytes``)."""
    return max(1, opts.design_bytes // (4 * unit.groups * (unit.dim + unit.num_bias)))


def _has_taps(unit: Unit) -> bool:
    return all(unit.taps(k) is not None for k in range(unit.num_branches))


def sample_budget(unit: Unit, opts: CalibrationOptions) -> int:
    """Positions to sample for the unit: ``max_samples``, fewer for a wide layer's stored design (the
    per-channel solver stores none)."""
    if not is_wide(unit, opts) or (opts.wide_solver == "per_channel" and _has_taps(unit)):
        return opts.max_samples
    return min(opts.max_samples, _design_budget(unit, opts))


def solver_for(unit: Unit, inputs: Inputs, targets: Targets, opts: CalibrationOptions) -> tuple[str, str | None]:
    """``("direct" | "pcg" | "per_channel", why the per-channel solver was not used)`` for the unit.

    The per-channel solver serves a wide unit when the recipe asks for it and the original kernels'
    taps reproduce the original convs' outputs on the layer's input (checked at 8 positions).
    """
    if not is_wide(unit, opts):
        return "direct", None
    if opts.wide_solver != "per_channel":
        return "pcg", None
    if not _has_taps(unit):
        return "pcg", "per-channel solver: the original is no plain odd-sized convolution"
    why = taps_mismatch(unit, inputs, targets)
    if why:
        return "pcg", f"per-channel solver: {why}"
    return "per_channel", None


#: The σ₀ search fits at most this many output channels per group (a seeded subset).
SEARCH_OUTPUTS = 64


def _stats(unit: Unit, opts: CalibrationOptions, outputs: int, device, solver: str):
    if solver == "pcg":
        store = DesignStore(unit.groups, unit.dim, unit.num_bias, outputs, unit.num_basis, device)
        store.max_iter = opts.max_iter
        return store
    return GramStats(unit.groups, unit.dim, unit.num_bias, outputs, device)


def accumulate(unit: Unit, inputs: Inputs, targets: Targets, opts: CalibrationOptions, every: int = 1,
               cols: torch.Tensor | None = None, solver: str | None = None):
    """Statistics of the unit's regression at its current σ: every ``every``-th position, and only
    the output channels ``cols`` of each group (all when None). ``solver``: :func:`solver_for`'s choice
    (None: direct or conjugate gradients by width)."""
    solver = solver or ("pcg" if is_wide(unit, opts) else "direct")
    if solver == "per_channel":
        return accumulate_channels(unit, inputs, targets, every, cols)
    og = unit.outputs_per_group
    stats = _stats(unit, opts, og if cols is None else len(cols), unit.module.alpha.device, solver)
    for k, q, t in _samples(unit, inputs, targets, every, cols):
        stats.update(q, t, k)
    return stats


def _samples(unit: Unit, inputs: Inputs, targets: Targets, every: int, cols: torch.Tensor | None):
    """Per batch and branch: ``(branch, q (S, C, F), targets (S, O'))`` at the unit's σ."""
    og = unit.outputs_per_group
    bases = unit.bases()
    for b, x in inputs:
        for k, (basis, geometry, _) in enumerate(bases):
            smp = targets[k].get(b)
            if smp is None:
                continue
            q = basis_responses(x, basis, geometry, smp.positions[::every], smp.step)
            t = smp.values[::every].to(q.device, q.dtype)
            if cols is not None:
                t = t.reshape(t.shape[0], unit.groups, og)[:, :, cols.to(t.device)].flatten(1)
            yield k, q, t


def _search_outputs(unit: Unit) -> torch.Tensor | None:
    """A seeded subset of ``SEARCH_OUTPUTS`` output channels per group (None: all of them)."""
    og = unit.outputs_per_group
    if og <= SEARCH_OUTPUTS:
        return None
    return torch.randperm(og, generator=torch.Generator().manual_seed(unit.index))[:SEARCH_OUTPUTS].sort().values


def _search_step(unit: Unit, targets: Targets, opts: CalibrationOptions) -> int:
    """Every how many positions the σ₀ search uses: ``1/search_fraction``, but never fewer than
    four samples per unknown."""
    total = sum(s.positions.shape[0] for branch in targets for s in branch.values())
    return max(1, min(round(1 / max(opts.search_fraction, 1e-6)), total // (4 * (unit.dim + unit.num_bias))))


def _relative(stats, err2: float) -> float:
    norm2 = stats.target_norm2()
    return math.sqrt(err2 / norm2) if norm2 > 0 else math.sqrt(err2)


def check_geometry(unit: Unit, inputs: Inputs, targets: Targets) -> str | None:
    """Why the unit cannot be fitted on these inputs (None when it can).

    Checks that the converted input has the original conv's input size, that the sampled grid is
    the converted layer's, and that the responses reproduce the layer's own forward.
    """
    b, x = inputs[0]
    alpha, bias = unit.params()
    for k, (basis, geometry, stride) in enumerate(unit.bases()):
        smp = targets[k].get(b)
        if smp is None:
            continue
        if tuple(x.shape[-2:]) != smp.input_hw:
            return (f"its input in the converted model is {tuple(x.shape[-2:])}, the original conv's "
                    f"{smp.input_hw} (a subsampling that does not keep the original sizes, e.g. a numeric r)")
        grid = geometry.out_size(x.shape[-2], x.shape[-1], basis.shape[-1], smp.step)
        if grid != smp.grid:
            return f"its output grid {grid} differs from the original conv's {smp.grid}"
        with torch.no_grad():
            y = unit.branch_output(x[:1], k)  # one image: the check needs only a few positions
        pos = sample_positions(1, y.shape[-2], y.shape[-1], 8, torch.Generator().manual_seed(0))
        a = design(basis_responses(x, basis, geometry, pos, stride), unit.groups, k, unit.num_bias)
        pred = (a.double() @ pack(alpha, bias, unit.groups)).transpose(0, 1).reshape(pos.shape[0], -1)
        ref = take(y, pos).double()
        if float((pred - ref).norm()) > 1e-3 * float(ref.norm()) + 1e-6:
            return "the basis responses do not reproduce the layer's output (unsupported padding or geometry)"
    return None


def _set_fit(unit: Unit, x: torch.Tensor) -> None:
    alpha, bias = unpack(x, unit.num_bias, unit.num_basis)
    unit.set_params(alpha, bias)


def _solve(unit: Unit, stats, opts: CalibrationOptions, cols: torch.Tensor | None = None, *,
           inputs: Inputs = (), targets: Targets = (), every: int = 1):
    """Fit from ``stats`` (output channels ``cols``); returns the unknowns and the relative errors
    before / after. The per-channel solver's errors (and biases) come from one more pass over the
    positions (``inputs``, ``targets``, ``every``)."""
    x0 = pack(*unit.params(), unit.groups)
    if cols is not None:
        x0 = x0[..., cols.to(x0.device)]
    if not isinstance(stats, ChannelStats):
        x, before, after = stats.fit(x0, opts.ridge)
        return x, _relative(stats, before), _relative(stats, after)
    return solve_channels(unit, stats, x0, inputs, targets, every, cols)


def fit_unit(
    unit: Unit, inputs: Inputs, targets: Targets, opts: CalibrationOptions, lopts: LayerOptions,
    lock_sigma: str | None = None,
) -> LayerResult:
    """Fit ``unit`` in place; the result says how (status "calibrated" or "skipped").

    ``lock_sigma``: why σ₀ must not change (then the candidates of ``lopts`` are not tried).
    """
    t0 = time.perf_counter()
    res = LayerResult(path=unit.path, paths=unit.paths + unit.extra_paths, kind=unit.kind,
                      status="calibrated", sigma0=unit.sigmas(), weight_error=unit.weight_error(),
                      size=[b.shape[-1] for b, _, _ in unit.bases()])
    if not unit.uniform_sigma():
        res.status = "skipped"
        res.reason = "not calibrated: per-channel σ's differ (one basis cannot serve every output)"
        return res
    why = check_geometry(unit, inputs, targets)
    if why is not None:
        res.status, res.reason = "skipped", f"not calibrated: {why}"
        return res
    sigmas = [] if unit.tied else list(lopts.sigmas or [])
    if len(sigmas) > 1 and unit.dim + unit.num_bias > opts.search_max_dim:
        lock_sigma = (f"not searched: the layer has {unit.dim + unit.num_bias} coefficients to fit, more than the "
                      f"recipe's search_max_dim {opts.search_max_dim} (a full fit per candidate σ₀ would be slow; "
                      "raise search_max_dim to search it)")
    if len(sigmas) > 1 and lock_sigma:
        sigmas, res.reason = [], f"σ₀ kept: {lock_sigma}"
    solver, why_not = solver_for(unit, inputs, targets, opts)
    if why_not:
        res.reason = why_not if res.reason is None else f"{res.reason}; {why_not}"
    start = _State(unit)
    fits = _search(unit, inputs, targets, opts, sigmas, start, res, solver) if len(sigmas) > 1 else {}
    chosen = choose(res.candidates, opts.sigma_tolerance) if res.candidates else start.sigma
    if chosen in fits:  # the search already fitted it on every position and output
        x, res.samples, res.solver = fits[chosen]
        _move_to(unit, chosen, start)
    else:
        _move_to(unit, chosen, start)
        every = _pcg_step(unit, targets, opts) if why_not else 1
        stats = accumulate(unit, inputs, targets, opts, every, solver=solver)
        x, before, res.error_after = _solve(unit, stats, opts, inputs=inputs, targets=targets, every=every)
        res.samples, res.solver = stats.count, _solver(stats)
        if res.error_before is None:
            res.error_before = before
    _set_fit(unit, x)
    if res.error_after is None:
        res.error_after = res.candidates[chosen]
    res.sigma0 = [round(v, 6) for v in unit.sigmas()]
    res.weight_error = unit.weight_error()  # of the weight-space fit at the final σ₀
    res.size = [b.shape[-1] for b, _, _ in unit.bases()]
    res.seconds = time.perf_counter() - t0
    return res


class _State:
    """A unit's σ and parameters as converted, to come back to."""

    def __init__(self, unit: Unit):
        self.sigma = round(unit.sigmas()[0], 6)
        alpha, bias = unit.params()
        self.alpha, self.bias = alpha.clone(), None if bias is None else bias.clone()


def _move_to(unit: Unit, sigma: float, start: _State) -> None:
    """σ₀ = ``sigma`` with the weight-space fit there (the converted parameters at the start σ₀)."""
    if _same(sigma, start.sigma):
        if not unit.tied:
            unit.set_sigma(start.sigma)
        unit.set_params(start.alpha, start.bias)
    else:
        unit.set_sigma(sigma)
        unit.weight_space_fit()


def _pcg_step(unit: Unit, targets: Targets, opts: CalibrationOptions) -> int:
    """Every how many positions a stored design may keep, where the positions were sampled for the
    per-channel solver (which stores none) and conjugate gradients serve instead."""
    total = sum(s.positions.shape[0] for branch in targets for s in branch.values())
    return max(1, math.ceil(total / _design_budget(unit, opts)))


def _search(unit, inputs, targets, opts, sigmas, start: _State, res: LayerResult, solver: str) -> dict:
    """Try σ₀ candidates from small to large (stop once the error rises past its minimum); fill
    ``res.candidates`` and ``res.error_before``. Where the search used every position and output
    (a layer with few positions per unknown), return the fits ``{σ₀: (x, samples, solver)}``."""
    sigmas = sorted({round(float(s), 6) for s in sigmas} | {start.sigma})
    sigmas.sort(key=lambda v: not _same(v, start.sigma))  # the start first: its error is the "before"
    every = _search_step(unit, targets, opts)
    full = every == 1  # every position: fit every output too, and the winner's fit is the final one
    cols = None if full else _search_outputs(unit)
    fits = {}
    for s in sigmas:
        tried = res.candidates
        if len(tried) >= 2 and min(tried.values()) * (1 + opts.sigma_tolerance) < tried[max(tried)]:
            break  # the error rose again past its minimum: larger σ₀ will not win (and cost more)
        _move_to(unit, s, start)
        stats = accumulate(unit, inputs, targets, opts, every, cols, solver)
        x, before, after = _solve(unit, stats, opts, cols, inputs=inputs, targets=targets, every=every)
        if _same(s, start.sigma):
            res.error_before = before  # on the search's share of positions and outputs
        res.candidates[s] = after
        if full:
            fits[s] = (x, stats.count, _solver(stats))
    return fits


def _solver(stats) -> str:
    if isinstance(stats, GramStats):
        return "direct"
    if isinstance(stats, ChannelStats):
        return stats.solver
    return f"pcg ({stats.iterations} iterations)"


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1.0)
