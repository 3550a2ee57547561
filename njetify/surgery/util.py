"""Small helpers of the surgery: parameter counts, the model's device and dtype, input batches."""

from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of distinct parameter elements of ``module``."""
    unique = {id(p): p for p in module.parameters() if not nn.parameter.is_lazy(p)}
    return sum(p.numel() for p in unique.values())


def own_params(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` itself and its children."""
    return sum(p.numel() for p in module.parameters() if not nn.parameter.is_lazy(p))


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the first parameter (CPU/float32 when there is none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def to_model(x, device, dtype):
    """Move a batch (tensor / tuple / list / dict of tensors) to the model's device and float dtype."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, (tuple, list)):
        return type(x)(to_model(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_model(v, device, dtype) for k, v in x.items()}
    return x


def first_input(batch):
    """The model input of a calibration batch: a tensor, or the first item of ``(x, y, ...)``."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("calibration_data: got an empty batch")
        return batch[0]
    return batch


def call(model: nn.Module, x):
    """``model(x)``, or ``model(**x)`` for a dict of named inputs."""
    return model(**x) if isinstance(x, dict) else model(x)
