"""torchvision datasets by name, where data lives (``NJETIFY_DATA``), and clear offline errors."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset."""

    name: str
    task: str  # "classification" | "segmentation"
    num_classes: int  # segmentation: including background (class 0)
    in_channels: int
    input_size: tuple[int, int] | None  # (H, W) of every sample; None when it varies
    mean: tuple[float, ...]
    std: tuple[float, ...]


# name -> (torchvision class, num_classes, channels, size, mean, std, expected files under data_dir)
_TV = {
    "mnist": ("MNIST", 10, 1, 28, (0.1307,), (0.3081,), "MNIST/raw/train-images-idx3-ubyte (+ the other 3 idx files)"),
    "fashion-mnist": (
        "FashionMNIST", 10, 1, 28, (0.2860,), (0.3530,),
        "FashionMNIST/raw/train-images-idx3-ubyte (+ the other 3 idx files)",
    ),
    "cifar10": (
        "CIFAR10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py/ (extracted cifar-10-python.tar.gz)",
    ),
    "cifar100": (
        "CIFAR100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "cifar-100-python/ (extracted cifar-100-python.tar.gz)",
    ),
    "svhn": (
        "SVHN", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "train_32x32.mat / test_32x32.mat / extra_32x32.mat",
    ),
}


def default_data_dir() -> str:
    """Where data sets live unless a folder is given: ``$NJETIFY_DATA``, else ``./data``."""
    return os.environ.get("NJETIFY_DATA") or "data"


def torchvision_names() -> tuple[str, ...]:
    """Names of the torchvision datasets :func:`torchvision_dataset` knows."""
    return tuple(_TV)


def torchvision_info(name: str) -> DatasetInfo:
    """:class:`DatasetInfo` of a torchvision dataset by name."""
    cls, k, c, s, mean, std, _ = _TV[name]
    return DatasetInfo(name, "classification", k, c, (s, s), mean, std)


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))}, got {split!r}")


def _load_tv(name: str, split: str, data_dir: str | os.PathLike, download: bool, transform) -> Dataset:
    import torchvision.datasets as tvd

    cls_name, *_, where = _TV[name]
    cls = getattr(tvd, cls_name)
    root = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
    if name == "svhn":
        _check_split(split, ("train", "test", "extra"))
        kwargs = {"split": split}
    else:
        _check_split(split, ("train", "test", "val"))
        kwargs = {"train": split == "train"}  # "val" and "test" both mean the official test split
    try:
        return cls(str(root), download=download, transform=transform, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
        if download:
            raise RuntimeError(f"{name}: download into {root} failed: {e}") from e
        raise FileNotFoundError(
            f"{name} ({split}) not found under data_dir={str(root)!r}: expected {root / where}. "
            f"Put the files there (or point data_dir / $NJETIFY_DATA at the folder that holds them), or pass "
            f"download=True to fetch them (needs internet)."
        ) from None


def torchvision_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    augment: bool | None = None,
    normalize: bool = True,
) -> Dataset:
    """A torchvision classification dataset by name; samples ``(C, H, W)`` float tensors and an int label.

    ``augment`` (default: on for ``split="train"``) adds random crops with 4 px padding
    (CIFAR, SVHN) and horizontal flips (CIFAR). ``normalize`` subtracts the
    dataset mean and divides by its std per channel.
    """
    import torchvision.transforms as T

    if name not in _TV:
        raise ValueError(f"name must be one of {', '.join(map(repr, _TV))}, got {name!r}")
    info = torchvision_info(name)
    augment = split == "train" if augment is None else augment
    t = []
    if augment and name in ("cifar10", "cifar100", "svhn"):
        t.append(T.RandomCrop(info.input_size, padding=4))
        if name != "svhn":  # flipping digits changes them
            t.append(T.RandomHorizontalFlip())
    t.append(T.ToTensor())
    if normalize:
        t.append(T.Normalize(info.mean, info.std))
    return _load_tv(name, split, data_dir, download, T.Compose(t))


def mnist_tensors(split: str, data_dir: str | os.PathLike, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw MNIST ``(N, 28, 28)`` uint8 images and ``(N,)`` int64 labels (``split`` train or test).

    Cached per (split, folder): the synthetic datasets share one copy; treat it as read-only.
    """
    data_dir = data_dir if data_dir is not None else default_data_dir()
    return _mnist_cached(split, str(Path(data_dir).expanduser().resolve()), download)


@functools.lru_cache(maxsize=4)
def _mnist_cached(split: str, root: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _load_tv("mnist", split, root, download, None)
    return ds.data, ds.targets
