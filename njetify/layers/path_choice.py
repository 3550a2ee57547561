"""How a σ layer picks its path for one call: candidates, predictions, timing runs.

The layer gives its call signature; this module lists the exact paths its ``path`` setting
allows, asks the cost model (:mod:`~njetify.layers.path_cost`) for predictions, and lets
:mod:`~njetify.layers.path_plan` time the plausible ones on the real tensors — forward and,
when training, backward through :func:`torch.autograd.grad` (``.grad`` is never touched).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..basis import size_of
from .axis_operators import axis_geometry
from .path_cost import ConvShape, dense_seconds, factorised_seconds, rates_for
from .factorised import mix
from .path_plan import decide, time_call

#: Inside a compiled graph ``auto`` runs dense below this many filter elements, else factorised.
COMPILED_DENSE_ELEMENTS = 2**26


def candidates(path: str, per_channel: bool, dense_ok: bool) -> list[str]:
    """The exact paths a ``path`` setting allows (``auto``: dense too, when the filter fits)."""
    fact = ["mix_first"] if per_channel else ["basis_first", "mix_first"]
    if path == "factorised":
        return fact
    return (["dense"] if dense_ok else []) + fact


def compiled_path(path: str, out_channels: int, in_per_group: int, size: int, per_channel: bool) -> str:
    """The static choice inside ``torch.compile`` / ``torch.export`` (no timing in a graph): dense while
    the filter is small, else a factorised order."""
    if path == "auto" and out_channels * in_per_group * size * size <= COMPILED_DENSE_ELEMENTS:
        return "dense"
    return "mix_first" if per_channel else "basis_first"


def conv_shape(x: torch.Tensor, in_channels: int, out_channels: int, groups: int, size: int, order: int,
               stride: int, pads, per_channel: bool) -> ConvShape:
    """The cost model's description of one call."""
    ho = axis_geometry(x.shape[-2], (pads[2], pads[3]), size, stride)[-1]
    wo = axis_geometry(x.shape[-1], (pads[0], pads[1]), size, stride)[-1]
    return ConvShape(x.shape[0], in_channels, out_channels, groups, x.shape[-2], x.shape[-1], ho, wo, size, order,
                     per_channel)


def predictions(shape: ConvShape, paths: list[str], device, training: bool, shared_mix: int = 1) -> dict[str, float]:
    """Predicted seconds of each path."""
    rates = rates_for(device)
    return {p: dense_seconds(shape, rates, training) if p == "dense"
            else factorised_seconds(shape, rates, training, p, shared_mix) for p in paths}


def timing_run(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], training: bool) -> Callable[[], None]:
    """One timed call: ``forward()``, plus its backward w.r.t. ``inputs`` when training."""
    if not training:
        def run():
            with torch.no_grad():
                forward()
        return run

    def run():
        out = forward()
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        torch.autograd.grad(out, wanted, torch.ones_like(out), allow_unused=True)
    return run


def choose_path(layer, x: torch.Tensor, key: tuple, training: bool, pads, dense_ok: bool,
                stride: int | None = None) -> str:
    """The path of an :class:`~njetify.layers.NJetConv2d` call with signature ``key`` (measured once per key)."""
    per_channel = layer.sigma_per == "channel"
    paths = candidates(layer.path, per_channel, dense_ok)
    half = layer.half_width
    stride = layer.stride if stride is None else stride
    shape = conv_shape(x, layer.in_channels, layer.out_channels, layer.groups, size_of(half), layer.order, stride,
                       pads, per_channel)
    xi = x.detach().requires_grad_(x.requires_grad)
    runs = {p: timing_run(lambda p=p: layer._run(xi, p, half, pads, stride), [xi, layer.alpha, layer.log_sigma, layer.bias],
                          training) for p in paths}
    return decide(key, runs, predictions(shape, paths, x.device, training), x.device)


def choose_branch_path(head, x: torch.Tensor, k: int, key: tuple, training: bool, dense_ok: bool) -> str:
    """The path of branch k of a :class:`~njetify.layers.TiedNJetConv2d` (measured once per key).

    Mix-first is timed on a precomputed mix, to which ``1/K`` of the mix's own time is added: the
    K branches share one mix per input.
    """
    paths = candidates(head.path, False, dense_ok)
    size = 2 * head.half_width(k) + 1
    t = head.trims[k]
    shape = conv_shape(x, head.in_channels, head.out_channels, head.groups, size, head.order, 1, [size // 2 - t] * 4,
                       False)
    xi = x.detach().requires_grad_(x.requires_grad)
    params = [xi, head.alpha, head.log_sigma, head.bias]
    runs = {p: timing_run(lambda p=p: head._run_branch(xi, k, p), params, training) for p in paths if p != "mix_first"}
    extra = {}
    if "mix_first" in paths:
        alpha = head.alpha
        mixed = mix(xi, alpha, head.groups)
        mixed_in = mixed.detach().requires_grad_(training)
        runs["mix_first"] = timing_run(lambda: head._run_branch(xi, k, "mix_first", mixed_in),
                                       [mixed_in, head.log_sigma, head.bias], training)
        mix_run = timing_run(lambda: mix(xi, alpha, head.groups), [xi, alpha], training)
        extra["mix_first"] = _seconds(mix_run, x.device) / head.num_branches
    return decide(key, runs, predictions(shape, paths, x.device, training, head.num_branches), x.device, extra)


def _seconds(run: Callable[[], None], device) -> float:
    """Best of two timed calls of ``run`` (after a warm-up)."""
    run()
    return min(time_call(run, device) for _ in range(2))
