"""Synthetic tasks of the paper, built from MNIST digits.

* :class:`MnistResized` — MNIST upscaled by a factor (1×, 1.5×, 2×, 4×, …): the
  resolution-learning experiments (a network should learn larger σ for larger digits).
* :class:`MnistMultiscaleSeg` — the paper's toy segmentation task with MNIST digits
  instead of Fashion-MNIST: four digits per image, one per quadrant at a uniformly
  random position, each upscaled (bilinear) by a scale drawn from a given set.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .datasets import _check_split, mnist_tensors, torchvision_info

MNIST_MEAN, MNIST_STD = torchvision_info("mnist").mean[0], torchvision_info("mnist").std[0]
IGNORE_INDEX = 255


def _upscale(digit: torch.Tensor, size: int) -> torch.Tensor:
    """``(28, 28)`` uint8 → ``(size, size)`` float in [0, 1], bilinear (background stays exactly 0)."""
    x = digit.to(torch.float32).div_(255.0)
    if size == x.shape[-1]:
        return x
    return F.interpolate(x[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def _check_scale(name: str, s) -> float:
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {s!r}") from None
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"{name} must be a positive finite number, got {s!r}")
    return s


class MnistResized(Dataset):
    """MNIST digits upscaled by ``scale``: samples ``(1, S, S)`` with ``S = round(28·scale)``, label 0–9.

    Args:
        split: ``"train"`` or ``"test"`` (``"val"`` = test).
        data_dir: folder holding ``MNIST/raw`` (torchvision layout); None: ``$NJETIFY_DATA`` or ``data``.
        scale: upscaling factor (> 0), bilinear; the paper uses 1, 1.5, 2 and 4.
        normalize: subtract the MNIST mean and divide by its std.
    """

    def __init__(self, split: str = "train", data_dir: str | os.PathLike | None = None, scale: float = 1.0,
                 *, normalize: bool = True, download: bool = False):
        _check_split(split, ("train", "test", "val"))
        self.scale = _check_scale("scale", scale)
        self.size = round(28 * self.scale)
        self.normalize = normalize
        self.images, self.targets = mnist_tensors("train" if split == "train" else "test", data_dir, download)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = _upscale(self.images[i], self.size)[None]
        if self.normalize:
            x = (x - MNIST_MEAN) / MNIST_STD
        return x, int(self.targets[i])


class MnistMultiscaleSeg(Dataset):
    """The paper's toy segmentation task with MNIST digits.

    Each sample is a ``canvas × canvas`` image split into four quadrants; each quadrant
    holds one MNIST digit upscaled (bilinear) by a scale ``s`` drawn from ``scales``
    (weights ``probs``, uniform by default), at a uniformly random position such that
    it lies entirely inside its quadrant. Labels: ``digit + 1`` where the intensity
    is > ``threshold`` (0.2), background 0 where it is exactly 0, and ``ignore_index``
    (255) in between (the blurred rim of the strokes).

    Canvas: by default ``2·⌈28·max(scales)⌉`` — the smallest canvas whose quadrants fit
    the largest digit (56 px for s = 1, 112 for s = 2, 224 for s = 4).

    Sample ``i`` is a pure function of ``(seed, i)`` (digit choice, scales and
    positions come from ``numpy.random.default_rng([seed, i])``): deterministic,
    independent of the access order and of DataLoader workers.

    Returns ``(image (1, canvas, canvas) float, target (canvas, canvas) int64)``.
    """

    num_classes = 11  # background + 10 digits

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        scales: float | Sequence[float] = (1, 2, 3, 4),
        probs: Sequence[float] | None = None,
        *,
        canvas: int | None = None,
        length: int | None = None,
        seed: int = 0,
        threshold: float = 0.2,
        ignore_index: int = IGNORE_INDEX,
        normalize: bool = False,
        download: bool = False,
    ):
        _check_split(split, ("train", "test", "val"))
        if isinstance(scales, (int, float)):
            scales = (scales,)
        self.scales = [_check_scale("scales", s) for s in scales]
        if not self.scales:
            raise ValueError("scales must hold at least one scale, got an empty sequence")
        if probs is None:
            probs = [1.0] * len(self.scales)
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (len(self.scales),) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"probs must be {len(self.scales)} non-negative weights (one per scale), got {probs!r}")
        self.probs = p / p.sum()
        self.sizes = [round(28 * s) for s in self.scales]
        need = 2 * max(self.sizes)
        self.canvas = need if canvas is None else int(canvas)
        if self.canvas < need:
            raise ValueError(f"canvas must be >= {need} px (each quadrant fits a {max(self.sizes)} px digit), got {canvas!r}")
        self.length = (10000 if split == "train" else 2000) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.seed, self.threshold, self.ignore_index = int(seed), float(threshold), int(ignore_index)
        self.normalize = normalize
        # test/val images use the MNIST test digits, with a different stream of positions
        self.split_id = 0 if split == "train" else 1
        self.images, self.labels = mnist_tensors("train" if split == "train" else "test", data_dir, download)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of {self.length} samples")
        rng = np.random.default_rng([self.seed, self.split_id, i])
        q = self.canvas // 2
        img = torch.zeros(self.canvas, self.canvas)
        target = torch.zeros(self.canvas, self.canvas, dtype=torch.int64)
        digits = rng.integers(0, len(self.labels), size=4)
        which = rng.choice(len(self.scales), size=4, p=self.probs)
        for k in range(4):
            size = self.sizes[which[k]]
            y = (k // 2) * q + int(rng.integers(0, q - size + 1))
            x = (k % 2) * q + int(rng.integers(0, q - size + 1))
            d = _upscale(self.images[digits[k]], size)
            lab = torch.zeros(size, size, dtype=torch.int64)
            lab[d > 0] = self.ignore_index
            lab[d > self.threshold] = int(self.labels[digits[k]]) + 1
            img[y : y + size, x : x + size] = d
            target[y : y + size, x : x + size] = lab
        img = img[None]
        if self.normalize:
            img = (img - MNIST_MEAN) / MNIST_STD
        return img, target
