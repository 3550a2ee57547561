"""What :func:`njetify.convert` checks and unwraps before any slow work.

* wrappers — ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``), ``nn.DataParallel`` and
  ``DistributedDataParallel`` (``.module``): the inner model is converted and returned unwrapped;
* quantized convolutions (``torch.ao.nn.quantized``): njetify converts float convolutions;
* convolutions with non-finite (NaN / inf) weights: the model itself is broken.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers.convertible import conv_kind

_WRAPPERS = {
    "OptimizedModule": "torch.compile (OptimizedModule): compile the result again, torch.compile(net)",
    "DataParallel": "nn.DataParallel: wrap the result again, nn.DataParallel(net)",
    "DistributedDataParallel": "DistributedDataParallel: wrap the result again, DistributedDataParallel(net)",
}


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model inside compile / DataParallel / DDP wrappers, and one note per wrapper removed."""
    notes = []
    while True:
        kind, inner = _wrapped(model)
        if inner is None:
            return model, notes
        notes.append(f"the model was wrapped by {_WRAPPERS[kind]}; the inner {type(inner).__name__} was converted "
                     "and is returned unwrapped")
        model = inner


def _wrapped(model: nn.Module) -> tuple[str, nn.Module | None]:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded whenever torch.compile made a wrapper
    if eval_frame is not None and isinstance(model, getattr(eval_frame, "OptimizedModule", ())):
        return "OptimizedModule", model._orig_mod
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel", model.module
    if isinstance(model, nn.DataParallel):
        return "DataParallel", model.module
    return "", None


def quantized_convs(model: nn.Module) -> list[tuple[str, str]]:
    """``(path, class name)`` of every quantized convolution (``torch.ao.nn.quantized`` and friends)."""
    return [(path, m._get_name()) for path, m in model.named_modules()
            if ".quantized" in type(m).__module__ and "Conv" in type(m).__name__]


def check_quantized(model: nn.Module) -> list[str]:
    """Raise ValueError when the model's only convolutions are quantized; else notes for quantized ones."""
    found = quantized_convs(model)
    if not found:
        return []
    some = ", ".join(f"{p}: {c}" for p, c in found[:3]) + (" ..." if len(found) > 3 else "")
    if not any(conv_kind(m) in ("ok", "transposed") for m in model.modules()):
        raise ValueError(f"convert: {type(model).__name__} is quantized ({len(found)} quantized convolution(s), e.g. "
                         f"{some}): njetify converts float convolutions; convert the float model before quantizing "
                         "it (njetify.convert first, then quantize the result)")
    return [f"{len(found)} quantized convolution(s) kept as they are ({some}): njetify converts float convolutions; "
            "convert the float model before quantizing it"]


def check_finite(model: nn.Module, recipe) -> None:
    """Raise ValueError naming every convertible conv (not skipped by ``recipe``) whose weight or bias
    holds NaN or inf — before any slow work."""
    bad = []
    for path, m in model.named_modules():
        if not path or conv_kind(m) not in ("ok", "transposed") or recipe.settings_for(path).skip:
            continue
        with torch.no_grad():  # a parametrised weight: its originals (reading .weight may run a power iteration)
            weights = (list(m.parametrizations["weight"].parameters()) if parametrize.is_parametrized(m, "weight")
                       else [m.weight])
            if any(nn.parameter.is_lazy(w) or w.is_meta for w in weights):
                continue  # no values yet
            weight = torch.cat([w.detach().reshape(-1) for w in weights])
            tensors = [("weight", weight), ("bias", m.bias)]
            counts = [(name, int(t.isnan().sum()), int(t.isinf().sum())) for name, t in tensors if t is not None]
        what = [f"{name}: {nan} NaN, {inf} inf" for name, nan, inf in counts if nan or inf]
        if what:
            bad.append(f"{path} ({'; '.join(what)})")
    if bad:
        first = bad[0].split(" (")[0]
        raise ValueError(f"convert: non-finite weights (NaN or inf) in {len(bad)} convolution(s): "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the model itself is broken (a diverged "
                         f"training or a damaged checkpoint): load finite weights, or leave these convs out with a "
                         f"recipe rule {{match: {first!r}, skip: true}}")
