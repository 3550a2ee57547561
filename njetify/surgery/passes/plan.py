"""Pass ``plan``: where to subsample safely, which sites share a σ source, which heads need a guard.

The rewrite happens on modules, so every call of one module (or of one functional op in
one module's forward) must get the same treatment: sites that share a *rewrite key* but
landed in merge groups that need different paddings or strides keep their stride;
otherwise their groups share one σ source.
"""

from __future__ import annotations

from collections import defaultdict

from ..analysis.guards import find_guards
from ..analysis.lineage import group_sites, lineages
from ..analysis.sites import GuardSite, Plan, Site, find_sites, owned_in_order, owner_nodes
from ..analysis.trace import try_trace
from ..analysis.upsampling import UpsampleResolver
from ..context import SurgeryContext
from ..robust import attempt


def plan_pass(ctx: SurgeryContext) -> None:
    """Fill ``ctx.plan``: the sites of every traced region, their groups and the guards (safe mode only)."""
    plan = ctx.plan = Plan()
    sub = ctx.recipe.subsample
    if sub.mode != "safe":
        return
    regions = ctx.analysis.regions
    for region in regions:
        plan.sites += find_sites(region, ctx.recipe, len(plan.sites), sub.where == "every_layer", ctx.failures)
    keys = _rewrite_keys(ctx, plan)
    plan.upsampling = UpsampleResolver(ctx.analysis.jit_traced)
    unguarded: dict[str, GuardSite] = {}
    while True:  # an unguardable head keeps the strides feeding it; that can change the groups
        attempt("the merge analysis", lambda: group_sites(regions, plan.sites, plan.upsampling),
                lambda why: _keep_all(plan, why), ctx.failures)
        _one_treatment_per_key(plan, keys)
        plan.guards = [g for region in regions for g in _guards(region, plan, ctx.failures)]
        for g in plan.guards:
            if g.reason is not None:
                unguarded.setdefault(g.path, g)
        if not _keep_strides_of_unguarded(plan):
            break
    plan.guards = [g for g in plan.guards if g.reason is None] + list(unguarded.values())
    plan.groups = {}
    for s in plan.sites:
        if s.active:
            plan.groups.setdefault(s.group, []).append(s)


def _keep_all(plan: Plan, why: str) -> None:
    for s in plan.sites:
        if s.active:
            s.active, s.reason = False, f"{why}: stride kept"


def _guards(region, plan: Plan, failures: list) -> list[GuardSite]:
    """The heads of ``region``; when its lineages cannot be computed, every site keeps its stride."""
    lin = attempt(f"the lineage analysis of {region.prefix or 'the model'}", lambda: lineages(region, plan.sites, plan.upsampling.lineage_of),
                  lambda why: _keep_all(plan, why), failures)
    return [] if lin is None else find_guards(region, lin, failures)


def _keep_strides_of_unguarded(plan: Plan) -> bool:
    """Deactivate every site in the lineage of an unguardable head (and its group); True if any was."""
    changed = False
    for g in plan.guards:
        if g.reason is None:
            continue
        region = g.region
        lin = lineages(region, plan.sites, plan.upsampling.lineage_of).get(g.flatten) or ()
        ids = {el for el in lin if isinstance(el, int)}
        groups = {s.group for s in plan.sites if s.id in ids}
        for s in plan.sites:
            if s.active and (s.id in ids or s.group in groups):
                s.active = False
                s.reason = f"feeds {g.path}, which cannot be guarded ({g.reason}): stride kept"
                changed = True
    return changed


def _rewrite_keys(ctx: SurgeryContext, plan: Plan) -> dict[int, tuple]:
    """``site id -> key``: the module path, or ``(owner, index)`` of a functional op in the owner's
    own forward. Owners whose forward does not trace on its own keep their functional sites."""
    keys: dict[int, tuple] = {}
    per_owner: dict[str, list[Site]] = defaultdict(list)
    for s in plan.sites:
        if s.owner is None:
            keys[s.id] = ("module", s.path)
        else:
            per_owner[s.owner].append(s)
    plan.owner_graphs = {}
    for owner, sites in per_owner.items():
        graph, _, why = try_trace(ctx.module(owner))
        count = len(owner_nodes(graph)) if graph is not None else 0
        if graph is None or count == 0:
            for s in sites:
                s.active, s.reason = False, f"the forward of {owner or 'the model'} does not trace on its own ({why}): stride kept"
            continue
        plan.owner_graphs[owner] = graph
        index = {id(n): i % count for i, n in enumerate(owned_in_order(sites[0].region, owner))}
        for s in sites:
            s.index = index[id(s.node)]
            keys[s.id] = ("op", owner, s.index)
    return keys


def _one_treatment_per_key(plan: Plan, keys: dict[int, tuple]) -> None:
    """Sites with one key must be rewritten alike: equal stride and padding (else all keep their
    stride); their groups then share a σ source (``plan.source_of``: group → representative group)."""
    by_key: dict[tuple, list[Site]] = defaultdict(list)
    for s in plan.sites:
        by_key[keys.get(s.id, ("site", s.id))].append(s)
    parent: dict[int, int] = {}

    def find(g):
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    bad_groups: dict[int, str] = {}
    for key, sites in by_key.items():
        if len(sites) < 2:
            continue
        what = key[1] if key[0] == "module" else f"{key[1] or 'the model'}'s forward"
        if any(not s.active for s in sites) or len({(s.stride, s.align) for s in sites}) > 1:
            for s in sites:
                bad_groups.setdefault(s.group, f"{what} runs at several places that need different subsampling: "
                                               "stride kept")
            continue
        root = find(sites[0].group)
        for s in sites[1:]:
            other = find(s.group)
            if other != root:
                parent[other] = root
    for s in plan.sites:
        if s.active and s.group in bad_groups:
            s.active, s.reason = False, bad_groups[s.group]
    plan.source_of = {s.group: find(s.group) for s in plan.sites}
