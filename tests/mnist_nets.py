"""Three structurally different networks trained on MNIST in seconds, for the calibration tests
and ``benchmarks/calibration_accuracy.py``.

* ``plain``: 5×5 conv, BatchNorm, a 3×3/2 max-pool, a strided 3×3 conv, flatten → Linear;
* ``resnet``: a CIFAR-style ResNet-8 (option-A shortcuts, strided first convs of stages 2, 3);
* ``mobile``: MobileNet-like depthwise-separable blocks (strided depthwise convs), global pool.

:func:`trained` trains each once per process (``N_TRAIN`` digits, Adam, seed 0, BatchNorm
statistics re-estimated) and caches the weights; :func:`mnist` loads the data from ``../shared/data`` (relative to the
worktree root) and skips the calling test when it is absent.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from njetify.models.cifar_resnet import CifarResNet

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
N_TRAIN = 12_000
NAMES = ("plain", "resnet", "mobile")


def _cbr(cin, cout, k, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class PlainNet(nn.Module):
    """5×5 conv → 3×3/2 max-pool → 3×3 → strided 3×3 → 3×3 → flatten → Linear (28×28 inputs)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_cbr(1, 16, 5), nn.MaxPool2d(3, 2, 1),  # 14×14
            *_cbr(16, 32, 3), *_cbr(32, 32, 3, stride=2),  # 7×7
            *_cbr(32, 32, 3),
        )
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class MobileNet(nn.Module):
    """Stem 3×3, then depthwise 3×3 + pointwise 1×1 blocks (two strided), global pool, Linear."""

    def __init__(self, width=16):
        super().__init__()
        w = width
        layers = _cbr(1, w, 3)
        for cin, cout, stride in ((w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)):
            layers += _cbr(cin, cin, 3, stride, groups=cin) + _cbr(cin, cout, 1)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build(name: str) -> nn.Module:
    """A fresh, untrained network by name (one of :data:`NAMES`)."""
    if name == "plain":
        return PlainNet()
    if name == "resnet":
        return CifarResNet(depth=8, in_chans=1, widths=(8, 16, 32))
    if name == "mobile":
        return MobileNet()
    raise ValueError(f"unknown network {name!r}; choose from {NAMES}")


@functools.lru_cache(maxsize=1)
def _load():
    import torchvision

    if not (DATA / "MNIST" / "raw").is_dir():
        return None
    out = []
    for train in (True, False):
        ds = torchvision.datasets.MNIST(os.fspath(DATA), train=train, download=False)
        x = ds.data.float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
        out += [x, ds.targets]
    return tuple(out)


def mnist():
    """``(x_train, y_train, x_test, y_test)``, normalised; skips the calling test without the data."""
    data = _load()
    if data is None:
        import pytest

        pytest.skip(f"MNIST not found under {DATA.resolve()}")
    return data


def available() -> bool:
    """True when the MNIST files are present."""
    return _load() is not None


@functools.lru_cache(maxsize=None)
def _trained_state(name: str) -> dict:
    xtr, ytr, _, _ = mnist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is faster here than two contended ones
    try:
        torch.manual_seed(0)
        model = build(name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        perm = torch.randperm(len(ytr))
        for idx in perm[:N_TRAIN].split(128):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        _reestimate_bn(model, xtr[perm[:2048]])
    finally:
        torch.set_num_threads(threads)
    return copy.deepcopy(model.state_dict())


@torch.no_grad()
def _reestimate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics as plain averages over ``x`` (after one short epoch the
    momentum averages still remember the first steps)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for xb in x.split(256):
        model(xb)
    for bn in bns:
        bn.momentum = 0.1


def trained(name: str, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """Network ``name`` trained on ``N_TRAIN`` digits (cached per process, and in ``cache_dir`` when
    given: ``<cache_dir>/<name>.pt`` is read if present, else written), in eval mode."""
    model = build(name)
    path = None if cache_dir is None else Path(cache_dir) / f"{name}.pt"
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    state = _trained_state(name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    model.load_state_dict(state)
    return model.eval()


def calibration_batches(count: int = 4, size: int = 128) -> list[torch.Tensor]:
    """``count`` batches of ``size`` training digits (the first ones; disjoint from nothing the test uses)."""
    xtr = mnist()[0]
    return list(xtr[-count * size:].split(size))


@torch.no_grad()
def accuracy(model: nn.Module, x=None, y=None) -> float:
    """Test accuracy in percent (the full 10k test set by default)."""
    if x is None:
        _, _, x, y = mnist()
    model.eval()
    hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(1000), y.split(1000)))
    return 100.0 * hits / len(y)
