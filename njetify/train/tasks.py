"""What a task asks of training: its loss, its metric meter, and the logits of a model output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import ClassificationMeter, SegmentationMeter, inverse_frequency_weights


def logits(out) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, ``out["out"]`` (torchvision segmentation) or ``out[0]``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["out"]
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model output must be a tensor, a dict with 'out' or a tuple, got {type(out).__name__}")


def task_output(task: str, out, y: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, K)`` or ``(N, K, h, w)``; segmentation logits upsampled bilinearly to the label size."""
    out = logits(out)
    if task == "segmentation" and out.shape[-2:] != y.shape[-2:]:
        out = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return out


def criterion(task: str, cfg, dataset, num_classes: int, device) -> nn.Module:
    """Cross-entropy; segmentation ignores ``cfg.ignore_index`` and, with ``cfg.class_weights ==
    "inverse_frequency"``, weights classes by their frequency in the first 512 samples of ``dataset``."""
    if task == "classification":
        return nn.CrossEntropyLoss()
    weight = None
    if cfg.class_weights == "inverse_frequency":
        n = min(len(dataset), 512)  # the first 512 samples: identical on every rank, no communication
        counts = torch.zeros(num_classes, dtype=torch.float64)
        for i in range(n):
            y = torch.as_tensor(dataset[i][1]).flatten()
            y = y[y != cfg.ignore_index]
            counts += torch.bincount(y, minlength=num_classes)[:num_classes].double()
        weight = inverse_frequency_weights(counts).to(device)
    return nn.CrossEntropyLoss(weight=weight, ignore_index=cfg.ignore_index)


def meter(task: str, num_classes: int, ignore_index: int):
    """Accuracy (classification) or confusion-matrix mIoU (segmentation) accumulator."""
    if task == "classification":
        return ClassificationMeter()
    return SegmentationMeter(num_classes, ignore_index)
