"""What one safe-subsampling does to one map size, decided on the host (DESIGN §4 and §7).

A learned subsampling's output size and its pixel picks follow σ, a learned value. Reading σ
inside a compiled graph would break it; baking a float factor into the graph would recompile it
at every optimiser step. So a :class:`~njetify.layers.safe_subsample.SafeSubsample` keeps, per
input size, a :class:`SubsamplePlan` made on the host: a few ints (the output size, and the stride
``k`` when the picks are exactly every k-th pixel) and the pick indices as tensors. A compiled
graph reads the plan only: dynamo guards the ints (a recompile exactly when a map size or the
stride changes) and takes the index tensors as inputs (their values move with σ, no recompile).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

#: Relative tolerance on sizes and sample positions: a factor up to 1e-4 (relative) above 1/k still
#: gives ⌈L/k⌉ and picks pixels 0, k, 2k, … — as σ within ~1e-4 of a size boundary keeps its filter
#: size (``basis.SIZE_TOLERANCE``). With an absolute 1e-6 px, nine SGD steps at lr 1e-6 moved σ by
#: under 5e-7 below σ₀ and grew every map of a RegNet by one pixel (and lost the strided shortcut).
REL_TOL = 1e-4


class SubsamplePlan(NamedTuple):
    """One map size's subsampling at one factor: ``(H, W)`` → ``(out_h, out_w)``.

    ``stride`` is ``k`` when a nearest subsampling keeps exactly the pixels ``0, k, 2k, …`` on both
    axes (then "op at stride 1, subsample" is "op at stride k"), else None. ``rows`` / ``cols`` are
    the picked indices (int64, on the map's device) of a nearest subsampling that changes the size,
    else None. ``factor`` is the factor the plan was made at (host-side check only)."""

    factor: float
    out_h: int
    out_w: int
    stride: int | None
    rows: torch.Tensor | None
    cols: torch.Tensor | None


def subsampled_size(length: int, factor: float) -> int:
    """``⌈length · factor⌉`` (at least 1): the side after subsampling by ``factor``."""
    return max(1, int(math.ceil(length * factor * (1.0 - 1e-4))))  # 1e-4 is REL_TOL (torch.jit.script reads no globals)


def picks(out: int, length: int, factor: float, device: torch.device) -> torch.Tensor:
    """Indices ``⌊i / factor⌋`` (i < out), clipped to the input: top-left aligned like a strided op."""
    idx = torch.arange(out, device=device, dtype=torch.float64).div_(factor).mul_(1.0 + 1e-4).floor_()  # REL_TOL
    return idx.clamp_(max=length - 1).long()


def exact_pick_stride(factor: float, height: int, width: int) -> int | None:
    """``k`` when nearest subsampling by ``factor`` picks exactly ``0, k, 2k, …`` of both sides, else None.

    True at ``factor = 1/k`` and close to it: the picks ``⌊j/f⌋`` drift from ``j·k`` by less than a
    pixel over the map."""
    k = int(round(1.0 / factor))
    if k < 2:
        return None
    for n in (height, width):
        out = subsampled_size(n, factor)
        if out != -(-n // k) or any(math.floor(j / factor * (1.0 + REL_TOL)) != j * k for j in range(out)):
            return None
    return k


def make_plan(factor: float, height: int, width: int, nearest: bool, device: torch.device) -> SubsamplePlan:
    """The :class:`SubsamplePlan` of a ``height × width`` map at ``factor`` (host-side; never in a graph)."""
    oh, ow = subsampled_size(height, factor), subsampled_size(width, factor)
    stride = exact_pick_stride(factor, height, width) if nearest else None
    rows = cols = None
    if nearest and (oh, ow) != (height, width):
        rows, cols = picks(oh, height, factor, device), picks(ow, width, factor, device)
    return SubsamplePlan(factor, oh, ow, stride, rows, cols)


def apply_plan(x: torch.Tensor, plan: SubsamplePlan, interpolation: str) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C, plan.out_h, plan.out_w)``: the plan's picks (nearest) or a resize to its
    size (``"area"``: adaptive average pool; ``"bilinear"``: antialiased). Traceable: ints and tensors only."""
    if plan.out_h == x.shape[-2] and plan.out_w == x.shape[-1]:
        return x
    if plan.rows is not None and plan.cols is not None:
        return x.index_select(-2, plan.rows).index_select(-1, plan.cols)
    if interpolation == "area":
        return F.adaptive_avg_pool2d(x, (plan.out_h, plan.out_w))
    return F.interpolate(x, size=(plan.out_h, plan.out_w), mode="bilinear", align_corners=False, antialias=True)
