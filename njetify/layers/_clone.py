"""Re-class a module: a new object of another class that shares the original's parameters."""

from __future__ import annotations

from torch import nn


def clone_as(module: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` instance with ``module``'s attributes, parameters, buffers, children and
    hooks (the same tensors and modules), in registries of its own so the original stays intact."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = type(value)(value)
    new.__dict__.update(state)
    return new
