"""Subsampling sites: every strided conv, strided pool and subsampling slice in a traced graph.

A *site* is one call of such an op. Module sites (``nn.Conv2d``, ``nn.MaxPool2d``,
``nn.AvgPool2d``) are rewritten by swapping the module; functional sites
(``F.max_pool2d(x, 2)``, ``x[..., ::2, ::2]``) by re-tracing the module whose
forward makes the call (its *owner*).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from torch import fx, nn

from ...layers.convertible import conv_kind
from ...layers.safe_pool import PoolSpec
from ..robust import attempt
from .pool_specs import functional_kind, spec_from_module, spec_from_node
from .trace import Region, owner_of


@dataclass
class Site:
    """One place that subsamples (or, with ``where="every_layer"``, one N-Jet layer).

    ``op``: ``"conv"`` / ``"pool"`` (a module at ``path``), ``"fpool"`` / ``"slice"`` (a functional
    call in the forward of the module at ``owner``; ``path`` is ``owner:node``). ``offset``: side of
    the stride-1 output minus the input's. ``group``: the σ-source group; ``align``: pixels added
    so that all sites of a group have equal sides.
    """

    id: int
    region: Region
    node: fx.Node
    path: str
    op: str
    stride: int
    offset: int
    spec: PoolSpec | None = None
    active: bool = True
    reason: str | None = None
    group: int = -1
    align: int = 0
    owner: str | None = None
    index: int = -1  # functional sites: position of the op among the owner's own functional ops


@dataclass
class GuardSite:
    """A ``flatten → Linear`` head reading a subsampled map: the Linear at ``path`` needs a guard.

    ``map_shape``: the ``(C, H, W)`` map the Linear was built for (None when unknown).
    ``reason``: why the head cannot be guarded (None: it can); the strides feeding an
    unguardable head are kept.
    """

    region: Region
    path: str
    flatten: fx.Node
    in_features: int
    map_shape: tuple[int, int, int] | None
    reason: str | None = None


@dataclass
class Plan:
    """The sites, their merge groups (group id → active sites) and the heads to guard.

    ``source_of``: group → the group whose σ source it uses (groups that hold calls of one
    module share a source); ``owner_graphs``: owner path → the graph of its own forward;
    ``upsampling``: the :class:`~njetify.surgery.analysis.upsampling.UpsampleResolver` (which fixed
    upsamplings resize to the map they merge with, and where they are rewritten).
    """

    sites: list[Site] = field(default_factory=list)
    groups: dict[int, list[Site]] = field(default_factory=dict)
    guards: list[GuardSite] = field(default_factory=list)
    source_of: dict[int, int] = field(default_factory=dict)
    owner_graphs: dict[str, fx.Graph] = field(default_factory=dict)
    upsampling: object = None  # the UpsampleResolver: upsamplings that follow their partner


def functional_site_kind(node: fx.Node) -> str | None:
    """``"fpool"`` for a functional max/avg pool, ``"slice"`` for ``x[..., ::s, ::s]``, else None."""
    if functional_kind(node) is not None:
        return "fpool"
    if _slice_stride(node):
        return "slice"
    return None


def _slice_stride(node: fx.Node) -> int:
    """s > 1 when ``node`` is ``x[..., ::s, ::s]`` or ``x[:, :, ::s, ::s]`` (spatial subsampling), else 0."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return 0
    index = node.args[1]
    if not isinstance(node.args[0], fx.Node) or not isinstance(index, tuple):
        return 0
    if len(index) == 3 and index[0] is Ellipsis:
        lead, spatial = (), index[1:]
    elif len(index) == 4:
        lead, spatial = index[:2], index[2:]
    else:
        return 0
    if any(not (isinstance(s, slice) and s == slice(None)) for s in lead):
        return 0
    steps = set()
    for s in spatial:
        if not isinstance(s, slice) or s.start not in (None, 0) or s.stop is not None or not isinstance(s.step, int):
            return 0
        steps.add(s.step)
    return steps.pop() if len(steps) == 1 and min(steps) > 1 else 0


def find_sites(region: Region, recipe, first_id: int, every_layer: bool, failures: list | None = None) -> list[Site]:
    """Every site of ``region``'s graph, numbered from ``first_id``. A node whose analysis fails
    (:func:`~njetify.surgery.robust.attempt`) is a kept site when it is a strided module, else none."""
    out: list[Site] = []
    for node in region.graph.nodes:
        sid = first_id + len(out)
        site = attempt(f"the subsampling analysis of '{node.name}'",
                       lambda: _site(region, node, recipe, sid, every_layer),
                       lambda why: _kept_site(region, node, sid, why), failures)
        if site is not None:
            out.append(site)
    return out


def _kept_site(region: Region, node: fx.Node, sid: int, why: str) -> Site | None:
    """The fallback of a failed analysis: a strided conv / pool module keeps its stride."""
    if node.op != "call_module":
        return None
    m = region.module(node.target)
    stride = getattr(m, "stride", 1)
    stride = stride if isinstance(stride, int) else max(stride, default=1)
    if not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) or stride == 1:
        return None
    op = "conv" if isinstance(m, nn.Conv2d) else "pool"
    return Site(sid, region, node, region.full_path(node.target), op, stride, 0, None, False, f"{why}: stride kept")


def _site(region: Region, node: fx.Node, recipe, sid: int, every: bool) -> Site | None:
    if node.op == "call_module":
        m = region.module(node.target)
        path = region.full_path(node.target)
        if isinstance(m, nn.Conv2d):
            return _conv_site(region, node, m, path, sid, every, recipe)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            spec = spec_from_module(m)
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]
            if isinstance(spec, str):
                return None if stride == 1 else Site(sid, region, node, path, "pool", stride, 0, None, False, spec)
            return None if spec.stride == 1 else Site(sid, region, node, path, "pool", spec.stride, spec.offset, spec)
        return None
    kind = functional_site_kind(node)
    if kind is None:
        return None
    owner = region.full_path(owner_of(node))
    path = f"{owner or '<model>'}:{node.name}"
    if kind == "slice":
        return Site(sid, region, node, path, "slice", _slice_stride(node), 0, None, owner=owner)
    spec = spec_from_node(node)
    if isinstance(spec, str):
        return Site(sid, region, node, path, "fpool", 0, 0, None, False, spec, owner=owner)
    if spec.stride == 1:
        return None
    return Site(sid, region, node, path, "fpool", spec.stride, spec.offset, spec, owner=owner)


def _conv_site(region, node, m: nn.Conv2d, path: str, sid: int, every: bool, recipe) -> Site | None:
    stride = m.stride[0]
    kind = conv_kind(m)
    njet = kind == "ok" and not recipe.settings_for(path).skip
    if m.stride[0] != m.stride[1]:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, f"non-square stride {m.stride}")
    if stride == 1 and not (every and njet):
        return None
    k, d = m.kernel_size, m.dilation
    if type(m).__name__ == "Conv2dSame" and stride > 1:
        reason = "TF-SAME padding at stride > 1 is not a stride-1 conv sampled every 2nd pixel: stride kept"
        return Site(sid, region, node, path, "conv", stride, 0, None, False, reason)
    if kind is not None and kind != "ok" and "own forward" in kind:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, kind)
    pad = (0, 0) if m.padding == "valid" else m.padding
    if k[0] != k[1] or d[0] != d[1] or isinstance(pad, str) or pad[0] != pad[1]:
        return Site(sid, region, node, path, "conv", stride, 0, None, False, "not a square kernel/padding")
    return Site(sid, region, node, path, "conv", stride, 2 * pad[0] - d[0] * (k[0] - 1))


def owned_in_order(region: Region, owner: str) -> list[fx.Node]:
    """The functional site nodes of the forward of the module at ``owner`` (a full path) in
    ``region``'s graph, in order (repeated when the owner runs several times)."""
    return [n for n in region.graph.nodes
            if functional_site_kind(n) is not None and region.full_path(owner_of(n)) == owner]


def owner_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The functional site nodes a module's *own* forward makes (none of its children's), in order."""
    return [n for n in graph.nodes if functional_site_kind(n) is not None and owner_of(n) == ""]
