"""Targets: what every original conv outputs on the original model's inputs, at sampled positions.

One forward of the original model per calibration batch, with a forward hook on the
original conv of every unit (every branch of a tied head), records ``(S, O)`` output
values at a seeded random subset of the output positions — the positions the
converted layer will be fitted on. Memory: ``4·S·O`` bytes per unit and batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import call_model
from .responses import sample_positions, take
from .units import Unit


@dataclass
class Sample:
    """Targets of one branch on one batch: ``positions (S, 3)`` rows ``(n, i, j)`` on a grid whose
    points are ``step`` input pixels apart, ``values (S, O)``, the ``grid (H', W')`` and the input size."""

    positions: torch.Tensor
    values: torch.Tensor
    step: int
    grid: tuple[int, int]
    input_hw: tuple[int, int]


def _stride1_output(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """The conv evaluated at stride 1 (None when its padding is not a plain zero padding)."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return F.conv2d(x, conv.weight, conv.bias, 1, conv.padding, conv.dilation, conv.groups)


def seeded(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and integer keys (unit, branch, batch)."""
    g = torch.Generator()
    value = seed
    for k in keys:
        value = (value * 1_000_003 + k + 1) % (2**62)
    return g.manual_seed(value)


@torch.no_grad()
def collect_targets(
    original: nn.Module, units: list[Unit], batches: list, *, budgets: dict[int, int], dense_strided: bool = False,
    seed: int = 0,
) -> dict[int, list[dict[int, Sample]]]:
    """Run ``original`` on every batch and record each unit's targets.

    Args:
        budgets: positions per unit (by ``unit.index``) over all batches, split evenly over
            images and branches.
        dense_strided: for a strided conv, sample the stride-1 output (the conv evaluated at
            every position) instead of the positions the stride keeps.

    Returns ``{unit.index: [ {batch index: Sample} per branch ]}``; a branch the batches never
    reach has no entries.
    """
    images = sum(batch_size(b) for b in batches)
    out = {u.index: [{} for _ in u.originals] for u in units}
    current = {"batch": 0}
    handles = []

    def make_hook(unit: Unit, k: int):
        per_image = math.ceil(budgets[unit.index] / max(1, images * unit.num_branches))

        def hook(conv, args, y):
            b = current["batch"]
            if b in out[unit.index][k]:
                return  # a conv called twice in one forward: its first call counts
            step = 1
            if getattr(conv, "transposed", False):
                pass  # a transposed conv's outputs are all kept: one grid point per output pixel
            elif dense_strided and conv.stride[0] > 1:
                y1 = _stride1_output(conv, args[0])
                if y1 is not None:
                    y = y1
                else:
                    step = conv.stride[0]
            else:
                step = conv.stride[0]
            gen = seeded(seed, unit.index, k, b)
            pos = sample_positions(y.shape[0], y.shape[-2], y.shape[-1], per_image, gen)
            out[unit.index][k][b] = Sample(pos, take(y, pos).float(), step, tuple(y.shape[-2:]),
                                           tuple(args[0].shape[-2:]))

        return hook

    try:
        for u in units:
            for k, conv in enumerate(u.originals):
                handles.append(conv.register_forward_hook(make_hook(u, k)))
        for i, batch in enumerate(batches):
            current["batch"] = i
            call_model(original, batch)
    finally:
        for h in handles:
            h.remove()
    return out


def batch_size(batch) -> int:
    """Number of samples in a batch (its first tensor's first dimension)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = list(batch.values())
    for v in batch:
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1
