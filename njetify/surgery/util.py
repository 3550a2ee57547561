"""Small helpers of the surgery: parameter counts, the model's device and dtype."""

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


def free_name(module: nn.Module, stem: str) -> str:
    """``f"{stem}_{i}"`` for the smallest ``i`` that is not an attribute of ``module`` yet (a new child's name)."""
    i = 0
    while hasattr(module, f"{stem}_{i}"):
        i += 1
    return f"{stem}_{i}"
