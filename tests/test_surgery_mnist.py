"""Function preservation on a trained network: MNIST, one epoch, convert, compare test accuracy."""

import os

import pytest
import torch
import torch.nn.functional as F

import njetify

from surgery_models import MnistCNN

ROOT = "/work/shared/data"


def _mnist():
    tv = pytest.importorskip("torchvision")
    if not os.path.isdir(os.path.join(ROOT, "MNIST", "raw")):
        pytest.skip(f"MNIST not found under {ROOT}")
    out = []
    for train in (True, False):
        ds = tv.datasets.MNIST(ROOT, train=train, download=False)
        x = (ds.data.float().div(255).sub(0.1307).div(0.3081)).unsqueeze(1)
        out += [x, ds.targets]
    return out


@torch.no_grad()
def _accuracy(model, x, y):
    model.eval()
    return sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(1000), y.split(1000))) / len(y) * 100


@pytest.mark.slow
def test_mnist_accuracy_preserved_by_calibrated_conversion():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = _mnist()
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for idx in torch.randperm(len(ytr)).split(128):  # one epoch
        opt.zero_grad()
        F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
    base = _accuracy(model, xte, yte)
    calib = list(xtr[:512].split(128))  # four calibration batches from the training set
    figures = {"original": base}
    for name, kw in {
        "order 3, calibrated": {"order": 3, "calibration_data": calib},
        "order 3, weight-space": {"order": 3},
        "order 2, calibrated": {"order": 2, "calibration_data": calib},
    }.items():
        conv, report = njetify.convert(model, **kw)
        assert report.calibration["fit"] == ("output-matching" if "calibration_data" in kw else "weight-space")
        figures[name] = _accuracy(conv, xte, yte)
    print("MNIST test accuracy (%):", {k: round(v, 2) for k, v in figures.items()})
    assert base > 90
    assert abs(figures["order 3, calibrated"] - base) <= 1.0
