"""Pass ``upsample``: fixed upsamplings that meet an encoder map resize to its size (DESIGN §9).

The plan (:class:`~njetify.surgery.analysis.upsampling.UpsampleResolver`) chose the
upsamplings and the forward (scope) each is rewritten in. Here every scope is traced again
(after the conv and subsample passes), each upsampling becomes a call of a
:class:`~njetify.layers.SafeUpsample` that takes its partner as a second input, and the scope
module gets the edited forward (its class, methods and module paths kept):

* ``F.interpolate(x, scale_factor=…)`` (or ``size=`` computed from a map's shape by arithmetic,
  ``(h // 4, w // 4)``) → a new child ``njet_upsample_<i>`` of the module that made the call;
* an ``nn.Upsample`` → a SafeUpsample at the same path (without a partner it upsamples as before);
* a strided transposed conv → followed by a SafeUpsample that matches the partner's size
  (bilinear; the identity while the sizes agree, so exact at σ₀).
"""

from __future__ import annotations

from torch import fx, nn

from ...layers.safe_upsample import SafeUpsample
from ..analysis.upsampling import (
    ScopeGroup, call_stack, find_node, hoist, interp_settings, node_key, site_path, trace_scope, upsample_kind,
)
from ..context import SurgeryContext
from ..decisions import Retraced, Upsampling
from ..util import free_name


def upsample_pass(ctx: SurgeryContext) -> None:
    """Rewrite the planned upsamplings; one :class:`~njetify.surgery.decisions.Upsampling` per upsampling
    (follows, or kept with the reason), also in ``ctx.upsampled``."""
    ctx.upsampled = []
    resolver = getattr(ctx.plan, "upsampling", None)
    if ctx.recipe.subsample.mode != "safe" or resolver is None:
        return
    for group in sorted(resolver.groups, key=lambda g: -len(g.region.full_path(g.scope).split("."))):
        _rewrite(ctx, group)
    for node, (why, merge, region) in resolver.failed.items():
        ctx.upsampled.append(ctx.decide(Upsampling(
            site_path(region, node), op=_op_of(node), decision="kept",
            reason=f"meets another map at '{merge.name}' but {why}: fixed factor kept")))


def _rewrite(ctx: SurgeryContext, group: ScopeGroup) -> None:
    region, scope = group.region, group.scope
    module = region.root.get_submodule(scope) if scope else region.root
    graph = trace_scope(region.root, scope, group.inline, region.prefix in ctx.analysis.jit_traced)
    names = []
    # find every site before editing any: an edit removes a call, which would shift the occurrence
    # index of the calls after it in the keys of the other sites
    found = []
    for site in group.sites:
        u = find_node(graph, node_key(site.node, region.graph, scope))
        r = find_node(graph, node_key(site.ref, region.graph, scope))
        if u is None or r is None:  # the plan found them: the model changed under the passes
            raise RuntimeError(f"upsample pass: '{site.node.name}' or its partner is gone from the forward of "
                               f"{region.full_path(scope) or 'the model'}")
        found.append((u, r))
    replaced: dict[fx.Node, fx.Node] = {}  # an edited upsampling → the node that now gives its output
    for site, (u, r) in zip(group.sites, found):
        r = replaced.get(r, r)
        order = {n: i for i, n in enumerate(graph.nodes)}
        if order[r] > order[u]:
            hoist(graph, r, u)
        path, what, out = _edit(ctx, region, scope, module, graph, u, r)
        replaced[u] = out
        names.append(path)
        ref = "the model's input" if site.ref.op == "placeholder" else f"'{site.ref.name}'"
        ctx.upsampled.append(ctx.decide(Upsampling(
            path, op=what, decision="follows",
            reason=f"resizes to the size of {ref}, the map it meets at '{site.merge.name}'",
            scope=region.full_path(scope) or "<model>", partner=site.ref.name)))
    graph.lint()
    ctx.rewriter.retrace(module, graph)
    through = "every module" if group.inline is None else (", ".join(sorted(group.inline)) or "none")
    ctx.decide(Retraced(
        region.full_path(scope) or "<model>", op=type(module).__name__,
        reason=f"its upsampling(s) ({', '.join(names)}) resize to the maps they merge with; forward replaced "
               f"by a traced one (modules traced through: {through}), class and methods kept"))


def _edit(ctx, region, scope: str, module: nn.Module, graph: fx.Graph, u: fx.Node, r: fx.Node) -> tuple[str, str, fx.Node]:
    """Make ``u`` resize to ``r``'s size; returns (report path, op text, the node giving ``u``'s output now)."""
    kind = upsample_kind(u, module)
    if kind == "module":
        full = region.full_path(_join(scope, u.target))
        old = ctx.module(full)
        ctx.rewriter.replace(full, SafeUpsample.from_upsample(old))
        u.args = (u.args[0], r)
        return full, f"{type(old).__name__} ×{_fmt(old.scale_factor)} {old.mode}", u
    owner_rel = call_stack(u)[-1] if call_stack(u) else ""
    owner = module.get_submodule(owner_rel) if owner_rel else module
    if kind == "function":
        settings = interp_settings(u)
        new_mod, first = SafeUpsample(**settings, source="interpolate"), u.args[0] if u.args else u.kwargs["input"]
        factor = settings["scale_factor"]
        what = f"interpolate {'to a size computed from a shape' if factor is None else '×' + _fmt(factor)} {settings['mode']}"
    else:
        new_mod, first = SafeUpsample(None, "bilinear", False, source=type(module.get_submodule(u.target)).__name__), u
        what = f"{type(module.get_submodule(u.target)).__name__} s{_fmt(module.get_submodule(u.target).stride)}"
    name = free_name(owner, "njet_upsample")
    ctx.rewriter.add_child(owner, name, new_mod.train(owner.training))
    with graph.inserting_after(u):
        new = graph.call_module(_join(owner_rel, name), (first, r))
    if kind == "function":
        u.replace_all_uses_with(new)
        graph.erase_node(u)
        path = f"{region.full_path(_join(scope, owner_rel)) or '<model>'}:{u.name}"
    else:
        u.replace_all_uses_with(new, delete_user_cb=lambda n: n is not new)
        path = region.full_path(_join(scope, u.target))
    return path, what, new


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a and b else (a or b)


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(_fmt(x) for x in v) if len(set(v)) > 1 else _fmt(v[0])
    return f"{float(v):g}"


def _op_of(node: fx.Node) -> str:
    return "interpolate" if node.op == "call_function" else str(node.target)
