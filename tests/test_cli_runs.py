"""The installed ``njetify`` command in subprocesses, as a user runs it: fine-tuning runs that stop
(--max-steps, Ctrl-C) and continue, run folders that are not overwritten, mistakes that exit 2
with one message and write nothing, and 80-column output."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

NJETIFY = Path(sys.executable).parent / ("njetify.exe" if os.name == "nt" else "njetify")
ENV = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}


def njetify(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(NJETIFY), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def images(root: Path, n_train: int = 8, n_val: int = 2, size: int = 20, mode: str = "RGB", classes: int = 3):
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value = (70 * k + 5 * i) % 256
                Image.new(mode, (size, size), value if mode == "L" else (value, 255 - value, i)).save(d / f"{i}.png")
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_one_error(res, *needles):
    """Exit 2, stderr ends in one 'error:' message naming the problem, no traceback."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr
    assert "Traceback" not in err + res.stdout
    assert err.count("error: ") == 1 and "error: " in err, err
    text = " ".join(err[err.index("error: "):].split())
    for n in needles:
        assert n in text, text


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder with a converted ResNet-20 (3 classes, 16×16 inputs) and a 3-class image folder."""
    work = tmp_path_factory.mktemp("cli")
    res = njetify("convert", "resnet20", "--num-classes", "3", "--input-size", "3x16x16", "--out", "r20.safetensors",
                  cwd=work)
    assert res.returncode == 0, res.stderr
    images(work / "imgs")
    return work


def test_max_steps_run_reports_steps_and_sigma_then_refuses_to_overwrite(work):
    args = ["finetune", "r20.safetensors", "--data", "folder:imgs", "--max-steps", "3", "-b", "4", "--out", "run",
            "--plot"]
    res = njetify(*args, cwd=work)
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "stopped by --max-steps at step 3 (epoch 1, batch 3/6)" in out, res.stdout
    lo, hi = map(float, re.search(r"σ ([\d.]+) \.\. ([\d.]+) px over 19 N-Jet", out).groups())
    assert lo < 0.5 < hi  # σ moved, and the summary says so
    assert "plan: 3 steps" in " ".join(res.stderr.split())
    history = json.loads((work / "run" / "history.json").read_text())
    last = history["epochs"][-1]
    assert last["partial"] and last["step"] == 3 and last["epoch"] == pytest.approx(0.5)
    assert {"train", "val", "layers"} <= set(last) and last["layers"] != history["epochs"][0]["layers"]
    assert [p["step"] for p in history["steps"]] == [1, 2, 3] and len(history["steps"][0]["sigma"]) == 19
    for name in ("last.pt", "model.safetensors", "run.json", "sigma.png", "sizes.png", "curves.png"):
        assert (work / "run" / name).is_file(), name

    before = snapshot(work / "run")
    again = njetify(*args, cwd=work)
    assert_one_error(again, "already holds a run at step 3", "--resume", "--force")
    assert snapshot(work / "run") == before  # nothing changed


def _interrupted_then_resumed(work: Path, args: list[str], steps_per_epoch: int) -> str:
    """Run ``args`` into ./cut, press Ctrl-C after the second progress line, then --resume; returns the message."""
    proc = subprocess.Popen([str(NJETIFY), *args, "--out", "cut"], cwd=work, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith(f"epoch 1/2 2/{steps_per_epoch} "):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, (out, err)
    message = " ".join(err.split())
    resumed = njetify(*args[:4], "--out", "cut", "--resume", cwd=work)  # the hint: model, --data, --out, --resume
    assert resumed.returncode == 0, resumed.stderr
    return message


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume_is_bit_identical(work):
    """Ctrl-C inside epoch 1 writes a checkpoint at that step; --resume ends where an uninterrupted run ends."""
    res = njetify("convert", "resnet20", "--num-classes", "3", "--input-size", "3x64x64", "--out", "r20-64.safetensors",
                  cwd=work)
    assert res.returncode == 0, res.stderr
    images(work / "imgs64", n_train=16, size=72)
    args = ["finetune", "r20-64.safetensors", "--data", "folder:imgs64", "--epochs", "2", "-b", "8", "--limit-val", "3"]
    ref = njetify(*args, "--out", "ref", cwd=work)
    assert ref.returncode == 0, ref.stderr
    message = _interrupted_then_resumed(work, args, 6)
    step, batch = map(int, re.search(r"interrupted at step (\d+) \(epoch 1, batch (\d+)/6\)", message).groups())
    assert 0 < batch < 6 and step == batch, message  # stopped inside the first epoch
    assert "njetify finetune r20-64.safetensors --data folder:imgs64 --out cut --resume" in message
    a, b = tensors(work / "ref" / "model.safetensors"), tensors(work / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (json.loads((work / d / "history.json").read_text()) for d in ("ref", "cut"))
    assert ha["steps"] == hb["steps"]  # σ and loss at every step, identical


@pytest.mark.slow
def test_mistakes_exit_2_with_one_message_and_write_nothing(work):
    (work / "afile").write_text("not a folder")
    images(work / "gray", mode="L")
    images(work / "broken")
    (work / "broken" / "train" / "c1" / "bad.png").write_bytes(b"\x89PNG truncated")
    flat = work / "flat"
    flat.mkdir()
    for i in range(6):
        Image.new("RGB", (24, 24), (i * 40, 0, 0)).save(flat / f"{i}.jpg")
    cases = [
        (["convert", "resnet20", "--out", "afile/x.safetensors"], ["--out", "afile", "is a file"]),
        (["finetune", "r20.safetensors", "--data", "folder:imgs", "--out", "afile/run"], ["--out", "is a file"]),
        (["finetune", "r20.safetensors", "--data", "folder:broken", "--out", "b"], ["not readable images", "bad.png"]),
        (["finetune", "r20.safetensors", "--data", "folder:gray", "--out", "g"], ["grayscale", "--in-chans 1"]),
        (["finetune", "r20.safetensors", "--data", "folder:flat", "--out", "f"], ["no class sub-folders"]),
        (["bake", "r20.safetensors", "--out", "r20.pt2", "--onnx", "afile/r20.onnx"], ["--onnx", "is a file"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["finetune", "r20.safetensors", "--data", "folder:imgs", "--device", "cuda", "--out", "c"],
                      ["--device cuda", "no CUDA GPU", "--device cpu"]))
    for args, needles in cases:
        before = snapshot(work)
        assert_one_error(njetify(*args, cwd=work), *needles)
        assert snapshot(work) == before, args  # nothing half-written
    res = njetify("convert", "resnet20", "--calibrate", "folder:flat", "--calibrate-batches", "1", "--dry-run",
                  cwd=work)
    assert res.returncode == 0, res.stderr  # calibration needs no labels: a flat folder of images works
    assert "output-matching on 1 batch(es)" in res.stdout and "3x224x224" in res.stdout


@pytest.mark.slow
def test_convert_timm_resnet18_at_80_columns_shows_every_module_path(tmp_path):
    import timm

    import njetify as nj

    res = njetify("convert", "timm:resnet18", "--input-size", "3x64x64", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    _, report = nj.convert(timm.create_model("resnet18"), example_inputs=torch.randn(1, 3, 64, 64))
    firsts = {line.split(" ", 1)[0] for line in lines}
    for row in report.rows:
        assert row.path in firsts, row.path  # every row, its module path in full at the start of a line
    # reasons are numbered footnotes: the random 7×7 stem kept by the fidelity gate, then the 1×1 convs
    assert "kept [1]" in res.stdout and "[1] fidelity gate" in res.stdout and "kept [2]" in res.stdout
    assert "[2] 1x1 kernel" in res.stdout
