"""Find ``flatten → Linear`` heads that read a subsampled map (they need a guard when σ moves)."""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from .sites import GuardSite
from .trace import Region

_FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def find_guards(region: Region, lineage: dict) -> list[GuardSite]:
    """Every Linear of ``region`` fed (through single-input ops) by a flatten of a map whose
    lineage holds an active site."""
    out: list[GuardSite] = []
    seen: set[str] = set()
    for node in region.graph.nodes:
        if node.op != "call_module" or not isinstance(region.module(node.target), nn.Linear):
            continue
        linear = region.module(node.target)
        flat = _flatten_before(node, region)
        if flat is None:
            continue
        src = flat.args[0]
        path = region.full_path(node.target)
        if not isinstance(src, fx.Node) or not lineage.get(src) or path in seen:
            continue
        seen.add(path)
        out.append(GuardSite(region, path, flat, linear.in_features, _map_shape(src, region, linear.in_features)))
    return out


def _flatten_before(node: fx.Node, region: Region) -> fx.Node | None:
    cur = node.args[0] if node.args else None
    for _ in range(8):
        if not isinstance(cur, fx.Node):
            return None
        if _is_flatten(cur, region):
            return cur
        if len(cur.all_input_nodes) != 1 or cur.op == "placeholder" or cur.target is operator.getitem:
            return None
        cur = cur.all_input_nodes[0]
    return None


def _is_flatten(node: fx.Node, region: Region) -> bool:
    if node.op == "call_function":
        return node.target in _FLATTEN_FUNCTIONS
    if node.op == "call_method":
        return node.target in _FLATTEN_METHODS
    if node.op == "call_module":
        return isinstance(region.module(node.target), nn.Flatten)
    return False


def _map_shape(src: fx.Node, region: Region, in_features: int) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the flattened map: recorded shapes when example inputs were given, else
    C from the layers before it and a square ``H = W``."""
    meta = src.meta.get("tensor_meta")
    if meta is not None and len(meta.shape) == 4:
        return tuple(int(v) for v in meta.shape[1:])
    c = channels(src, region)
    if not c or in_features % c:
        return None
    side = math.isqrt(in_features // c)
    return (c, side, side) if side * side * c == in_features else None


def channels(node: fx.Node, region: Region, depth: int = 64) -> int | None:
    """Channels of the map a node outputs, read off the nearest conv / norm before it (None: unknown)."""
    for _ in range(depth):
        if node.op == "call_module":
            m = region.module(node.target)
            for attr in ("out_channels", "num_features"):
                if isinstance(getattr(m, attr, None), int):
                    return getattr(m, attr)
        ins = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if node.op == "call_function" and node.target in (torch.cat, torch.concat) and ins:
            parts = [channels(n, region, depth - 1) for n in ins]
            return sum(parts) if all(parts) else None
        if not ins:
            return None
        node = ins[0]
    return None
