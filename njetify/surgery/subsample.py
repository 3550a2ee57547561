"""The subsample pass: strided ops run at stride 1, then a SafeSubsample driven by σ (DESIGN §4).

The new modules live in a ``safe_subsample`` ModuleDict of the traced (sub)model,
keyed by the site's module path with dots replaced by ``_``; a functional pool
becomes a :class:`StridelessPool2d` in ``stride1_pool``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..layers import SafeSubsample
from .context import SurgeryContext
from .convs import describe_conv
from .plan import Plan, Site
from .pools import StridelessPool2d, spec_from_module
from .report import ReportRow


def _is_sigma_source(m: nn.Module) -> bool:
    return isinstance(getattr(m, "log_sigma", None), nn.Parameter) and hasattr(m, "sigma")


def subsample_pass(ctx: SurgeryContext) -> None:
    """Apply the plan of :func:`njetify.surgery.plan.plan_pass`; one report row per site."""
    plan: Plan = ctx.state.get("plan") or Plan()
    sub = ctx.recipe.subsample
    covered: set[str] = set()
    touched = set()
    for group in plan.groups.values():
        source, source_path = _source(ctx, group)
        for s in group:
            if source is None:
                s.active, s.reason = False, "no N-Jet layer upstream to take σ from: stride kept"
                continue
            _apply(ctx, s, source, source_path, sub)
            touched.add(id(s.region))
    for s in plan.sites:
        covered.add(s.path)
        if not s.active and s.stride != 1:
            ctx.report.add(_row(ctx, s, "kept", s.reason))
    for region in ctx.regions:
        if id(region) in touched:
            region.gm.graph.lint()
            region.gm.recompile()
    if sub.mode == "safe":
        _rows_outside_graphs(ctx, covered)


def _source(ctx: SurgeryContext, group: list[Site]):
    """The σ source of a group: its first N-Jet site, else the nearest N-Jet layer upstream."""
    for s in sorted(group, key=lambda s: _order(s)):
        if s.node.op == "call_module":
            m = s.region.gm.get_submodule(s.node.target)
            if _is_sigma_source(m):
                return m, s.path
    first = min(group, key=_order)
    seen, frontier = set(), list(first.node.all_input_nodes)
    while frontier:
        nxt = []
        for n in frontier:
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module":
                m = first.region.gm.get_submodule(n.target)
                if _is_sigma_source(m):
                    return m, first.region.full_path(n.target)
            nxt += n.all_input_nodes
        frontier = nxt
    return None, None


def _order(s: Site) -> int:
    for i, n in enumerate(s.region.gm.graph.nodes):
        if n is s.node:
            return i
    return 0


def _apply(ctx: SurgeryContext, s: Site, source: nn.Module, source_path: str, sub) -> None:
    gm, node, graph = s.region.gm, s.node, s.region.gm.graph
    if s.op == "conv":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
        else:
            m.stride = 1
    elif s.op == "pool":
        ctx.set_module(s.path, StridelessPool2d(s.spec))
    else:
        pools = _container(gm, "stride1_pool")
        key = node.name
        pools[key] = StridelessPool2d(s.spec)
        with graph.inserting_after(node):
            new = graph.call_module(f"stride1_pool.{key}", (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        s.node = node = new
    subs = _container(gm, "safe_subsample")
    key = s.path.replace(".", "_").replace(":", "__")
    r = sub.r if s.stride > 1 or sub.r != "auto" else 1.0
    ss = SafeSubsample(source, stride=max(s.stride, 1), r=r, interpolation=sub.interpolation,
                       source_name=source_path)
    subs[key] = ss
    last = node
    with graph.inserting_after(last):
        if s.align:
            pad = graph.call_function(F.pad, (last, (0, s.align, 0, s.align)), {"mode": "replicate"})
            last = pad
    with graph.inserting_after(last):
        out = graph.call_module(f"safe_subsample.{key}", (last,))
    node.replace_all_uses_with(out, delete_user_cb=lambda u: u is not out and u is not last)
    reason = f"σ from {source_path}"
    if s.align:
        reason += f"; stride-1 output padded by {s.align} px to match its merge"
    row = ctx.report.add(_row(ctx, s, "subsampled", reason))
    row.extra.update(source=source_path, r=ss.r, factor=ss.factor, group=s.group, align=s.align,
                     module=f"{s.region.full_path('safe_subsample.' + key)}")
    if s.op == "conv" and s.path in ctx.rows:
        ctx.rows[s.path].extra["stride_moved_to"] = row.extra["module"]


def _container(gm: nn.Module, name: str) -> nn.ModuleDict:
    if not isinstance(getattr(gm, name, None), nn.ModuleDict):
        gm.add_module(name, nn.ModuleDict())
    return getattr(gm, name)


def _row(ctx: SurgeryContext, s: Site, action: str, reason: str | None) -> ReportRow:
    if s.spec is not None:
        op, kernel = s.spec.describe(), s.spec.kernel
    elif s.op == "conv":
        m = ctx.rows.get(s.path)
        op, kernel = (m.op if m else "conv"), (m.kernel if m else None)
    else:
        op, kernel = "pool", None
    return ReportRow(kind="subsample", path=s.path, op=op, action=action, kernel=kernel,
                     stride=s.stride or None, reason=reason)


def _rows_outside_graphs(ctx: SurgeryContext, covered: set[str]) -> None:
    """Strided convs / pools the graphs do not reach (module swap, opaque leaves) keep their stride."""
    why = {"fx": "inside a module that is not traced through",
           "fx-partial": "outside the traced parts of the model",
           "swap": "the model does not trace (module swap)"}[ctx.report.tracing.get("mode") or "swap"]
    for path, m in ctx.model.named_modules():
        if path in covered or isinstance(m, (SafeSubsample, StridelessPool2d)):
            continue
        stride = getattr(m, "stride", 1)
        stride = stride if isinstance(stride, int) else max(stride) if stride else 1
        if stride <= 1:
            continue
        if isinstance(m, nn.Conv2d) or hasattr(m, "log_sigma"):
            op = ctx.rows[path].op if path in ctx.rows else describe_conv(m)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            spec = spec_from_module(m)
            op = spec if isinstance(spec, str) else spec.describe()
        else:
            continue
        ctx.report.add(ReportRow(kind="subsample", path=path, op=op, action="kept", stride=stride,
                                 reason=f"{why}: stride kept"))
