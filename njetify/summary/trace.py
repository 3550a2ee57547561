"""Follow feature-map sizes and receptive fields through one forward pass.

:class:`RFTracker` is a ``TorchFunctionMode``: every torch function called during a
forward sees the receptive-field state of its 4-D tensor inputs and gives its 4-D
outputs a new one. The state of a tensor is, per axis (H, W), its receptive field
``rf`` (input pixels one output pixel sees) and its ``jump`` (input pixels between
neighbouring output pixels) — the usual recurrence ``rf += (k−1)·d·jump``,
``jump *= stride`` for convolutions and pooling, whatever module or function
calls them. Resizes (nearest picks, area/bilinear resizing, slicing with a step)
scale the jump by the ratio of sides; shape-keeping ops take the largest state of
their inputs (a residual add sees both branches). The result is the theoretical
receptive field, the one the architecture allows, not the effective one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["RF", "RFTracker"]


@dataclass(frozen=True)
class RF:
    """Receptive field ``(rf_h, rf_w)`` and jump ``(jump_h, jump_w)`` in input pixels."""

    rf: tuple[float, float] = (1.0, 1.0)
    jump: tuple[float, float] = (1.0, 1.0)

    def merge(self, other: RF) -> RF:
        return RF(tuple(map(max, self.rf, other.rf)), tuple(map(max, self.jump, other.jump)))

    def window(self, k: tuple[int, int], stride: tuple[int, int], dilation=(1, 1)) -> RF:
        rf = tuple(r + (kk - 1) * d * j for r, kk, d, j in zip(self.rf, k, dilation, self.jump))
        return RF(rf, tuple(j * s for j, s in zip(self.jump, stride)))

    def resize(self, ratio: tuple[float, float], spread: tuple[float, float]) -> RF:
        rf = tuple(r + s * j for r, s, j in zip(self.rf, spread, self.jump))
        return RF(rf, tuple(j * q for j, q in zip(self.jump, ratio)))


_CONV = {"conv2d"}
_POOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"}
_AREA = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_INTERP = {"interpolate", "upsample", "upsample_bilinear", "upsample_nearest"}
_SHAPE_ONLY = {"pad", "constant_pad_nd"}


def _pair(v, default: int = 1) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class RFTracker(TorchFunctionMode):
    """Track :class:`RF` states of 4-D tensors inside ``with RFTracker(x):`` (x: the model input)."""

    def __init__(self, inputs: torch.Tensor):
        super().__init__()
        self.state: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.state[inputs] = RF()

    def get(self, t) -> RF | None:
        """The state of tensor ``t`` (None for tensors that do not derive from the input)."""
        return self.state.get(t) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [self.state[t] for t in _tensors(args, kwargs) if t.dim() == 4 and t in self.state]
        if not ins:
            return out
        src = ins[0]
        for other in ins[1:]:
            src = src.merge(other)
        first = next(t for t in _tensors(args, kwargs) if t.dim() == 4 and t in self.state)
        for o in _tensors((out,), {}):
            if o.dim() != 4:
                continue
            if o is first:  # in-place op or identity
                self.state[o] = src
            else:
                self.state[o] = self._rule(getattr(func, "__name__", ""), args, kwargs, src, first, o)
        return out

    def _rule(self, name: str, args, kwargs, src: RF, x: torch.Tensor, out: torch.Tensor) -> RF:
        if name in _CONV:
            w = _arg(args, kwargs, 1, "weight")
            k = tuple(w.shape[-2:])
            return src.window(k, _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 5, "dilation", 1)))
        if name in _POOL:
            k = _pair(_arg(args, kwargs, 1, "kernel_size"))
            stride = _arg(args, kwargs, 2, "stride", None)
            stride = k if stride is None or stride == [] or stride == () else _pair(stride)
            dil = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
            return src.window(k, stride, dil)
        hi, wi = x.shape[-2:]
        ho, wo = out.shape[-2:]
        if (hi, wi) == (ho, wo) or name in _SHAPE_ONLY:
            return src
        ratio = (hi / max(ho, 1), wi / max(wo, 1))
        picked = _pick_steps(name, args, kwargs, x)
        if picked is not None:  # index_select / strided slicing: the real distance between picks
            ratio = tuple(p if p is not None else q for p, q in zip(picked, ratio))
        if name in _AREA:  # each output pixel averages ⌈ratio⌉ input pixels
            spread = tuple(math.ceil(q) - 1 for q in ratio)
        elif name in _INTERP:  # bilinear reads 2 neighbours; antialiased downsizing reads ~2·ratio
            mode = _arg(args, kwargs, 3, "mode", "nearest")
            spread = tuple(0.0 if mode == "nearest" else max(1.0, 2 * q - 1) for q in ratio)
        elif max(abs(q - 1) for q in ratio) < 0.25:  # crops and pads
            return src
        else:  # index_select, strided slicing: pick pixels
            spread = (0.0, 0.0)
        return src.resize(ratio, spread)


def _pick_steps(name: str, args, kwargs, x: torch.Tensor):
    """(step_h, step_w) of ``index_select`` / ``x[..., ::a, ::b]`` (None where not known), else None."""
    if name == "index_select":
        dim, idx = _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "index")
        dim = dim % x.dim() if isinstance(dim, int) else None
        if dim not in (2, 3) or not isinstance(idx, torch.Tensor) or idx.numel() < 2:
            return None
        step = float(idx[-1] - idx[0]) / (idx.numel() - 1)
        return (step, None) if dim == 2 else (None, step)
    if name == "__getitem__" and len(args) > 1:
        key = args[1] if isinstance(args[1], tuple) else (args[1],)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (x.dim() - len(key) + 1) + key[i + 1:]
        steps = [k.step if isinstance(k, slice) and isinstance(k.step, int) else None for k in key[2:4]]
        steps += [None] * (2 - len(steps))
        return tuple(steps) if any(steps) else None
    return None


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


class MacCounter(TorchFunctionMode):
    """Count multiply-accumulates of convolutions, linear layers and matmuls inside ``with``.

    Counted at the torch-function level (whatever module calls them): ``conv{1,2,3}d``
    ``out.numel() · C_in/groups · k…``, transposed convs ``in.numel() · C_out/groups · k…``,
    ``linear`` / ``matmul`` family ``out.numel() · inner dimension``. Elementwise ops,
    normalisation and pooling are not counted (the usual convention).
    """

    _CONVS = frozenset({"conv1d", "conv2d", "conv3d"})
    _TCONVS = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
    _MATMULS = frozenset({"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "__matmul__"})

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in self._CONVS | self._TCONVS | self._MATMULS and isinstance(out, torch.Tensor):
            self.macs += self._count(name, args, kwargs, out)
        return out

    def _count(self, name: str, args, kwargs, out: torch.Tensor) -> int:
        x = _arg(args, kwargs, 0, "input")
        if name in self._CONVS:
            w = _arg(args, kwargs, 1, "weight")
            return out.numel() * math.prod(w.shape[1:])
        if name in self._TCONVS:
            w = _arg(args, kwargs, 1, "weight")
            return x.numel() * math.prod(w.shape[1:])
        if name == "linear":
            return out.numel() * x.shape[-1]
        if name in ("addmm", "baddbmm"):
            x = _arg(args, kwargs, 1, "mat1" if name == "addmm" else "batch1")
        return out.numel() * (x.shape[-1] if x.dim() else 1)
