"""Checking calibration batches before anything is converted."""

from __future__ import annotations

import torch
from torch import nn

from ..inputs import call_model, to_model
from ..modes import evaluating

ARG = "calibration_data"


def _input_of(batch, i: int):
    """The model input of batch ``i``: a tensor, a dict, or the first item of ``(x, y, ...)`` — itself a
    tensor, a dict, or a tuple/list of positional inputs."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError(f"{ARG}: batch {i} is an empty {type(batch).__name__}; give (x, ...) tuples or tensors")
        batch = batch[0]
    if isinstance(batch, (dict, torch.Tensor)) or (isinstance(batch, (tuple, list)) and batch):
        return batch
    raise TypeError(f"{ARG}: batch {i} is a {type(batch).__name__}; give tensors (N, C, H, W), (x, y, ...) "
                    "tuples whose first item is the input (a tensor, a dict, or a tuple of positional inputs), "
                    "or dicts of inputs")


def _named(x, prefix: str = "") -> list[tuple[str, object]]:
    """The leaves of an input (tensor / dict / tuple / list), named by where they are (``image``, ``[1]``)."""
    if isinstance(x, dict):
        return [leaf for k, v in x.items() for leaf in _named(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(x, (tuple, list)):
        return [leaf for j, v in enumerate(x) for leaf in _named(v, f"{prefix}[{j}]")]
    return [(prefix or "input", x)]


def _tensors(x) -> list[torch.Tensor]:
    return [t for _, t in _named(x) if isinstance(t, torch.Tensor)]


def _signature(x) -> tuple:
    """What must agree between batches: per tensor its dtype, rank and every size but N and H, W."""
    return tuple((k, t.dtype, t.dim(), tuple(t.shape[1:-2]) if t.dim() >= 3 else tuple(t.shape[1:]))
                 for k, t in _named(x) if isinstance(t, torch.Tensor))


def prepare_batches(model: nn.Module, calibration_data, device=None, dtype=None) -> list:
    """The calibration batches as a list of model inputs on the model's device and dtype, checked.

    Accepts a tensor (one batch), or an iterable (a DataLoader, a list) of tensors, ``(x, y, ...)``
    tuples (``x`` a tensor, a dict or a tuple of positional inputs) or dicts (keyword inputs, or one
    positional dict: :func:`njetify.inputs.call_model`). Raises one TypeError/ValueError naming ``calibration_data``
    for: a non-iterable, an empty iterable, non-floating inputs, batches that disagree in rank,
    channels or dtype, or a batch on which ``model`` (the original) fails — it is run once on every
    batch whose shape differs from all before it (once in all when they share one shape).
    """
    if isinstance(calibration_data, torch.Tensor):
        calibration_data = [calibration_data]
    if isinstance(calibration_data, (str, bytes, dict)) or not hasattr(calibration_data, "__iter__"):
        raise TypeError(f"{ARG} must be an iterable of input batches (a DataLoader, or a list of tensors "
                        f"(N, C, H, W)), got {type(calibration_data).__name__}")
    batches, first = [], None
    for i, b in enumerate(calibration_data):
        x = _input_of(b, i)
        for t in _tensors(x):
            if isinstance(t, torch.Tensor) and not t.is_floating_point():
                raise TypeError(f"{ARG}: batch {i} has dtype {t.dtype}; give floating-point inputs preprocessed "
                                "as for the model (e.g. x.float() / 255, normalised)")
        x = to_model(x, device, dtype)
        sig = _signature(x)
        if first is None:
            first = sig
        elif sig != first:
            raise ValueError(f"{ARG}: batch {i} has shape/dtype {_describe(x)}, batch 0 {_describe(batches[0])}; "
                             "every batch must have the same rank, channels and dtype")
        batches.append(x)
    if not batches:
        raise ValueError(f"{ARG} is empty: give a few input batches (e.g. 4–8 batches of 16–128 training "
                         "images), or None for a weight-space fit")
    _run_original(model, batches)
    return batches


def _describe(x) -> str:
    return ", ".join(f"{k}: {tuple(t.shape)} {t.dtype}" for k, t in _named(x) if isinstance(t, torch.Tensor))


def _run_original(model: nn.Module, batches: list) -> None:
    seen = set()
    with evaluating(model):
        for i, x in enumerate(batches):
            shape = tuple(tuple(t.shape[1:]) for t in _tensors(x) if isinstance(t, torch.Tensor))
            if shape in seen:
                continue
            seen.add(shape)
            try:
                call_model(model, x)
            except Exception as e:  # noqa: BLE001 - reported with the batch that caused it
                raise ValueError(f"{ARG}: the original model fails on batch {i} ({_describe(x)}): "
                                 f"{type(e).__name__}: {e}") from None
