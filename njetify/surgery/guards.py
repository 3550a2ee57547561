"""Flatten guards: keep a Linear layer's input size when σ changes the feature-map size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .context import SurgeryContext
from .plan import Plan
from .report import ReportRow


class FlattenGuard(nn.Module):
    """Resize a ``(N, C, H, W)`` map to the size the following flatten → Linear was built for.

    ``size``: the original ``(H, W)`` when known (from example inputs); otherwise the side is
    inferred from ``in_features = C·H·W`` assuming a square map. At σ₀ with ``r="auto"`` the
    map already has that size and passes unchanged; after σ changed it is resized with
    adaptive average pooling (which also upsamples by replication).
    """

    def __init__(self, in_features: int, size: tuple[int, int] | None = None):
        super().__init__()
        self.in_features = int(in_features)
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def target(self, c: int, h: int, w: int) -> tuple[int, int] | None:
        """The ``(H, W)`` to resize to, or None when the map is fine as it is."""
        if self.size is not None:
            return None if (h, w) == self.size else self.size
        if c * h * w == self.in_features or self.in_features % c:
            return None
        side = math.isqrt(self.in_features // c)
        return (side, side) if side * side * c == self.in_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x
        t = self.target(*x.shape[1:])
        return x if t is None else F.adaptive_avg_pool2d(x, t)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, size={self.size}"


def guard_pass(ctx: SurgeryContext) -> None:
    """Insert a :class:`FlattenGuard` before every flatten of a subsampled map that feeds a Linear."""
    plan: Plan = ctx.state.get("plan") or Plan()
    if not plan.groups:
        return
    for i, g in enumerate(plan.guards):
        gm, graph = g.region.gm, g.region.gm.graph
        if not isinstance(getattr(gm, "flatten_guard", None), nn.ModuleDict):
            gm.add_module("flatten_guard", nn.ModuleDict())
        key = f"guard{i}"
        gm.flatten_guard[key] = FlattenGuard(g.in_features, g.size)
        src = g.flatten.args[0]  # the current input: the subsample pass may have rewired it
        with graph.inserting_after(src):
            new = graph.call_module(f"flatten_guard.{key}", (src,))
        g.flatten.replace_input_with(src, new)
        graph.lint()
        gm.recompile()
        size = f"its original {g.size[0]}x{g.size[1]}" if g.size else "the square size in_features implies"
        ctx.report.add(ReportRow(
            kind="guard", path=g.region.full_path(f"flatten_guard.{key}"), op=f"before {g.flatten.name}",
            action="inserted",
            reason=f"flatten -> Linear({g.in_features}) after safe subsampling: map resized to {size} when σ changes it",
        ))
