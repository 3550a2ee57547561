"""Image folders: ``folder:PATH`` data sets for fine-tuning (one sub-folder per class) and
unlabelled folders for calibration, with the traps of real folders turned into clear errors.

Layout for fine-tuning: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` (``test/`` or
``validation/`` also work for validation). Without a validation folder, ``val_split``
holds out a fixed fraction of the training images; without it, asking for the
validation split is an error (validating on the training images would report
training accuracy). Every image file is opened once (header only) when the data set is
built, so an unreadable file is named before any work starts. Grayscale folders load
as 1-channel images (``channels=None`` detects it; 1 or 3 forces a mode).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)  # the ImageNet statistics averaged over R, G, B
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_VAL_NAMES = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test", "val", "validation")}


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, sorted), by the extensions torchvision reads."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def check_images(files: list[Path], name: str) -> None:
    """Open every file's header; raise ``ValueError`` naming the files that are not readable images."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018 - reading the header is the check
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append(f"{f} ({type(e).__name__}: {str(e).splitlines()[0][:80]})" if str(e) else str(f))
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(f"{name}: {len(bad)} file(s) are not readable images: {shown}. Remove or replace them")


def detect_channels(files: list[Path], sample: int = 32) -> int:
    """1 when every sampled image (up to ``sample``, spread over the list) is grayscale, else 3."""
    from PIL import Image

    if not files:
        return 3
    step = max(1, len(files) // sample)
    for f in files[::step][:sample]:
        with Image.open(f) as im:
            if im.mode not in _GRAY_MODES:
                return 3
    return 1


class ImageLoader:
    """Open an image file as ``mode`` ("RGB" or "L"); a file that fails names itself (picklable for workers)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert(self.mode)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}. Remove or replace it") from None


def transform(image_size: int, train: bool, channels: int, normalize: bool = True):
    """ImageNet-style transforms: random-resized crop and flip (train), resize to 8/7 and centre crop (eval)."""
    import torchvision.transforms as T

    if train:
        t = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        t = [T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size)]
    t.append(T.ToTensor())
    if normalize:
        t.append(T.Normalize(*((GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD))))
    return T.Compose(t)


class FolderSubset(torch.utils.data.Subset):
    """``Subset(base, indices)`` that keeps ``classes`` and ``channels`` of ``base`` when it has them."""

    def __init__(self, base, indices: list[int]):
        super().__init__(base, list(indices))
        for attr in ("classes", "channels"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))


def _channels(files: list[Path], channels: int | None, name: str) -> int:
    if channels is None:
        return detect_channels(files)
    if channels not in (1, 3):
        raise ValueError(f"{name}: channels must be 1, 3 or None (detect), got {channels!r}")
    return channels


def _labelled(root: Path, name: str, train: bool, image_size: int, channels: int | None, normalize: bool):
    import torchvision.datasets as tvd

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{name}: {root} has no class sub-folders: fine-tuning needs labels, one sub-folder per class "
            f"({root}/<class>/*.jpg). A flat folder of images works for calibration, which needs no labels"
        )
    files = image_files(root)
    if not files:
        raise ValueError(f"{name}: no image files under {root}")
    check_images(files, name)
    ch = _channels(files, channels, name)
    ds = tvd.ImageFolder(str(root), transform=transform(image_size, train, ch, normalize),
                         loader=ImageLoader("L" if ch == 1 else "RGB"))
    ds.channels = ch
    return ds


def image_folder(
    path: str | os.PathLike,
    split: str = "train",
    *,
    image_size: int = 224,
    augment: bool | None = None,
    normalize: bool = True,
    channels: int | None = None,
    val_split: float | None = None,
    split_seed: int = 0,
) -> Dataset:
    """A labelled image folder as a data set of ``(C, image_size, image_size)`` tensors and class indices.

    ``split``: ``"train"`` (``PATH/train`` if it exists, else ``PATH``), ``"val"``/``"test"``
    (``PATH/val``, ``PATH/validation`` or ``PATH/test``). ``val_split``: a fraction in (0, 1)
    of the training images held out as the validation split (a fixed draw by ``split_seed``)
    when there is no validation folder. ``augment`` defaults to on for training.
    ``channels``: 1 (grayscale), 3 (RGB) or None to detect from the images.
    """
    from .datasets import _check_split

    _check_split(split, ("train", "val", "test"))
    name = f"folder:{path}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} is not a directory (expected one sub-folder per class)")
    if val_split is not None and not (isinstance(val_split, (int, float)) and 0 < val_split < 1):
        raise ValueError(f"{name}: val_split must be a fraction in (0, 1), e.g. 0.1, got {val_split!r}")
    train = split == "train" if augment is None else augment
    held = next((root / n for n in _VAL_NAMES["val"] if (root / n).is_dir()), None)
    if split != "train" and held is not None:
        found = next(root / n for n in _VAL_NAMES[split] if (root / n).is_dir())
        return _labelled(found, name, train, image_size, channels, normalize)
    train_root = root / "train" if (root / "train").is_dir() else root
    if split != "train" and val_split is None:
        raise ValueError(
            f"{name}: no val/ or test/ sub-folder, so there is nothing to validate on (validating on the "
            f"training images would report training accuracy). Put held-out images in {root}/val/<class>/, "
            f"or hold out a fraction of the training images with val_split (e.g. 0.1)"
        )
    ds = _labelled(train_root, name, train, image_size, channels, normalize)
    if val_split is None or held is not None:
        return ds
    n = len(ds)
    n_val = max(1, round(n * val_split))
    if n_val >= n:
        raise ValueError(f"{name}: val_split={val_split} leaves no training image out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return FolderSubset(ds, sorted(order[n_val:] if split == "train" else order[:n_val]))


class UnlabelledImages(Dataset):
    """Every image under a folder (any layout, no labels): ``(image, -1)`` samples for calibration."""

    def __init__(self, path: str | os.PathLike, *, image_size: int = 224, channels: int | None = None,
                 normalize: bool = True):
        self.name = f"folder:{path}"
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: {self.root} is not a directory")
        self.files = image_files(self.root)
        if not self.files:
            raise ValueError(f"{self.name}: no image files under {self.root}")
        check_images(self.files, self.name)
        self.channels = _channels(self.files, channels, self.name)
        self.classes: list[str] = []
        self.loader = ImageLoader("L" if self.channels == 1 else "RGB")
        self.transform = transform(image_size, False, self.channels, normalize)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(self.loader(str(self.files[i]))), -1
