"""Pass ``subsample``: strided ops run at stride 1, followed by a SafeSubsample driven by σ (DESIGN §4).

The change lives in the modules, so every way into the model (``forward``, timm's
``forward_features``, an smp encoder, a feature extractor) sees it:

* a strided N-Jet layer runs at stride 1 and carries the subsampling as its ``subsample`` child;
* another strided ``nn.Conv2d`` (a 1×1 shortcut) becomes a :class:`SubsampledConv2d` with the
  same ``weight``/``bias``;
* a strided pool module becomes a :class:`SafePool2d`;
* a functional pool or a ``x[..., ::2, ::2]`` in some module's ``forward`` makes that module
  (its *owner*) run a traced forward in which the op calls a new child module.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from ...layers import NJetConv2d, SafePool2d, SafeSubsample, SubsampledConv2d, carries_sigma
from ...layers.traced import traced_base
from ..analysis.pool_specs import spec_from_module
from ..analysis.sites import Site, owner_nodes
from ..context import SurgeryContext
from ..decisions import Conversion, Retraced, Subsampling
from ..util import free_name
from .convs import describe_conv


def subsample_pass(ctx: SurgeryContext) -> None:
    """Apply ``ctx.plan``; one :class:`~njetify.surgery.decisions.Subsampling` per site (made safe, or kept
    with the reason), also in ``ctx.subsampled``."""
    plan, sub = ctx.plan, ctx.recipe.subsample
    ctx.subsampled = []
    if sub.mode != "safe":
        return
    sources: dict[int, tuple] = {}
    for g in sorted(plan.groups, key=lambda g: min(s.id for s in plan.groups[g])):
        root = plan.source_of.get(g, g)
        if root not in sources:
            members = [s for h, sites in plan.groups.items() if plan.source_of.get(h, h) == root for s in sites]
            sources[root] = _source(ctx, members)
    done: dict[tuple, SafeSubsample] = {}
    by_owner: dict[str, list[tuple[Site, SafeSubsample]]] = defaultdict(list)
    for g, group in plan.groups.items():
        source, source_path = sources[plan.source_of.get(g, g)]
        for s in group:
            if source is None:
                s.active, s.reason = False, "no N-Jet layer upstream to take σ from: stride kept"
                continue
            key = (s.path,) if s.owner is None else (s.owner, s.index)
            if key in done:  # another call of the same module: it already carries its subsampling
                _report(ctx, s, "subsampled", source_path, done[key])
                continue
            r = sub.r if s.stride > 1 or sub.r != "auto" else 1.0
            ss = SafeSubsample(source, stride=max(s.stride, 1), r=r, interpolation=sub.interpolation,
                               source_name=source_path, align=s.align)
            if s.owner is not None:
                by_owner[s.owner].append((s, ss))
            elif not _swap(ctx, s, ss):
                continue
            done[key] = ss
            _report(ctx, s, "subsampled", source_path, ss)
    for owner, edits in by_owner.items():
        _retrace_owner(ctx, owner, edits)
    for s in plan.sites:
        if not s.active and s.stride != 1:
            _decide(ctx, s, "kept", s.reason)
    _rows_outside_graphs(ctx, {s.path for s in plan.sites})


def _source(ctx: SurgeryContext, sites: list[Site]):
    """The σ source of sites that share one: the first of them that is a σ layer, else the
    nearest σ layer upstream of the first site. ``(None, None)`` when there is none."""
    order = {id(n): i for s in sites for i, n in enumerate(s.region.graph.nodes) if n is s.node}
    sites = sorted(sites, key=lambda s: (s.region.prefix, order.get(id(s.node), 0)))
    for s in sites:
        if s.owner is None and carries_sigma(ctx.module(s.path)):
            return ctx.module(s.path), s.path
    first = sites[0]
    seen, frontier = set(), list(first.node.all_input_nodes)
    while frontier:
        nxt = []
        for n in frontier:
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module":
                path = first.region.full_path(n.target)
                if carries_sigma(ctx.module(path)):
                    return ctx.module(path), path
            nxt += n.all_input_nodes
        frontier = nxt
    return None, None


def _swap(ctx: SurgeryContext, s: Site, ss: SafeSubsample) -> bool:
    """Rewrite the module of a module site; False (and the site kept) when it cannot be."""
    m = ctx.module(s.path)
    if s.op == "pool":
        ctx.rewriter.replace(s.path, SafePool2d(s.spec, ss).train(m.training))
        return True
    if isinstance(m, NJetConv2d):
        m.stride = 1
        m.subsample = ss.train(m.training)
        return True
    if type(m) is nn.Conv2d:
        ss.train(m.training)
        ctx.rewriter.replace(s.path, SubsampledConv2d.from_conv(m, ss))
        return True
    s.active, s.reason = False, f"{type(m).__name__} has its own forward: stride kept"
    return False


def _retrace_owner(ctx: SurgeryContext, owner: str, edits: list[tuple[Site, SafeSubsample]]) -> None:
    """Give the module at ``owner`` a traced forward in which each functional site calls a new child."""
    module = ctx.module(owner)
    graph = ctx.plan.owner_graphs[owner]
    nodes = owner_nodes(graph)
    names = []
    for s, ss in edits:
        local = nodes[s.index]
        child = ss if s.op == "slice" else SafePool2d(s.spec, ss)
        name = free_name(module, "njet_subsample")
        ctx.rewriter.add_child(module, name, child.train(module.training))
        with graph.inserting_after(local):
            new = graph.call_module(name, (local.args[0],))
        local.replace_all_uses_with(new)
        graph.erase_node(local)
        names.append(name)
    graph.lint()
    cls = traced_base(module).__name__
    ctx.rewriter.retrace(module, graph)
    ops = ", ".join(sorted({s.op for s, _ in edits}))
    ctx.decide(Retraced(
        owner or "<model>", op=cls,
        reason=f"its forward subsamples with a functional op ({ops}): that op now calls "
               f"{', '.join(names)}; forward replaced by a traced one, class and methods kept",
    ))


def _report(ctx: SurgeryContext, s: Site, action: str, source_path: str, ss: SafeSubsample) -> None:
    reason = f"σ from {source_path}"
    if s.align:
        reason += f"; stride-1 output padded by {s.align} px to match its merge"
    _decide(ctx, s, action, reason, source=source_path, r=ss.r, factor=ss.factor, group=s.group, align=s.align)


def _decide(ctx: SurgeryContext, s: Site, action: str, reason: str | None, **subsampled) -> None:
    """Record the decision about site ``s`` (its op as the conv pass described it, for a conv)."""
    if s.spec is not None:
        op, kernel = s.spec.describe(), s.spec.kernel
    elif s.op == "conv":
        conv = next(iter(ctx.decided(Conversion, s.path)), None)
        op, kernel = (conv.op if conv else "conv"), (conv.kernel if conv else None)
    elif s.op == "slice":
        op, kernel = f"slice ::{s.stride}", None
    else:
        op, kernel = "pool", None
    ctx.subsampled.append(ctx.decide(Subsampling(s.path, op=op, decision=action, kernel=kernel,
                                                 stride=s.stride or None, reason=reason, **subsampled)))


def subsample_done(ctx: SurgeryContext) -> str | None:
    """The ``subsample`` pass's ``ensures``: in safe mode every planned site that is active or strided has a
    decision (made safe, or kept with the reason); None when so, else the sites left."""
    if ctx.recipe.subsample.mode != "safe":
        return None
    decided = {d.path for d in ctx.subsampled or ()}
    left = [s.path for s in ctx.plan.sites if (s.active or s.stride != 1) and s.path not in decided]
    if not left:
        return None
    return f"{len(left)} planned subsampling site(s) were left without a decision ({', '.join(left[:3])})"


def _rows_outside_graphs(ctx: SurgeryContext, covered: set[str]) -> None:
    """Strided convs / pools the graphs do not reach (module swap, opaque leaves) keep their stride."""
    why = {"fx": "inside a module that is not traced through",
           "fx-partial": "outside the traced parts of the model",
           "swap": "the model does not trace (module swap)"}[ctx.analysis.mode]
    for path, m in ctx.model.named_modules():
        if path in covered or isinstance(m, (SafeSubsample, SafePool2d)) or not path or getattr(m, "transposed", False):
            continue  # a transposed conv's stride upsamples
        stride = getattr(m, "stride", 1)
        stride = stride if isinstance(stride, int) else max(stride) if stride else 1
        if stride <= 1:
            continue
        if isinstance(m, nn.Conv2d) or carries_sigma(m):
            conv = next(iter(ctx.decided(Conversion, path)), None)
            op = conv.op if conv else describe_conv(m)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            spec = spec_from_module(m)
            op = spec if isinstance(spec, str) else spec.describe()
        else:
            continue
        ctx.subsampled.append(ctx.decide(Subsampling(path, op=op, decision="kept", stride=stride,
                                                     reason=f"{why}: stride kept")))

