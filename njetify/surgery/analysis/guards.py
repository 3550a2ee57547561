"""Find ``flatten → Linear`` heads that read a subsampled map (they need a guard when σ moves).

A Linear needs a guard when its input's size follows σ (its lineage holds an active site) and
it reads a *flattened* map. The analysis follows only what it understands: element-wise ops
between the flatten and the Linear, a ``flatten(1)`` / ``view(N, -1)`` of a ``(N, C, H, W)`` map.
Anything else that reshapes the features on the way — a permute or transpose before the
flatten, a reshape to another shape, another Linear, a Linear subclass — makes the head
*unguardable*: its :class:`GuardSite` carries the reason, and the plan keeps the strides that
feed it (so the head always reads the size it was built for).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from ..robust import attempt
from .sites import GuardSite
from .trace import Region

_STEPS = 8
# element-wise ops a guard commutes with (names of functions / methods / module classes)
_ELEMENTWISE = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "elu",
                "selu", "celu", "leaky_relu", "mish", "softplus", "dropout", "contiguous", "clone", "float", "half",
                "bfloat16", "double", "detach"}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                        nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.Mish, nn.Softplus, nn.Identity,
                        nn.Dropout, nn.AlphaDropout)
_LAYOUT = {"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims", "t", "view", "reshape",
           "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "repeat", "pixel_shuffle", "pixel_unshuffle",
           "channel_shuffle", "view_as", "reshape_as", "narrow", "roll", "flip", "rot90"}


def find_guards(region: Region, lineage: dict, failures: list | None = None) -> list[GuardSite]:
    """Every Linear of ``region`` that reads a flattened map whose lineage holds an active site;
    unguardable ones carry ``reason`` (so does one whose analysis failed, when its input's size
    follows σ)."""
    out: list[GuardSite] = []
    seen: set[str] = set()
    for node in region.graph.nodes:
        if node.op != "call_module" or not isinstance(region.module(node.target), nn.Linear) or not node.args:
            continue
        path = region.full_path(node.target)
        site = attempt(f"the flatten-guard analysis of {path}", lambda: _head(node, region, lineage, path),
                       lambda why: _failed(node, region, lineage, path, why), failures)
        if site is not None and path not in seen:
            seen.add(path)
            out.append(site)
    return out


def _head(node: fx.Node, region: Region, lineage: dict, path: str) -> GuardSite | None:
    linear = region.module(node.target)
    cur = _skip_elementwise(node.args[0], region)
    if not isinstance(cur, fx.Node) or not _sites_in(lineage.get(cur)):
        return None
    flat = cur if _is_flatten(cur, region) else None
    if flat is None:
        if _is_layout(cur, region) and _reads_flat(cur, region):
            return _unguardable(region, path, cur, linear, f"its input is reshaped by '{cur.name}' "
                                                          "in a way the analysis does not follow")
        return None  # a Linear over the last axis of a map (channels-last MLP): its width is fixed
    src = flat.args[0] if flat.args else None
    if not isinstance(src, fx.Node):
        return None
    before = _skip_elementwise(src, region)
    if isinstance(before, fx.Node) and _is_layout(before, region):
        what = before.target if before.op != "call_module" else type(region.module(before.target)).__name__
        return _unguardable(region, path, flat, linear, f"the map is rearranged ({what} at '{before.name}') before "
                                                       "the flatten, so its layout is not (C, H, W)")
    if type(linear) is not nn.Linear:
        return _unguardable(region, path, flat, linear, f"{type(linear).__name__} is a Linear subclass with its "
                                                       "own forward")
    shape = _map_shape(src, region, linear.in_features)
    if shape is None:
        return _unguardable(region, path, flat, linear, "the flattened map's (C, H, W) is unknown (give "
                                                       "example_inputs)")
    return GuardSite(region, path, flat, linear.in_features, shape)


def _failed(node: fx.Node, region: Region, lineage: dict, path: str, why: str) -> GuardSite | None:
    src = node.args[0]
    if not isinstance(src, fx.Node) or not _sites_in(lineage.get(src)):
        return None
    return _unguardable(region, path, src, region.module(node.target), why)


def _unguardable(region, path, node, linear, reason: str) -> GuardSite:
    return GuardSite(region, path, node, linear.in_features, None, reason)


def _sites_in(lineage) -> bool:
    return isinstance(lineage, tuple) and any(isinstance(el, int) for el in lineage)


def _name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _skip_elementwise(cur, region: Region):
    """The first node at or before ``cur`` that is not an element-wise op of one tensor."""
    for _ in range(_STEPS):
        if not isinstance(cur, fx.Node) or len(cur.all_input_nodes) != 1 or not _is_elementwise(cur, region):
            return cur
        cur = cur.all_input_nodes[0]
    return cur


def _is_elementwise(node: fx.Node, region: Region) -> bool:
    if node.op == "call_module":
        m = region.module(node.target)
        return isinstance(m, _ELEMENTWISE_MODULES) or isinstance(m, nn.PReLU) and m.num_parameters == 1
    return node.op in ("call_function", "call_method") and _name(node) in _ELEMENTWISE


def _is_layout(node: fx.Node, region: Region) -> bool:
    if node.op == "call_module":
        m = region.module(node.target)
        return isinstance(m, (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle)) or \
            "permute" in type(m).__name__.lower()
    if node.op == "call_function" and node.target is operator.getitem:
        return False
    return node.op in ("call_function", "call_method") and _name(node) in _LAYOUT


def _reads_flat(node: fx.Node, region: Region) -> bool:
    """A reshape whose output has fewer than 4 dims (it mixes the map's positions into features)."""
    meta = node.meta.get("tensor_meta")
    if meta is not None:
        return len(meta.shape) < 4
    return _name(node) in ("view", "reshape", "flatten")


def _is_flatten(node: fx.Node, region: Region) -> bool:
    """``flatten(x, 1)``, ``x.flatten(1)``, ``nn.Flatten()`` or ``x.view/reshape(N, -1)`` of a 4-D map."""
    meta = node.all_input_nodes[0].meta.get("tensor_meta") if node.all_input_nodes else None
    if meta is not None and len(meta.shape) != 4:
        return False
    if node.op == "call_module":
        m = region.module(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if node.op not in ("call_function", "call_method"):
        return False
    name = _name(node)
    if name == "flatten" and (node.op == "call_method" or node.target is torch.flatten):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end in (-1, 3)
    if name in ("view", "reshape") and (node.op == "call_method" or node.target is torch.reshape):
        dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return len(dims) == 2 and (dims[1] == -1 or isinstance(dims[1], int) and dims[0] != -1)
    return False


def _map_shape(src: fx.Node, region: Region, in_features: int) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the flattened map: recorded shapes when example inputs were given, else
    C from the layers before it and a square ``H = W``; None when unknown or not ``in_features`` wide."""
    meta = src.meta.get("tensor_meta")
    if meta is not None and len(meta.shape) == 4:
        shape = tuple(int(v) for v in meta.shape[1:])
        return shape if math.prod(shape) == in_features else None
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
            if isinstance(m, nn.Linear):
                return None
        if _is_layout(node, region):
            return None
        ins = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if node.op == "call_function" and node.target in (torch.cat, torch.concat) and ins:
            parts = [channels(n, region, depth - 1) for n in ins]
            return sum(parts) if all(parts) else None
        if not ins:
            return None
        node = ins[0]
    return None
