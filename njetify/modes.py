"""Running a model in eval mode for a moment, and restoring every module's own mode afterwards."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(model: nn.Module, *, no_grad: bool = True):
    """Put ``model`` in eval mode (and, by default, disable gradients) inside the block, then give
    every module back its own mode — a BatchNorm frozen in eval mode inside a training model
    stays frozen (``model.train(was_training)`` would undo that)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
