"""Pass ``guards``: a Linear behind a flatten of a subsampled map becomes a :class:`GuardedLinear`."""

from __future__ import annotations

from torch import nn

from ...layers import GuardedLinear
from ..context import SurgeryContext
from ..decisions import Guard


def guard_pass(ctx: SurgeryContext) -> None:
    """Guard every ``flatten → Linear`` head of the plan that reads a map whose size follows σ;
    a head the plan could not guard gets a "kept" decision with the reason (its strides were kept);
    ``ctx.guarded``: this pass's :class:`~njetify.surgery.decisions.Guard` decisions."""
    ctx.guarded = []
    for g in ctx.plan.guards:
        linear = ctx.module(g.path)
        op = f"{type(linear).__name__}({g.in_features})"
        if g.reason is not None:
            ctx.guarded.append(ctx.decide(Guard(
                g.path, op=op, decision="kept",
                reason=f"not guarded: {g.reason}; the subsamplings feeding it keep their stride")))
            continue
        if not any(ctx.plan.groups.values()) or type(linear) is not nn.Linear:
            continue
        ctx.rewriter.replace(g.path, GuardedLinear.from_linear(linear, g.map_shape))
        c, h, w = g.map_shape
        ctx.guarded.append(ctx.decide(Guard(
            g.path, op=op, decision="inserted",
            reason=f"flatten -> Linear after safe subsampling: the {c}x{h}x{w} map is resized back to "
                   f"{h}x{w} when σ changes its size")))
