"""``--budget`` on ``njetify convert`` and ``njetify finetune``: the caps are reported, kept while σ learns,
saved with the run; a budget the conversion cannot meet is one readable line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import njetify
from njetify.layers import sigma_layers

from cli_support import cli_invoker, registered

TINY = "tinynet_budget_test"


class TinyNet(nn.Module):
    """conv 3x3 → ReLU → conv 3x3 → global pool → linear (keep mode: nothing to subsample)."""

    def __init__(self, num_classes=None, in_chans=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans or 3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes or 2)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with registered(TINY, TinyNet):
        yield TINY


@pytest.fixture
def run(tmp_path, monkeypatch):
    return cli_invoker(tmp_path, monkeypatch)


def _images(root):
    from PIL import Image

    for split in ("train", "val"):
        for k in range(2):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(8):
                v = 120 * k + 10 * i
                Image.new("RGB", (16, 16), (v, 0, 255 - v)).save(d / f"{i}.png")
    return root


def _error(res, *needles):
    assert res.exit_code == 2, (res.stdout, res.stderr)
    text = " ".join(res.stderr.split())
    assert text.startswith("error: ") and "Traceback" not in text, text
    for n in needles:
        assert n in text, text


def test_convert_and_finetune_with_a_budget(run, tmp_path):
    _error(run("convert", TINY, "--input-size", "3x16x16", "--subsample", "keep", "--budget", "0.5", "--dry-run"),
           "budget 0.5× is below", "at least 1")
    _error(run("convert", TINY, "--input-size", "3x16x16", "--budget", "-1", "--dry-run"), "--budget", "positive")
    res = run("convert", TINY, "--input-size", "3x16x16", "--subsample", "keep", "--budget", "2",
              "--out", "tiny.safetensors")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("budget"))
    assert "2× the original's MACs" in line and "px" in line
    _images(tmp_path / "imgs")
    res = run("finetune", "tiny.safetensors", "--data", f"folder:{tmp_path / 'imgs'}", "--epochs", "1",
              "--batch-size", "4", "--lr", "0.01", "--sigma-lr", "3", "--budget", "1.5", "--out", "run")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    limit = 1.5 * history["meta"]["macs_original"]
    assert history["meta"]["budget"] == 1.5
    assert history["steps"] and all(p["macs"] <= limit for p in history["steps"])
    tuned = njetify.load(tmp_path / "run" / "model.safetensors")  # the budget is saved with the model
    assert tuned.njetify_costs.budget == 1.5
    assert all(m.max_size <= 5 for m in sigma_layers(tuned).values())
    res = run("plot", "run", "--out", "figs")
    assert res.exit_code == 0 and (tmp_path / "figs" / "macs.png").stat().st_size > 10_000
