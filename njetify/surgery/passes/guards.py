"""Pass ``guards``: a Linear behind a flatten of a subsampled map becomes a :class:`GuardedLinear`."""

from __future__ import annotations

from torch import nn

from ...layers import GuardedLinear
from ..context import SurgeryContext
from ..report import ReportRow


def guard_pass(ctx: SurgeryContext) -> None:
    """Guard every ``flatten → Linear`` head of the plan that reads a map whose size follows σ."""
    if not any(ctx.plan.groups.values()):
        return
    for g in ctx.plan.guards:
        linear = ctx.module(g.path)
        if type(linear) is not nn.Linear:
            continue
        if g.map_shape is None:
            ctx.report.add(ReportRow(
                kind="guard", path=g.path, op=f"Linear({g.in_features})", action="kept",
                reason="flatten -> Linear after safe subsampling, but the map's channels are unknown: not "
                       "guarded (give example_inputs); its input width changes when σ does"))
            continue
        ctx.rewriter.replace(g.path, GuardedLinear.from_linear(linear, g.map_shape))
        c, h, w = g.map_shape
        ctx.report.add(ReportRow(
            kind="guard", path=g.path, op=f"Linear({g.in_features})", action="inserted",
            reason=f"flatten -> Linear after safe subsampling: the {c}x{h}x{w} map is resized back to "
                   f"{h}x{w} when σ changes its size"))
