"""``njetify rescale`` through typer's CliRunner: a rescaled file that inspect reads, and its bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cli_support import cli_invoker, registered

TINY = "tinynet_cli_rescale_test"


class TinyNet(nn.Module):
    """conv 3x3 → conv 3x3 s2 → conv 3x3 → global pool → linear."""

    def __init__(self, num_classes=None, in_chans=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans or 1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes or 5)

    def forward(self, x):
        x = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with registered(TINY, TinyNet):
        yield TINY


@pytest.fixture
def run(tmp_path, monkeypatch):
    return cli_invoker(tmp_path, monkeypatch)


@pytest.fixture
def converted(run):
    res = run("convert", TINY, "--in-chans", "1", "--input-size", "1x28x28", "--out", "tiny.safetensors")
    assert res.exit_code == 0, res.output
    return "tiny.safetensors"


def test_rescale_writes_a_model_inspect_reads(run, converted, tmp_path):
    res = run("rescale", converted, "--factor", "2", "--out", "big.safetensors")
    assert res.exit_code == 0, res.output
    assert "input 28×28 → 56×56" in res.output and "conv2.subsample" in res.output
    res = run("inspect", "big.safetensors")
    assert res.exit_code == 0, res.output
    assert "built for inputs of 28×28 px; rescaled ×2 → 56×56" in res.output
    assert "input 1x56x56" in res.output  # the summary runs at the size it is built for now
    res = run("rescale", "big.safetensors", "--factor", "0.5", "--out", "back.safetensors")
    assert res.exit_code == 0, res.output
    assert "built for inputs of 28×28 px" in run("inspect", "back.safetensors").output


@pytest.mark.parametrize("args, message", [
    (["--factor", "0"], "--factor: must be a positive number"),
    (["--factor", "nan"], "--factor: must be a positive number"),
    (["--factor", "two"], "--factor: must be a positive number"),
    (["--factor", "2", "--min-sigma", "-1"], "--min-sigma: must be a positive number"),
    (["--factor", "2", "--out", "x.pt"], "--out: must end in .safetensors"),
])
def test_bad_input_is_one_line_and_exit_2(run, converted, args, message):
    if "--out" not in args:
        args = [*args, "--out", "x.safetensors"]
    res = run("rescale", converted, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_missing_file(run):
    res = run("rescale", "nope.safetensors", "--factor", "2", "--out", "x.safetensors")
    assert res.exit_code == 2 and "no such file" in res.output
