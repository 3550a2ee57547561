"""Compare a converted model with its original: parameters, MACs, output difference; default input sizes."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..inputs import first_tensor
from .core import count_macs

__all__ = ["Comparison", "compare_models", "default_input_size"]

#: Input sizes of the built-in architectures ((C, H, W), the data they were designed for).
_BUILTIN_SIZES = {"deeplabv2_resnet101": (3, 321, 321), "unet_small": (3, 128, 128)}
_CIFAR_SIZE = (3, 32, 32)

#: A ``max_abs_diff`` at most this times the largest output is "no change" (float rounding).
NO_CHANGE = 1e-5


@dataclass
class Comparison:
    """Original vs converted at one input shape. MACs count convolutions and matmuls;
    ``max_abs_diff`` is ``max |f(x) − g(x)|`` over the first output tensor, ``max_abs_output``
    the largest ``|f(x)|`` (for scale).

    ``zero_norms``: normalisation layers of the original whose scale (weight) is all 0 — timm
    zero-initialises the last BatchNorm of every residual block, so on random weights the blocks add
    nothing and ``max_abs_diff`` is 0 (or float rounding) whatever the conversion did. When that happens,
    ``max_abs_diff_unzeroed`` / ``max_abs_output_unzeroed`` are the same figures with those scales set to 1
    in both models, computed when ``max_abs_diff`` is at most :data:`NO_CHANGE` times the largest output (else None).
    """

    input_shape: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff: float
    max_abs_output: float
    output_shape_before: tuple[int, ...]
    output_shape_after: tuple[int, ...]
    zero_norms: int = 0
    max_abs_diff_unzeroed: float | None = None
    max_abs_output_unzeroed: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def compare_models(original: nn.Module, converted: nn.Module, example_input: torch.Tensor, *,
                   unzero: bool = False) -> Comparison:
    """Run both models in eval mode on ``example_input`` ``(N, C, H, W)`` and compare them.

    ``unzero``: when the outputs agree only because some norm scales are 0 (see :class:`Comparison`),
    compare again on copies with those scales at 1 (two more forwards).

    The training mode of each model is restored afterwards. MACs are counted for one
    sample (the first of the batch).
    """
    modes = (original.training, converted.training)
    original.eval()
    converted.eval()
    try:
        one = example_input[:1]
        a = first_tensor(original(example_input))
        b = first_tensor(converted(example_input))  # also fills the N-Jet filter caches
        macs = (count_macs(original, one, warmup=False), count_macs(converted, one, warmup=False))
    finally:
        original.train(modes[0])
        converted.train(modes[1])
    diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
    zeros = zero_scale_norms(original)
    out = Comparison(
        tuple(example_input.shape),
        sum(p.numel() for p in original.parameters()),
        sum(p.numel() for p in converted.parameters()),
        macs[0], macs[1], diff, float(a.abs().max()), tuple(a.shape), tuple(b.shape), len(zeros),
    )
    if unzero and zeros and diff <= NO_CHANGE * float(a.abs().max()):
        out.max_abs_diff_unzeroed, out.max_abs_output_unzeroed = _unzeroed_diff(original, converted, zeros,
                                                                                example_input)
    return out


def zero_scale_norms(model: nn.Module) -> list[str]:
    """Paths of the normalisation layers (BatchNorm, GroupNorm, LayerNorm, …) whose weight is all 0."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return [p for p, m in model.named_modules() if isinstance(m, norms) and isinstance(getattr(m, "weight", None),
                                                                                        torch.Tensor)
            and m.weight.numel() and not bool(m.weight.detach().any())]


def _unzeroed_diff(original: nn.Module, converted: nn.Module, paths: list[str], x: torch.Tensor):
    """``(max |f(x) − g(x)|, max |f(x)|)`` on copies of both models with the norm scales at ``paths`` set to 1
    (in the converted copy too, where the same path holds a norm layer)."""
    pair = []
    for model in (original, converted):
        work = copy.deepcopy(model).eval()
        for p in paths:
            m = work.get_submodule(p) if _has(work, p) else None
            if m is not None and isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.data.fill_(1.0)
        pair.append(first_tensor(work(x)))
    a, b = pair
    if a.shape != b.shape:
        return float("nan"), float(a.abs().max())
    return float((a - b).abs().max()), float(a.abs().max())


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def default_input_size(model: nn.Module, name: str | None = None) -> tuple[int, int, int]:
    """The natural input size ``(C, H, W)`` of ``model``.

    In order: for a model :func:`njetify.rescale` moved, the size it was built for times the factor;
    what :func:`njetify.save` stored (``model.njetify_meta["input_shapes"]``),
    timm's ``pretrained_cfg["input_size"]``, the built-in zoo's sizes (CIFAR models 32×32),
    224×224 for other library models; C is the first convolution's input channels.
    """
    from ..resolution import RESOLUTION_ATTR, current_input_size

    if hasattr(model, RESOLUTION_ATTR) and current_input_size(model):  # rescaled: the size it runs at now
        return current_input_size(model)
    meta = getattr(model, "njetify_meta", None) or {}
    shapes = meta.get("input_shapes")
    if shapes:
        return tuple(int(v) for v in shapes[0][1:])
    in_chans = next((m.in_channels for m in model.modules() if hasattr(m, "in_channels")), 3)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return (in_chans, *tuple(cfg["input_size"])[-2:])
    source = getattr(model, "njetify_source", None) or {}
    name = name or source.get("name") or ""
    if name in _BUILTIN_SIZES:
        return (in_chans, *_BUILTIN_SIZES[name][1:])
    from ..models import model_entry

    if name and ":" not in name and model_entry(name) is not None:
        return (in_chans, *_CIFAR_SIZE[1:])
    return (in_chans, 224, 224)
