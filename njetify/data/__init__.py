"""Datasets for fine-tuning: torchvision by name, image folders and the paper's MNIST tasks.

``get_dataset(name, split, data_dir)`` is the single entry point; names:
``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``folder:PATH``,
``mnist-resized`` (option ``scale``), ``mnist-multiscale-seg`` (options ``scales``,
``probs``, ``canvas``, ``length``, ``seed``).
"""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from .datasets import DatasetInfo, default_data_dir, torchvision_dataset, torchvision_info, torchvision_names
from .folders import UnlabelledImages, image_folder
from .loaders import ResumableSampler, make_loader, make_loaders
from .synthetic import IGNORE_INDEX, MNIST_MEAN, MNIST_STD, MnistMultiscaleSeg, MnistResized

SYNTHETIC = ("mnist-resized", "mnist-multiscale-seg")


def dataset_names() -> tuple[str, ...]:
    """Every name :func:`get_dataset` accepts (``folder:PATH`` stands for any path)."""
    return torchvision_names() + SYNTHETIC + ("folder:PATH",)


def get_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                download: bool = False, **opts) -> Dataset:
    """The dataset ``name`` (see :func:`dataset_names`) for ``split`` (``train``/``val``/``test``).

    ``data_dir``: the folder holding the files (default ``$NJETIFY_DATA``, else ``./data``).
    ``opts`` go to the dataset: ``augment``/``normalize`` (torchvision),
    ``image_size``/``channels``/``val_split`` (folder, see :func:`image_folder`), ``scale``
    (mnist-resized), ``scales``/``probs``/``canvas``/``length``/``seed`` (mnist-multiscale-seg).
    Missing files without ``download`` raise ``FileNotFoundError`` saying where to put them.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name.startswith("folder:"):
        return image_folder(name[len("folder:"):], split, **opts)
    if name in torchvision_names():
        return torchvision_dataset(name, split, data_dir, download, **opts)
    if name == "mnist-resized":
        return MnistResized(split, data_dir, download=download, **opts)
    if name == "mnist-multiscale-seg":
        return MnistMultiscaleSeg(split, data_dir, download=download, **opts)
    raise ValueError(f"name must be one of {', '.join(map(repr, dataset_names()))}, got {name!r}")


def limit(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` samples of ``dataset`` (all of it when ``n`` is None or not smaller).

    The draw depends on ``seed`` only, so a resumed run sees the same subset. Keeps the
    ``classes``/``channels`` attributes of folder data sets.
    """
    if n is None or n >= len(dataset):
        return dataset
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"limit: n must be a positive int, got {n!r}")
    import torch

    from .folders import FolderSubset

    idx = sorted(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return FolderSubset(dataset, idx)


def dataset_info(name: str, dataset: Dataset | None = None, **opts) -> DatasetInfo:
    """Task, classes, channels and input size of dataset ``name`` (with its ``opts``).

    For ``folder:PATH`` pass the loaded ``dataset`` (classes are its sub-folders).
    """
    if name in torchvision_names():
        return torchvision_info(name)
    mean, std = (MNIST_MEAN,), (MNIST_STD,)
    if name == "mnist-resized":
        s = round(28 * float(opts.get("scale", 1.0)))
        return DatasetInfo(name, "classification", 10, 1, (s, s), mean, std)
    if name == "mnist-multiscale-seg":
        if isinstance(dataset, MnistMultiscaleSeg):
            c = dataset.canvas
        else:
            scales = opts.get("scales", (1, 2, 3, 4))
            scales = (scales,) if isinstance(scales, (int, float)) else scales
            c = opts.get("canvas") or 2 * max(round(28 * float(s)) for s in scales)
        return DatasetInfo(name, "segmentation", 11, 1, (c, c), mean, std)
    if name.startswith("folder:"):
        if dataset is None or not hasattr(dataset, "classes"):
            raise ValueError("dataset_info: folder datasets need the loaded dataset (its classes are its sub-folders)")
        s = int(opts.get("image_size", 224))
        from .folders import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD

        c = getattr(dataset, "channels", 3)
        mean, std = (GRAY_MEAN, GRAY_STD) if c == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        return DatasetInfo(name, "classification", len(dataset.classes), c, (s, s), mean, std)
    raise ValueError(f"name must be one of {', '.join(map(repr, dataset_names()))}, got {name!r}")


__all__ = [
    "DatasetInfo", "IGNORE_INDEX", "MnistMultiscaleSeg", "MnistResized", "ResumableSampler", "UnlabelledImages",
    "dataset_info", "dataset_names", "default_data_dir", "get_dataset", "image_folder", "limit", "make_loader",
    "make_loaders", "torchvision_dataset",
]
