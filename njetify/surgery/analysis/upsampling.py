"""Which fixed upsamplings can resize to the map they merge with, and where to rewrite them (DESIGN §9).

An *upsampling site* is a node of a traced region that upsamples by a fixed factor
(``F.interpolate(scale_factor=…)``, ``F.interpolate(size=(h // 4, w // 4))`` with ``h, w`` another
map's sides, an ``nn.Upsample``, a strided transposed conv) and whose
output meets a map of another lineage (its *partner*, ``ref``) at a merge, or is the model's
output (its partner is then the model's input). It is rewritten to resize to the partner's
size, in the forward of its *scope*: the innermost module whose forward sees both the
upsampling and the partner (the common part of their module call stacks). That forward is
traced again with the modules on the way to both inlined and every other module called as a
leaf, edited, and given to the scope module (:func:`njetify.layers.traced.retrace`).

Nodes are found again in a new trace by a *key* that does not depend on node names: a
placeholder's index, a module call's target and occurrence, or a function call's target,
owner module and occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from .lineage import is_interp
from .trace import NJetTracer, Region, is_leaf_type, jit_tracing


@dataclass
class UpSite:
    """One upsampling made to follow its partner: ``node`` (in ``region``), its partner ``ref``,
    the ``merge`` node where they meet, the ``scope`` path (relative to the region root)."""

    region: Region
    node: fx.Node
    ref: fx.Node
    merge: fx.Node
    scope: str
    inline: set[str] = field(default_factory=set)


@dataclass
class ScopeGroup:
    """Upsampling sites rewritten in one forward: the scope, the modules traced through, the sites."""

    region: Region
    scope: str
    inline: set[str]
    sites: list[UpSite] = field(default_factory=list)


def call_stack(node: fx.Node) -> list[str]:
    """Module paths (relative to the traced root) whose forwards are running when ``node`` runs,
    outermost first; a module call is not in its own stack."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]
    return paths


def upsample_kind(node: fx.Node, root: nn.Module) -> str | None:
    """``"function"``, ``"module"`` (nn.Upsample), ``"transposed"`` for an upsampling node, else None."""
    if node.op == "call_function" and is_interp(node, None):
        return "function"
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        if isinstance(m, nn.Upsample):
            return "module"
        if isinstance(m, nn.ConvTranspose2d) or getattr(m, "transposed", False):
            return "transposed"
    return None


def site_path(region: Region, node: fx.Node) -> str:
    """Report path of an upsampling node: the module path, or ``owner:node`` for a function call."""
    if node.op == "call_module":
        return region.full_path(node.target)
    stack = call_stack(node)
    return f"{region.full_path(stack[-1] if stack else '') or '<model>'}:{node.name}"


def _rel(path: str, scope: str) -> str:
    if not scope:
        return path
    return "" if path == scope else path[len(scope) + 1:]


def _within(path: str, scope: str) -> bool:
    return not scope or path == scope or path.startswith(scope + ".")


def node_key(node: fx.Node, graph: fx.Graph, scope: str = "") -> tuple:
    """A key of ``node`` that finds it again in a trace of the module at ``scope`` (see module doc)."""
    if node.op == "placeholder":
        return ("placeholder", [n for n in graph.nodes if n.op == "placeholder"].index(node))
    owner = call_stack(node)[-1] if call_stack(node) else ""
    target = node.target if node.op == "call_module" else (node.target, _rel(owner, scope))

    def same(n):
        if n.op != node.op:
            return False
        if n.op == "call_module":
            return n.target == node.target
        o = call_stack(n)[-1] if call_stack(n) else ""
        return n.target == node.target and o == owner

    seen = [n for n in graph.nodes if same(n) and _within(call_stack(n)[-1] if call_stack(n) else "", scope)]
    tgt = _rel(target, scope) if node.op == "call_module" else target
    return (node.op, tgt, seen.index(node))


def find_node(graph: fx.Graph, key: tuple) -> fx.Node | None:
    """The node of ``graph`` (a trace of the scope module) with ``key``, or None."""
    if key[0] == "placeholder":
        ph = [n for n in graph.nodes if n.op == "placeholder"]
        return ph[key[1]] if key[1] < len(ph) else None
    op, target, k = key
    if op == "call_module":
        hits = [n for n in graph.nodes if n.op == op and n.target == target]
    else:
        fn, owner = target
        hits = [n for n in graph.nodes if n.op == op and n.target == fn
                and (call_stack(n)[-1] if call_stack(n) else "") == owner]
    return hits[k] if k < len(hits) else None


class _ScopeTracer(NJetTracer):
    """Traces through the modules of ``inline`` (paths relative to the traced root), calls every other one."""

    def __init__(self, inline: set[str]):
        super().__init__()
        self.inline = inline

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_leaf_type(m) or type(m) in self.extra_leaves:  # njetify's modules and the converter table's
            return True
        return qualname not in self.inline


def trace_scope(root: nn.Module, scope: str, inline: set[str] | None, as_jit: bool) -> fx.Graph:
    """The graph of the module at ``scope`` with the modules ``inline`` (relative to ``root``) traced
    through (None: every module that is not a leaf, as for the analysis)."""
    module = root.get_submodule(scope) if scope else root
    if inline is None:
        tracer = NJetTracer()
    else:
        tracer = _ScopeTracer({_rel(p, scope) for p in inline if _within(p, scope) and p != scope})
    if as_jit:
        with jit_tracing():
            return tracer.trace(module)
    return tracer.trace(module)


def depends_on(node: fx.Node, other: fx.Node) -> bool:
    """True when ``node`` is computed from ``other`` (or is it)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is other:
            return True
        if n in seen:
            continue
        seen.add(n)
        todo += n.all_input_nodes
    return False


def hoist(graph: fx.Graph, ref: fx.Node, before: fx.Node) -> None:
    """Move ``ref`` and what it needs that runs after ``before`` to just before ``before``
    (``ref`` must not depend on ``before``)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    need, todo = set(), [ref]
    while todo:
        n = todo.pop()
        if n in need or order[n] < order[before]:
            continue
        need.add(n)
        todo += n.all_input_nodes
    for n in sorted(need, key=order.get):
        before.prepend(n)


def _interp_args_ok(node: fx.Node) -> str | None:
    """Why a functional interpolation cannot become a SafeUpsample (None when it can)."""
    kw = dict(node.kwargs)
    names = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
    kw.update({k: v for k, v in zip(names, node.args)})
    factor, size = kw.get("scale_factor"), kw.get("size")
    if factor is None and size is None:
        return "it has neither a size nor a scale factor"
    if factor is not None and (isinstance(factor, fx.Node) or _has_node(factor)):
        return "its scale factor is computed at run time"
    if kw.get("recompute_scale_factor") or kw.get("antialias"):
        return "recompute_scale_factor / antialias are not supported"
    if isinstance(kw.get("mode", "nearest"), fx.Node) or isinstance(kw.get("align_corners"), fx.Node):
        return "its mode is computed at run time"
    return None


def interp_settings(node: fx.Node) -> dict:
    """``scale_factor``, ``mode``, ``align_corners`` of a functional interpolation node (``scale_factor``
None for one to a size computed from another map's, ``interpolate(x, size=(h // 4, w // 4))``)."""
    kw = dict(node.kwargs)
    kw.update({k: v for k, v in zip(("input", "size", "scale_factor", "mode", "align_corners"), node.args)})
    return {"scale_factor": kw.get("scale_factor"), "mode": kw.get("mode", "nearest"),
            "align_corners": kw.get("align_corners")}


def _has_node(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_node(v) for v in value)
    return isinstance(value, fx.Node)


class UpsampleResolver:
    """Decides, merge by merge, which fixed upsamplings follow their partner (``lineage_of``),
    and groups them by the forward they are rewritten in (``groups``). ``failed``: node →
    ``(reason, merge node, region)`` for those that keep their fixed factor."""

    def __init__(self, jit_prefixes=()):
        self.jit = set(jit_prefixes)
        self.lineage_of: dict[fx.Node, tuple] = {}
        self.failed: dict[fx.Node, tuple[str, fx.Node, Region]] = {}
        self.groups: list[ScopeGroup] = []
        self._ok: dict[tuple, bool] = {}

    def resolve(self, region: Region, node: fx.Node, ref: fx.Node | None, merge: fx.Node, target: tuple) -> bool:
        """Make ``node`` resize to ``ref``'s size when it can (True); else record why (False)."""
        if node in self.lineage_of or node in self.failed:
            return False
        why = self._check(region, node, ref)
        if why is None:
            why = self._place(region, UpSite(region, node, ref, merge, ""))
        if why is not None:
            self.failed[node] = (why, merge, region)
            return False
        self.lineage_of[node] = target
        return True

    def _check(self, region: Region, node: fx.Node, ref: fx.Node | None) -> str | None:
        kind = upsample_kind(node, region.root)
        if kind is None:
            return "not an upsampling njetify can rewrite"
        if kind == "function" and _interp_args_ok(node):
            return _interp_args_ok(node)
        if kind == "module":
            m = region.module(node.target)
            if m.scale_factor is None or getattr(m, "recompute_scale_factor", None):
                return f"{type(m).__name__} without a plain scale factor"
        if ref is None:
            return (f"its output leaves the traced part '{region.prefix}': the size it must have is unknown")
        a, b = node.meta.get("tensor_meta"), ref.meta.get("tensor_meta")
        if a is not None and b is not None and tuple(a.shape[-2:]) != tuple(b.shape[-2:]):
            return f"its output {tuple(a.shape[-2:])} does not have the size of its partner {tuple(b.shape[-2:])}"
        if ref.op == "placeholder" and (a is None or b is None):
            return "it must restore the input size; give example_inputs so that njetify can check it does"
        if depends_on(ref, node):
            return "its partner is computed from it"
        return None

    def _place(self, region: Region, site: UpSite) -> str | None:
        """Put ``site`` into a scope group whose forward traces and holds it; None when placed."""
        su = call_stack(site.node)
        sr = [] if site.ref.op == "placeholder" else call_stack(site.ref)
        common = 0
        while common < min(len(su), len(sr)) and su[common] == sr[common]:
            common += 1
        why = "no module's forward sees both the upsampling and its partner"
        for depth in range(common, -1, -1):  # the innermost scope first, then outwards
            scope = su[depth - 1] if depth else ""
            inline = set(su[depth:]) | set(sr[depth:])
            why = self._join(region, site, scope, inline)
            if why is None:
                return None
        return self._join(region, site, "", None) if why is not None else None

    def _join(self, region: Region, site: UpSite, scope: str, inline: set[str] | None) -> str | None:
        """Add ``site`` at ``scope`` (merging the groups whose forwards overlap); None on success."""
        merged = [g for g in self.groups if g.region is region and _overlap(g, scope, inline)]
        for g in merged:
            old = scope
            if _within(scope, g.scope) and g.scope != scope and (g.inline is None or scope in g.inline):
                scope = g.scope
            inline = None if inline is None or g.inline is None else inline | g.inline | ({g.scope, old} - {""})
        if inline is not None:
            inline = {p for p in inline if p != scope}
        sites = [s for g in merged for s in g.sites] + [site]
        reason = self._feasible(region, scope, inline, sites)
        if reason is not None:
            return reason
        for s in sites:
            s.scope, s.inline = scope, inline
        self.groups = [g for g in self.groups if g not in merged] + [ScopeGroup(region, scope, inline, sites)]
        return None

    def _feasible(self, region: Region, scope: str, inline, sites: list[UpSite]) -> str | None:
        try:
            graph = trace_scope(region.root, scope, inline, region.prefix in self.jit)
        except Exception as e:  # noqa: BLE001 - a forward that does not trace here: try a wider scope
            return f"the forward of {region.full_path(scope) or 'the model'} does not trace ({type(e).__name__})"
        for s in sites:
            for n in (s.node, s.ref):
                if n.op == "placeholder" and scope:
                    return "its partner is the input of a module that is not the scope"
                if find_node(graph, node_key(n, region.graph, scope)) is None:
                    return f"'{n.name}' is not found again in the forward of {region.full_path(scope) or 'the model'}"
        return None


def _overlap(g: ScopeGroup, scope: str, inline: set[str] | None) -> bool:
    """True when the forward of ``g`` and the one at ``scope`` (tracing through ``inline``) share code."""
    if g.scope == scope:
        return True
    if g.inline is None and _within(scope, g.scope):
        return True
    if inline is None and _within(g.scope, scope):
        return True
    return (g.inline is not None and scope in g.inline) or (inline is not None and g.scope in inline)
