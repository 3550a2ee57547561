"""Which sites must share a σ source: lineages of tensors through a traced graph (DESIGN §4).

Each tensor carries a *lineage*: the resizing steps it went through since the region's input —
the ids of active sites (their size follows σ) and fixed steps (a kept stride, an upsampling by
a fixed factor). Where tensors meet (add, cat, mul, ...) their lineages must agree for every σ:

* sites at the same position are merged into one group (one σ source, one size);
* branches that differ only in sites: the sites from the first difference on keep their stride;
* branches that differ in fixed steps (``interpolate(scale_factor=2)`` of a strided branch meeting
  its skip connection) agree only at the sizes the network was built for, so every site before
  the merge keeps its stride.

A dense output that was upsampled by a fixed factor is checked the same way against the input.

With a ``resolver`` (:class:`~njetify.surgery.analysis.upsampling.UpsampleResolver`), a branch
whose last resizing step is a fixed upsampling is first offered to it: where the upsampling can
be made to resize to the size of the map it meets (a :class:`~njetify.layers.SafeUpsample`),
its output takes the partner's lineage and the merge agrees for every σ.
Global pools and Linear layers end a lineage (their output size is fixed);
``interpolate(x, size=y.shape...)`` takes ``y``'s lineage.
"""

from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .sites import Site
from .trace import Region

_GLOBAL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.AdaptiveAvgPool1d)
_GLOBAL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear, torch.mean, torch.amax, torch.sum}
_REDUCE_METHODS = {"mean", "amax", "amin", "sum", "std", "var", "max", "min", "logsumexp"}


class _Size:
    """Lineage of a value derived from a tensor's shape."""

    __slots__ = ("lin",)

    def __init__(self, lin):
        self.lin = lin


def group_sites(regions: list[Region], sites: list[Site], resolver=None) -> dict[int, list[Site]]:
    """Union the sites that meet into groups (``site.group``), deactivate those that cannot agree,
    pad sites of a group to equal sides (``site.align``). Returns ``{group: active sites}``.
    ``resolver``: makes fixed upsamplings follow their merge partner where it can (module doc)."""
    by_node = {id(s.node): s for s in sites}
    parent = {s.id: s.id for s in sites}
    for region in regions:
        _group_region(region, by_node, parent, resolver)
    groups: dict[int, list[Site]] = {}
    for s in sites:
        s.group = _find(parent, s.id)
        if s.active:
            groups.setdefault(s.group, []).append(s)
    for group in groups.values():
        top = max(s.offset for s in group)
        for s in group:
            s.align = top - s.offset
    return groups


def lineages(region: Region, sites: list[Site], resolved: dict | None = None) -> dict:
    """``node -> lineage`` of every node of ``region`` after grouping (see :func:`group_sites`);
    ``resolved``: upsampling node → the lineage it now follows (the resolver's ``lineage_of``)."""
    by_node = {id(s.node): s for s in sites}
    parent = {s.id: s.group for s in sites}
    parent.update({g: g for g in set(parent.values())})
    lin = _lineages(region, by_node, parent, resolved)
    lin.pop("__merges__")
    return lin


# ------------------------------------------------------------------ lineages
def _find(parent: dict, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _group_region(region: Region, by_node: dict, parent: dict, resolver=None) -> None:
    """Union sites that meet; deactivate sites of branches that cannot agree (to a fixed point)."""
    resolved = None if resolver is None else resolver.lineage_of
    while True:
        changed = False
        lin = _lineages(region, by_node, parent, resolved)
        merges = lin.pop("__merges__")
        if resolver is not None and any(_resolve(region, m, parent, resolver) for m in merges):
            continue  # an upsampling now follows its partner: recompute the lineages
        for node, lins, _, _ in merges:
            lins = [_canon(lv, parent) for lv in lins]
            if len(set(lins)) == 1:
                continue
            if len({len(lv) for lv in lins}) == 1 and all(_same_kind(pos) for pos in zip(*lins)):
                for pos in zip(*lins):
                    if not isinstance(pos[0], int):
                        continue
                    for other in pos[1:]:
                        a, b = _find(parent, pos[0]), _find(parent, other)
                        if a != b:
                            parent[b] = a
                            changed = True
                continue
            first = min(_first_diff(lins[0], lv) for lv in lins[1:])
            if node.op == "output" and region.prefix and all(isinstance(el, int) for lv in lins for el in lv):
                why, start = (f"its output leaves the traced part '{region.prefix}' into code that does not trace "
                              "(where it meets is unknown)", 0)
            elif all(isinstance(el, int) for lv in lins for el in lv[first:]):
                why, start = f"branches meeting at '{node.name}' subsample a different number of times", first
            else:
                why = (f"'{node.name}' combines branches resized by fixed factors (a kept stride, an upsampling "
                       "by a fixed factor); they agree only at the sizes the network was built for")
                start = 0
            for lv in lins:
                for sid in lv[start:]:
                    if isinstance(sid, int):
                        changed |= _deactivate(by_node, sid, parent, why)
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


def _is_up(el) -> bool:
    return isinstance(el, tuple) and el[0] == "up"


def _resolve(region: Region, merge: tuple, parent: dict, resolver) -> bool:
    """Offer the resolver every branch of ``merge`` that ends in a fixed upsampling, with the one
    lineage of the branches that do not as the target. True when one was made to follow."""
    node, lins, lasts, inputs = merge
    canon = [_canon(lv, parent) for lv in lins]
    if len(set(canon)) == 1:
        return False
    ends_up = [bool(c) and _is_up(c[-1]) for c in canon]
    targets = [(c, i) for c, e, i in zip(canon, ends_up, inputs) if not e]
    if not targets or len({c for c, _ in targets}) != 1:
        return False
    target, ref = targets[0]
    changed = False
    for c, e, last in zip(canon, ends_up, lasts):
        if e and c != target and last is not None and resolver.resolve(region, last, ref, node, target):
            changed = True
    return changed


def _canon(lineage: tuple, parent: dict) -> tuple:
    """A lineage with every site id replaced by its group's root (fixed steps unchanged)."""
    return tuple(_find(parent, el) if isinstance(el, int) else el for el in lineage)


def _same_kind(position: tuple) -> bool:
    """Lineage entries at one position can be made equal: all sites, or all the same fixed step."""
    if all(isinstance(el, int) for el in position):
        return True
    return len(set(position)) == 1


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


def _lineages(region: Region, by_node: dict, parent: dict, resolved: dict | None = None) -> dict:
    """``node -> lineage`` (tuple of site ids, a ``_Size``, or None for fixed-size values).

    ``lin["__merges__"]``: ``(node, lineages, last_ups, inputs)`` per place where lineages differ;
    ``last_ups[i]`` is the fixed upsampling node that made the last step of branch i (or None)."""
    lin: dict = {"__merges__": []}
    last: dict = {}  # node -> the upsampling node of its lineage's last "up" step (None: none)
    resolved = resolved or {}
    first_input = next((n for n in region.graph.nodes if n.op == "placeholder"), None)
    for node in region.graph.nodes:
        if node.op == "placeholder":
            lin[node] = ()
            continue
        if node.op == "output":
            for i in node.all_input_nodes:
                out = lin.get(i)
                if not isinstance(out, tuple):
                    continue
                if region.prefix and any(isinstance(el, int) for el in out):
                    # the output leaves a traced part into code that does not trace: its merges are unknown
                    lin["__merges__"].append((node, [out, ()], [None, None], [i, None]))
                elif any(_is_up(el) for el in out):
                    # a dense output upsampled by a fixed factor must keep the size it was built for
                    ref = None if region.prefix else first_input
                    lin["__merges__"].append((node, [out, ()], [last.get(i), None], [i, ref]))
            lin[node] = None
            continue
        if node.op == "get_attr":
            lin[node] = None
            continue
        ins = node.all_input_nodes
        spatial_in = [i for i in ins if isinstance(lin.get(i), tuple)]
        spatial = [lin[i] for i in spatial_in]
        sizes = [lin[i] for i in ins if isinstance(lin.get(i), _Size)]
        last[node] = last.get(spatial_in[0]) if spatial_in else None
        if node in resolved:  # a fixed upsampling that now resizes to its partner's size
            lin[node], last[node] = resolved[node], None
        elif _is_size(node):
            lin[node] = _Size(spatial[0] if spatial else (sizes[0].lin if sizes else None))
        elif not spatial:
            lin[node] = _derived(node, sizes[0]) if sizes else None
        elif _is_global(node, region):
            lin[node] = None
        elif is_interp(node, region):
            lin[node] = sizes[0].lin if sizes else _fixed_resize(node, region, spatial[0])
            if sizes and _ends_derived(lin[node]):  # to a size computed from another map's (h // 4): a fixed
                lin[node] = lin[node] + (("up", "derived"),)  # factor of that map, offered to the resolver
            last[node] = node if isinstance(lin[node], tuple) and lin[node] and _is_up(lin[node][-1]) else None
        else:
            if len({_canon(lv, parent) for lv in spatial}) > 1:
                lin["__merges__"].append((node, spatial, [last.get(i) for i in spatial_in], spatial_in))
            step = _step(node, region, by_node.get(id(node)))
            lin[node] = spatial[0] + step
            if step:
                last[node] = node if _is_up(step[-1]) else None
    return lin


_SAME_SIZE = {operator.getitem, builtins.int, builtins.tuple, builtins.list}


def _derived(node: fx.Node, size: _Size) -> _Size:
    """A size computed from ``size``: the same one (indexing, packing) or, after arithmetic
    (``h // 4``), a fixed step away from it."""
    if node.op == "call_function" and node.target in _SAME_SIZE or size.lin is None:
        return size
    consts = tuple(a for a in node.args if isinstance(a, (int, float)))
    return _Size(size.lin + (("derived", getattr(node.target, "__name__", str(node.target)), consts),))


def _step(node: fx.Node, region: Region, site) -> tuple:
    """What ``node`` adds to a lineage: its site id (active), a fixed step (a kept stride, a
    transposed conv that upsamples), or nothing."""
    if site is not None:
        if site.active:
            return (site.id,)
        return (("fixed", site.stride, site.offset),) if site.stride > 1 else ()
    if node.op == "call_module":
        m = region.module(node.target)
        if isinstance(m, nn.ConvTranspose2d) and max(m.stride) > 1:
            return (("up", tuple(m.stride), tuple(m.kernel_size), tuple(m.padding), tuple(m.output_padding)),)
    return ()


def _fixed_resize(node: fx.Node, region: Region, lineage: tuple):
    """Lineage after an interpolation without a size taken from another tensor: an upsampling by
    a fixed factor adds a step; a constant output size ends the lineage (None)."""
    if node.op == "call_module":
        m = region.module(node.target)
        factor, size = m.scale_factor, m.size
    else:
        factor = node.kwargs.get("scale_factor", node.args[2] if len(node.args) > 2 else None)
        size = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
    if factor is not None and not isinstance(factor, fx.Node):
        return lineage + (("up", tuple(factor) if isinstance(factor, (list, tuple)) else float(factor)),)
    if size is not None and not isinstance(size, fx.Node) and not _has_node(size):
        return None
    return lineage + (("up", "unknown"),)


def _ends_derived(lineage) -> bool:
    """True when ``lineage`` ends in a size computed by arithmetic from another map's size."""
    return isinstance(lineage, tuple) and bool(lineage) and isinstance(lineage[-1], tuple) and lineage[-1][0] == "derived"


def _has_node(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_node(v) for v in value)
    return isinstance(value, fx.Node)


def _is_size(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] == "shape"
    return node.op == "call_method" and node.target in ("size", "dim")


def is_interp(node: fx.Node, region: Region) -> bool:
    if node.op == "call_function":
        return node.target in (F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
    if node.op == "call_module":
        return isinstance(region.module(node.target), nn.Upsample)
    return False


def _is_global(node: fx.Node, region: Region) -> bool:
    if node.op == "call_module":
        return isinstance(region.module(node.target), _GLOBAL_MODULES)
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
