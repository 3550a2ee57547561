"""Model inputs as the surgery and the calibration take them: a tensor, a tuple of positional
inputs, or a dict (keyword inputs, or one positional dict) — moved to the model's device and dtype,
and fed to it the way its ``forward`` takes them; and the first tensor of what a model returns."""

from __future__ import annotations

import inspect

import torch
from torch import nn

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def to_model(x, device, dtype):
    """Move a batch (tensor / tuple / list / dict of tensors) to the model's device and float dtype."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, (tuple, list)):
        return type(x)(to_model(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_model(v, device, dtype) for k, v in x.items()}
    return x


def _parameters(model: nn.Module):
    """The parameters of ``model.forward`` (None when its signature cannot be read)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def takes_keywords(model: nn.Module, keys) -> bool:
    """Whether ``model.forward`` accepts every one of ``keys`` as a keyword (True when unknown)."""
    params = _parameters(model)
    if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    names = {p.name for p in params if p.kind in (*_POSITIONAL, inspect.Parameter.KEYWORD_ONLY)}
    return set(keys) <= names


def positional_slots(model: nn.Module) -> float:
    """How many positional arguments ``model.forward`` takes (inf with ``*args`` or when unknown)."""
    params = _parameters(model)
    if params is None or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return float("inf")
    return sum(p.kind in _POSITIONAL for p in params)


def call_model(model: nn.Module, batch):
    """Feed ``batch`` to ``model`` as its ``forward`` takes it.

    A dict is passed as keyword arguments when ``forward`` accepts all its keys, else as one
    positional argument (``forward(self, batch)``); a tuple/list is unpacked as positional
    arguments unless ``forward`` takes a single one (then it is passed whole); a tensor as is.
    """
    if isinstance(batch, dict):
        if takes_keywords(model, batch) or positional_slots(model) < 1:
            return model(**batch)
        return model(batch)
    if isinstance(batch, (tuple, list)):
        if len(batch) > 1 and positional_slots(model) == 1:
            return model(batch)
        return model(*batch)
    return model(batch)


def first_tensor(out) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a tuple/list or a dict such as ``{"out": ...}``)."""
    while not isinstance(out, torch.Tensor):
        if isinstance(out, dict) and out:
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        else:
            raise TypeError(f"model output holds no tensor: {type(out).__name__}")
    return out
