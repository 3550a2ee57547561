"""Read a pooling's parameters (module or functional call) into a :class:`~njetify.layers.PoolSpec`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...layers.safe_pool import PoolSpec


def _square(v, name: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"non-square {name} {tuple(v)}")
        v = v[0]
    if not isinstance(v, int):
        raise ValueError(f"{name} is not a constant int ({v!r})")
    return v


def spec_from_module(m: nn.Module) -> PoolSpec | str:
    """PoolSpec of a 2-D pool module, or the reason it cannot be made stride-1."""
    if type(m) not in (nn.MaxPool2d, nn.AvgPool2d):
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and type(m).forward is not type(m).__mro__[1].forward:
            return f"{type(m).__name__} has its own forward (e.g. TF-SAME padding): kept as it is"
        if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return f"{type(m).__name__} is not a 2-D max/avg pool"
    try:
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                return "returns indices"
            return _checked(PoolSpec("max", _square(m.kernel_size, "kernel"), _square(m.stride, "stride"),
                                     _square(m.padding, "padding"), _square(m.dilation, "dilation"), m.ceil_mode))
        return _checked(PoolSpec("avg", _square(m.kernel_size, "kernel"), _square(m.stride, "stride"),
                                 _square(m.padding, "padding"), 1, m.ceil_mode, m.count_include_pad,
                                 m.divisor_override))
    except ValueError as e:
        return str(e)


_MAX_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
             "count_include_pad": True, "divisor_override": None}


def functional_kind(node: fx.Node) -> str | None:
    """``"max"``/``"avg"`` when ``node`` calls a functional 2-D max/avg pool, else None."""
    if node.op != "call_function":
        return None
    if node.target in (F.max_pool2d, torch.max_pool2d):
        return "max"
    if node.target in (F.avg_pool2d, torch._C._nn.avg_pool2d):
        return "avg"
    return None


def spec_from_node(node: fx.Node) -> PoolSpec | str:
    """PoolSpec of a functional pool call, or the reason it cannot be made stride-1."""
    kind = functional_kind(node)
    names = _MAX_ARGS if kind == "max" else _AVG_ARGS
    a = dict(_DEFAULTS)
    a.update(zip(names, node.args))
    a.update(node.kwargs)
    if a.get("stride") in (None, [], ()):
        a["stride"] = a["kernel_size"]
    if any(isinstance(v, fx.Node) for k, v in a.items() if k != "input"):
        return "pool parameters are computed at run time"
    try:
        if kind == "max":
            if a["return_indices"]:
                return "returns indices"
            return _checked(PoolSpec("max", _square(a["kernel_size"], "kernel"), _square(a["stride"], "stride"),
                                     _square(a["padding"], "padding"), _square(a["dilation"], "dilation"),
                                     bool(a["ceil_mode"])))
        return _checked(PoolSpec("avg", _square(a["kernel_size"], "kernel"), _square(a["stride"], "stride"),
                                 _square(a["padding"], "padding"), 1, bool(a["ceil_mode"]),
                                 bool(a["count_include_pad"]), a["divisor_override"]))
    except ValueError as e:
        return str(e)


def _checked(spec: PoolSpec) -> PoolSpec | str:
    # ceil mode drops a last window that would start in the right padding when p + s > k
    if spec.ceil_mode and spec.padding + spec.stride > spec.dilation * (spec.kernel - 1) + 1:
        return "ceil-mode pool with padding + stride > kernel (PyTorch drops its last window)"
    return spec
