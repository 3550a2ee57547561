"""Where to subsample safely, and which sites must share a σ source (DESIGN §4).

Every strided conv / pool in a traced graph is a *site*. Each tensor carries a
*lineage*: the sites it went through since the input. Where tensors meet (add,
cat, mul, ...) their lineages must agree for all σ: sites at the same position
are merged into one group (one σ source, one size); branches that subsample a
different number of times cannot agree, so those sites keep their stride.
Global pools and Linear layers end a lineage (their output size is fixed);
``interpolate(x, size=y.shape...)`` takes ``y``'s lineage.
"""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..layers._checks import conv_kind
from .context import Region, SurgeryContext
from .pools import PoolSpec, functional_kind, spec_from_module, spec_from_node


@dataclass
class Site:
    """One place that subsamples (or, with ``where="every_layer"``, one N-Jet layer)."""

    id: int
    region: Region
    node: fx.Node
    path: str
    op: str  # "conv" | "pool" | "fpool"
    stride: int
    offset: int  # stride-1 output side minus input side, in pixels
    spec: PoolSpec | None = None
    active: bool = True
    reason: str | None = None
    group: int = -1
    align: int = 0  # right/bottom pixels added so all sites of a group have equal sides


@dataclass
class Guard:
    """A flatten of a subsampled map feeding a Linear layer."""

    region: Region
    node: fx.Node  # the flatten's input
    flatten: fx.Node
    in_features: int
    size: tuple[int, int] | None


@dataclass
class Plan:
    sites: list[Site] = field(default_factory=list)
    guards: list[Guard] = field(default_factory=list)
    groups: dict[int, list[Site]] = field(default_factory=dict)


class _Size:
    """Lineage of a value derived from a tensor's shape."""

    __slots__ = ("lin",)

    def __init__(self, lin):
        self.lin = lin


_GLOBAL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.AdaptiveAvgPool1d)
_GLOBAL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear, torch.mean, torch.amax, torch.sum}
_REDUCE_METHODS = {"mean", "amax", "amin", "sum", "std", "var", "max", "min", "logsumexp"}
_FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def plan_pass(ctx: SurgeryContext) -> None:
    """Find the sites, group them at merges and find flattens that need a guard."""
    sub = ctx.recipe.subsample
    plan = Plan()
    ctx.state["plan"] = plan
    if sub.mode != "safe":
        return
    every = sub.where == "every_layer"
    for region in ctx.regions:
        for node in region.gm.graph.nodes:
            site = _site(ctx, region, node, len(plan.sites), every)
            if site is not None:
                plan.sites.append(site)
    by_node = {id(s.node): s for s in plan.sites if s.active}
    parent = {s.id: s.id for s in plan.sites}
    for region in ctx.regions:
        _group_region(region, by_node, parent)
    for s in plan.sites:
        s.group = _find(parent, s.id)
        if s.active:
            plan.groups.setdefault(s.group, []).append(s)
    for group in plan.groups.values():
        top = max(s.offset for s in group)
        for s in group:
            s.align = top - s.offset
    for region in ctx.regions:
        lin = _lineages(region, by_node, parent)
        plan.guards += _guards(region, lin)


def _site(ctx, region: Region, node: fx.Node, sid: int, every: bool) -> Site | None:
    if node.op == "call_module":
        m = region.gm.get_submodule(node.target)
        path = region.full_path(node.target)
        if isinstance(m, nn.Conv2d):
            return _conv_site(ctx, region, node, m, path, sid, every)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            spec = spec_from_module(m)
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]
            if isinstance(spec, str):
                return None if stride == 1 else Site(sid, region, node, path, "pool", stride, 0, None, False, spec)
            return None if spec.stride == 1 else Site(sid, region, node, path, "pool", spec.stride, spec.offset, spec)
        return None
    if functional_kind(node) is not None:
        spec = spec_from_node(node)
        owner = _owner(node)
        path = f"{region.full_path(owner) if owner else region.prefix or '<model>'}:{node.name}"
        if isinstance(spec, str):
            return Site(sid, region, node, path, "fpool", 0, 0, None, False, spec)
        return None if spec.stride == 1 else Site(sid, region, node, path, "fpool", spec.stride, spec.offset, spec)
    return None


def _conv_site(ctx, region, node, m: nn.Conv2d, path: str, sid: int, every: bool) -> Site | None:
    stride = m.stride[0]
    kind = conv_kind(m)
    njet = kind == "ok" and not ctx.recipe.settings_for(path).skip
    if m.stride[0] != m.stride[1]:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, f"non-square stride {m.stride}")
    if stride == 1 and not (every and njet):
        return None
    k, d = m.kernel_size, m.dilation
    if kind is not None and "own forward" in kind:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, kind)
    if type(m).__name__ == "Conv2dSame" and stride > 1:
        reason = "TF-SAME padding at stride > 1 is not a stride-1 conv sampled every 2nd pixel: stride kept"
        return Site(sid, region, node, path, "conv", stride, 0, None, False, reason)
    pad = (0, 0) if m.padding == "valid" else m.padding
    if k[0] != k[1] or d[0] != d[1] or isinstance(pad, str) or pad[0] != pad[1]:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, "not a square kernel/padding")
    return Site(sid, region, node, path, "conv", stride, 2 * pad[0] - d[0] * (k[0] - 1))


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


# ------------------------------------------------------------------ lineages
def _find(parent: dict, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _group_region(region: Region, by_node: dict, parent: dict) -> None:
    """Union sites that meet; deactivate sites of branches that cannot agree (to a fixed point)."""
    while True:
        changed = False
        lin = _lineages(region, by_node, parent)
        for node, lins in lin.pop("__merges__"):
            lins = [tuple(_find(parent, i) for i in lv) for lv in lins]
            if len(set(lins)) == 1:
                continue
            if len({len(lv) for lv in lins}) == 1:
                for pos in zip(*lins):
                    for other in pos[1:]:
                        a, b = _find(parent, pos[0]), _find(parent, other)
                        if a != b:
                            parent[b] = a
                            changed = True
            else:
                first = min(_first_diff(lins[0], lv) for lv in lins[1:])
                for lv in lins:
                    for sid in lv[first:]:
                        changed |= _deactivate(by_node, sid, parent,
                                               f"branches meeting at '{node.name}' subsample a different number of times")
        # every group must share one stride
        groups: dict[int, list[Site]] = {}
        for s in by_node.values():
            if s.active and s.region is region:
                groups.setdefault(_find(parent, s.id), []).append(s)
        for g in groups.values():
            if len({s.stride for s in g}) > 1:
                for s in g:
                    changed |= _deactivate(by_node, s.id, parent, "branches meeting here have different strides")
        if not changed:
            return


def _first_diff(a: tuple, b: tuple) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _deactivate(by_node: dict, sid: int, parent: dict, reason: str) -> bool:
    root = _find(parent, sid)
    hit = False
    for s in list(by_node.values()):
        if s.active and _find(parent, s.id) == root:
            s.active, s.reason = False, reason
            hit = True
    return hit


def _lineages(region: Region, by_node: dict, parent: dict) -> dict:
    """``node -> lineage`` (tuple of site ids, a ``_Size``, or None for fixed-size values)."""
    lin: dict = {"__merges__": []}
    for node in region.gm.graph.nodes:
        if node.op == "placeholder":
            lin[node] = ()
            continue
        if node.op in ("get_attr", "output"):
            lin[node] = None
            continue
        ins = node.all_input_nodes
        spatial = [lin[i] for i in ins if isinstance(lin.get(i), tuple)]
        sizes = [lin[i] for i in ins if isinstance(lin.get(i), _Size)]
        if _is_size(node):
            lin[node] = _Size(spatial[0] if spatial else (sizes[0].lin if sizes else None))
        elif not spatial:
            lin[node] = sizes[0] if sizes else None
        elif _is_global(node, region):
            lin[node] = None
        elif _is_interp(node, region) and sizes:
            lin[node] = sizes[0].lin
        else:
            canon = {tuple(_find(parent, i) for i in lv) for lv in spatial}
            if len(canon) > 1:
                lin["__merges__"].append((node, spatial))
            site = by_node.get(id(node))
            lin[node] = spatial[0] + ((site.id,) if site is not None and site.active else ())
    return lin


def _is_size(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] == "shape"
    return node.op == "call_method" and node.target in ("size", "dim")


def _is_interp(node: fx.Node, region: Region) -> bool:
    if node.op == "call_function":
        return node.target in (F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
    if node.op == "call_module":
        return isinstance(region.gm.get_submodule(node.target), nn.Upsample)
    return False


def _is_global(node: fx.Node, region: Region) -> bool:
    if node.op == "call_module":
        return isinstance(region.gm.get_submodule(node.target), _GLOBAL_MODULES)
    if node.op == "call_function" and node.target in _GLOBAL_FUNCTIONS:
        return node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear) or _spatial_dims(node)
    if node.op == "call_method" and node.target in _REDUCE_METHODS:
        return _spatial_dims(node)
    return False


def _spatial_dims(node: fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return True
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return any(d in (2, 3, -1, -2) for d in dims if isinstance(d, int))


# -------------------------------------------------------------------- guards
def _is_flatten(node: fx.Node, region: Region) -> bool:
    if node.op == "call_function":
        return node.target in _FLATTEN_FUNCTIONS
    if node.op == "call_method":
        return node.target in _FLATTEN_METHODS
    if node.op == "call_module":
        return isinstance(region.gm.get_submodule(node.target), nn.Flatten)
    return False


def _guards(region: Region, lin: dict) -> list[Guard]:
    out: list[Guard] = []
    seen: set = set()
    for node in region.gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = region.gm.get_submodule(node.target)
        if not isinstance(m, nn.Linear):
            continue
        cur = node.args[0] if node.args else None
        for _ in range(8):
            if not isinstance(cur, fx.Node):
                break
            if _is_flatten(cur, region):
                src = cur.args[0]
                if isinstance(src, fx.Node) and lin.get(src) and id(src) not in seen:
                    seen.add(id(src))
                    meta = src.meta.get("tensor_meta")
                    size = tuple(meta.shape[-2:]) if meta is not None and len(meta.shape) == 4 else None
                    out.append(Guard(region, src, cur, m.in_features, size))
                break
            if len(cur.all_input_nodes) != 1 or cur.op == "placeholder" or cur.target is operator.getitem:
                break
            cur = cur.all_input_nodes[0]
    return out
