"""``convert --calibrate``: the calibration batches, and a live display while the layers are refitted.

Calibration refits one converted layer after the other. :class:`CalibrationWatch` listens to
the engine's progress reports (:func:`njetify.calibration.on_progress`: layers done of the total)
and shows ``layer k/n`` with elapsed time and ETA — a bar on a terminal, else a log line every
10 s at most.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..train.progress import format_duration
from .errors import user_errors


def calibration_batches(name: str, data_dir: Path | None, batches: int, batch_size: int, download: bool,
                        image_size: int, channels: int | None):
    """The first ``batches`` batches (a fixed shuffle) of the training split of ``name`` and its info.

    ``folder:PATH`` needs no labels: every image under ``PATH/train`` (or ``PATH``) is used,
    whatever the layout; ``channels`` forces 1 or 3 (None: detected from the images).
    """
    from ..data import DatasetInfo, UnlabelledImages, dataset_info, get_dataset
    from ..data.folders import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD

    with user_errors(ValueError, FileNotFoundError, TypeError, what="--calibrate"):
        if name.startswith("folder:"):
            root = Path(name[len("folder:"):]).expanduser()
            ds = UnlabelledImages(root / "train" if (root / "train").is_dir() else root,
                                  image_size=image_size, channels=channels)
            c = ds.channels
            info = DatasetInfo(name, "classification", 0, c, (image_size, image_size),
                               *((GRAY_MEAN, GRAY_STD) if c == 1 else (IMAGENET_MEAN, IMAGENET_STD)))
        else:
            ds = get_dataset(name, "train", data_dir, download=download, augment=False)
            info = dataset_info(name, ds, image_size=image_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    out = []
    with user_errors(ValueError, what="--calibrate"):
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return out, info


def count_convertible(model: nn.Module) -> int:
    """Convolutions the conv pass converts (:func:`njetify.layers.convertible.is_convertible`): about the
    number of layers calibration refits (tied ASPP branches count one each)."""
    from ..layers.convertible import is_convertible

    return sum(is_convertible(m) for m in model.modules())


class CalibrationWatch:
    """Show calibration progress while ``njetify.convert`` runs (a context manager): a bar on a
    terminal, else a log line every 10 s at most; fed by :func:`njetify.calibration.on_progress`."""

    def __init__(self, layers: int, console):
        self.layers = max(1, layers)
        self.console = console
        self._progress = None
        self._task = None
        self._listening = None
        self._t0 = self._last = 0.0
        self._shown = 0

    def _update(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
        elif done > self._shown and time.monotonic() - self._last > 10:
            self._last, self._shown = time.monotonic(), done
            spent = time.monotonic() - self._t0
            print(f"calibrating: {done}/{total} layers done, {format_duration(spent)}, eta "
                  f"{format_duration(spent / done * (total - done))}", file=sys.stderr, flush=True)

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn

        from ..calibration import on_progress

        self._t0 = self._last = time.monotonic()
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("calibrating layer"), BarColumn(bar_width=None),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                      TimeRemainingColumn(), console=self.console, transient=True, expand=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.layers)
        self._listening = on_progress(self._update)
        self._listening.__enter__()
        return self

    def __exit__(self, *exc):
        self._listening.__exit__(*exc)
        if self._progress is not None:
            self._progress.__exit__(*exc)
        self.seconds = time.monotonic() - self._t0
