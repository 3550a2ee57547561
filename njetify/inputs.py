"""Model inputs as the surgery and the calibration take them: a tensor, a tuple of positional
inputs, or a dict of keyword inputs — moved to the model's device and dtype, and fed to it;
and the first tensor of what a model returns."""

from __future__ import annotations

import torch
from torch import nn


def to_model(x, device, dtype):
    """Move a batch (tensor / tuple / list / dict of tensors) to the model's device and float dtype."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, (tuple, list)):
        return type(x)(to_model(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_model(v, device, dtype) for k, v in x.items()}
    return x


def call_model(model: nn.Module, batch):
    """``model(batch)``; a tuple/list batch is unpacked as positional, a dict as keyword arguments."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
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
