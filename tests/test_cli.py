"""The njetify command line through typer's CliRunner: every command, every error path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from njetify.cli import app
from njetify.models import registry

TINY = "tinynet_cli_test"
MNIST_ROOT = "/work/shared/data"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TinyNet(nn.Module):
    """conv 3x3 s2 → ReLU → conv 3x3 → max-pool 2 → global pool → linear: converts in well under a second."""

    def __init__(self, num_classes=None, in_chans=None):
        super().__init__()
        c = in_chans or 3
        self.conv1 = nn.Conv2d(c, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6, num_classes or 5)

    def forward(self, x):
        x = self.pool(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    registry.register_model(TINY, description="test-only tiny CNN", overwrite=True)(TinyNet)
    yield TINY
    registry._BUILTINS.pop(TINY, None)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI inside tmp_path with an 80-column terminal and no colour."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args, env=None):
        torch.manual_seed(0)
        return runner.invoke(app, list(args), env={"COLUMNS": "80", "NO_COLOR": "1", **(env or {})})

    return invoke


@pytest.fixture
def converted(run, tmp_path):
    res = run("convert", TINY, "--input-size", "3x16x16", "--out", "tiny.safetensors")
    assert res.exit_code == 0, res.output
    return tmp_path / "tiny.safetensors"


def assert_user_error(res, *needles):
    """Exit code 2, one red 'error:' message on stderr naming the problem, no traceback."""
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    text = " ".join(res.stderr.split())
    for n in needles:
        assert n in text, text


def test_version_and_help(run):
    """Every command has examples, fits 80 columns and shows no type labels (<bool>, <str>)."""
    from njetify import __version__

    res = run("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"njetify {__version__}"
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("convert", "finetune", "inspect", "plot", "bake", "models", "recipes"):
        assert cmd in res.stdout
        sub = run(cmd, "--help")
        assert sub.exit_code == 0, sub.output
        assert "Examples" in sub.stdout and f"njetify {cmd}" in sub.stdout
        assert max(len(line) for line in sub.stdout.splitlines()) <= 80
        assert not re.search(r"<(bool|str|path|int|float)>|\{[A-Z]+\}", sub.stdout), sub.stdout


def test_models_and_recipes(run):
    res = run("models")
    assert res.exit_code == 0 and "resnet32" in res.stdout and "library models:" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    res = run("models", "resnet3", "--builtin", "--plain")
    assert res.exit_code == 0 and res.stdout.split() == ["resnet32"]
    res = run("models", "no-such-architecture-xyz", "--builtin")
    assert res.exit_code == 0 and "no model name matches" in res.stdout
    res = run("recipes")
    assert res.exit_code == 0 and "paper-resnet32" in res.stdout and "default" in res.stdout
    res = run("recipes", "paper-resnet32")
    assert res.exit_code == 0 and "order: 3" in res.stdout and "subsample:" in res.stdout
    assert_user_error(run("recipes", "paper-resnet23"), "paper-resnet32")


@pytest.mark.slow
def test_models_lists_library_names(run):
    res = run("models", "tv:resnet1*")
    assert res.exit_code == 0, res.output
    assert "tv:resnet18" in res.stdout and "tv:resnet101" in res.stdout and "resnet32" not in res.stdout


@pytest.mark.slow
def test_console_script_converts_resnet32(tmp_path):
    """The installed console script, offline, in a fresh directory: writes resnet32-njet.safetensors."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / ("njetify.exe" if os.name == "nt" else "njetify")
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    proc = subprocess.run([str(script), "convert", "resnet32", "--order", "3"], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "31 converted" in proc.stdout and "4 made safe" in proc.stdout
    assert "MACs @3x32x32  68.9M → 68.9M (+0.0%)" in proc.stdout  # safe mode at σ₀ runs its convs strided
    assert (tmp_path / "resnet32-njet.safetensors").is_file()
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_convert_writes_file_and_reports(run, tmp_path):
    res = run("convert", TINY, "--order", "3", "--input-size", "3x16x16")  # order 2 fails the fidelity gate
    assert res.exit_code == 0, res.output
    out = res.stdout
    for needle in ("convolutions", "conv1", "conv2", "subsampling", "params", "MACs @3x16x16", "max |Δ|"):
        assert needle in out, out
    assert max(len(line) for line in out.splitlines()) <= 80
    saved = tmp_path / f"{TINY}-njet.safetensors"
    assert saved.is_file() and str(saved.name) in out
    import njetify.io

    model = njetify.io.load(saved)
    assert sum(hasattr(m, "log_sigma") for m in model.modules()) == 2
    assert all(m.order == 3 for m in model.modules() if hasattr(m, "order"))


def test_convert_dry_run_and_json(run, tmp_path):
    res = run("convert", TINY, "--input-size", "3x16x16", "--dry-run", "--json", "--subsample-r", "4")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout is JSON and nothing else
    assert doc["output"] is None and doc["input_size"] == [3, 16, 16]
    assert doc["report"]["counts"]["conv"]["converted"] == 2
    assert doc["report"]["subsample"]["r"] == 4.0
    st = doc["stats"]
    assert st["params_before"] == sum(p.numel() for p in TinyNet().parameters())
    assert st["macs_before"] > 0 and st["macs_after"] > 0 and st["max_abs_diff"] >= 0
    assert list(tmp_path.iterdir()) == []  # --dry-run writes nothing


@pytest.mark.skipif(not (Path(MNIST_ROOT) / "MNIST" / "raw").is_dir(), reason="MNIST not at /work/shared/data")
def test_convert_calibrated_on_mnist(run):
    """--calibrate takes the input size and channels from the data set and fits data-aware."""
    res = run("convert", TINY, "--calibrate", "mnist", "--data-dir", MNIST_ROOT, "--calibrate-batches", "2",
              "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["input_size"] == [1, 28, 28]
    assert doc["report"]["calibration"]["fit"] != "weight-space" and doc["report"]["calibration"]["batches"] == 2


def test_convert_keep_subsample_and_in_chans(run):
    res = run("convert", TINY, "--input-size", "1x12x12", "--subsample", "keep", "--num-classes", "3",
              "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["stats"]["output_shape_after"] == [2, 3]
    assert doc["report"]["counts"].get("subsample", {}).get("subsampled", 0) == 0


@pytest.mark.parametrize(
    "args, needles",
    [
        (["convert", "resnt32"], ["unknown model name 'resnt32'", "Did you mean 'resnet32'"]),
        (["convert", TINY, "--input-size", "3x32"], ["--input-size", "CxHxW"]),
        (["convert", TINY, "--input-size", "axbxc"], ["--input-size", "'axbxc'"]),
        (["convert", TINY, "--weights", "missing.pth"], ["--weights", "no such file", "missing.pth"]),
        (["convert", TINY, "--subsample-r", "-1"], ["--subsample-r", "'auto' or a positive number"]),
        (["convert", TINY, "--recipe", "no-such-recipe"], ["--recipe", "no-such-recipe"]),
        (["convert", TINY, "--in-chans", "1", "--input-size", "3x8x8"], ["--in-chans is 1"]),
        (["convert", TINY, "--calibrate", "mnist", "--data-dir", "nowhere"], ["--calibrate", "not found"]),
        (["inspect", "missing.safetensors"], ["no such file", "missing.safetensors"]),
        (["bake", "missing.safetensors"], ["no such file"]),
        (["finetune", "missing.safetensors", "--data", "mnist"], ["no such file"]),
    ],
)
def test_user_errors_exit_2_without_traceback(run, args, needles):
    assert_user_error(run(*args), *needles)


def test_bad_recipe_file(run, tmp_path):
    (tmp_path / "bad.yaml").write_text("order: 3\nsubsample:\n  r: -2\n")
    assert_user_error(run("convert", TINY, "--recipe", "bad.yaml"), "--recipe", "bad.yaml", "subsample.r")


def test_not_an_njetify_file(run, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert_user_error(run("inspect", "junk.safetensors"), "junk.safetensors")


def test_offline_pretrained_is_a_user_error(run, monkeypatch):
    import urllib.error

    import njetify.models

    def offline(*a, **k):
        raise RuntimeError("download failed") from urllib.error.URLError("[Errno -3] name resolution")

    monkeypatch.setattr(njetify.models, "create_model", offline)
    assert_user_error(run("convert", "tv:resnet18", "--pretrained"), "no internet", "--weights PATH")


def test_internal_error_exit_1_and_debug_traceback(run, monkeypatch):
    import njetify.summary

    def boom(*a, **k):
        raise RuntimeError("something broke")

    monkeypatch.setattr(njetify.summary, "compare_models", boom)
    res = run("convert", TINY, "--input-size", "3x8x8", "--dry-run")
    assert res.exit_code == 1
    assert "internal error: RuntimeError: something broke" in " ".join(res.stderr.split())
    assert "--debug" in res.stderr and "Traceback" not in res.stderr
    for args in (["--debug", "convert"], ["convert", "--debug"]):
        res = run(*args, TINY, "--input-size", "3x8x8", "--dry-run")
        assert res.exit_code == 1 and "Traceback" in res.stderr and "boom" in res.stderr


def test_no_color_respected(run):
    colored = run("convert", "resnt32", env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    assert "\x1b[" in colored.stderr and "31m" in colored.stderr  # red when colour is on
    plain = run("convert", "resnt32", env={"NO_COLOR": "1", "FORCE_COLOR": "1"})
    codes = set(ANSI.findall(plain.stderr))
    assert not any("31" in c or "38;" in c for c in codes), codes  # no colour, at most bold


def test_inspect_table_json_and_plots(run, converted, tmp_path):
    res = run("inspect", converted.name)
    assert res.exit_code == 0, res.output
    assert "input 3x16x16" in res.stdout and "N-Jet N=3" in res.stdout and "RF₀" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    res = run("inspect", converted.name, "--json", "--input-size", "3x20x20")
    doc = json.loads(res.stdout)
    assert doc["input_size"] == [3, 20, 20] and doc["njet_count"] == 2
    conv1 = next(r for r in doc["layers"] if r["path"] == "conv1")
    assert conv1["rf"] == [3, 3] and conv1["out_size"] == [10, 10]  # the layer carries its subsampling
    res = run("inspect", converted.name, "--plot", "figs", "--layer", "conv2")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["filters_conv2.png", "sigma_layers.png", "sizes.png"]
    assert all((tmp_path / "figs" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert_user_error(run("inspect", converted.name, "--plot", "figs", "--layer", "head"), "--layer", "conv1")


def test_round_trip_convert_inspect_bake(run, converted, tmp_path):
    """convert → (σ changes) → inspect → bake: the baked program computes the converted model's outputs."""
    import njetify.io

    model = njetify.io.load(converted)
    with torch.no_grad():
        model.get_submodule("conv1").log_sigma.fill_(0.0)  # σ = 1: 5x5 filter, subsample factor 1/4
    njetify.io.save(model, tmp_path / "moved.safetensors")
    res = run("inspect", "moved.safetensors", "--json")
    layers = {r["path"]: r for r in json.loads(res.stdout)["layers"]}
    assert layers["conv1"]["size"] == 5 and layers["conv1"]["sigma"] == pytest.approx(1.0)
    sub = next(r for r in layers.values() if r["kind"] == "subsample")
    assert sub["out_size"] == [4, 4] and sub["out_size_original"] == [8, 8]
    res = run("bake", "moved.safetensors", "--out", "moved.pt2")
    assert res.exit_code == 0, res.output
    assert "1× 5x5" in res.stdout and "max |Δ| vs converted 0" in res.stdout
    program = torch.export.load(str(tmp_path / "moved.pt2")).module()
    assert not any("sigma" in k for k in program.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(program(x), model.eval()(x))
    assert_user_error(run("bake", "moved.safetensors", "--out", "x.onnx"), "--out", ".pt2")


def test_finetune_on_an_image_folder(run, converted, tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for k, color in enumerate(((255, 0, 0), (0, 0, 255))):
            d = tmp_path / "imgs" / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), tuple(max(0, c - 20 * i) for c in color)).save(d / f"{i}.png")
    assert_user_error(run("finetune", converted.name, "--data", f"folder:{tmp_path / 'imgs'}"),
                      "2 classes but the model has 5 outputs", "--num-classes 2")
    res = run("convert", TINY, "--input-size", "3x16x16", "--num-classes", "2", "--out", "two.safetensors")
    assert res.exit_code == 0, res.output
    res = run("finetune", "two.safetensors", "--data", f"folder:{tmp_path / 'imgs'}", "--epochs", "1",
              "--batch-size", "4", "--lr", "0.01", "--out", "run")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "fine-tuning done" in res.stdout and "σ" in res.stdout
    for name in ("history.json", "last.pt", "model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [0, 1]
    res = run("inspect", "run/model.safetensors")
    assert res.exit_code == 0, res.output
    assert_user_error(run("finetune", "two.safetensors", "--data", "mnist", "--data-dir", "nowhere"), "--data", "mnist")
    assert_user_error(run("finetune", "two.safetensors", "--data", f"folder:{tmp_path / 'imgs'}", "--resume",
                          "--out", "fresh"), "--resume")


def _folder(root, mode="RGB", classes=2, n=4, split=True):
    from PIL import Image

    for s in ("train", "val") if split else ("",):
        for k in range(classes):
            d = root / s / f"c{k}" if s else root / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                v = 90 * k + 10 * i
                Image.new(mode, (18, 18), v if mode == "L" else (v, 0, 255 - v)).save(d / f"{i}.png")
    return root


@pytest.fixture
def two_class(run, tmp_path):
    res = run("convert", TINY, "--input-size", "3x16x16", "--num-classes", "2", "--out", "two.safetensors")
    assert res.exit_code == 0, res.output
    _folder(tmp_path / "imgs")
    return "two.safetensors"


def test_outputs_are_not_overwritten_without_force(run, converted, tmp_path):
    before = converted.read_bytes()
    assert_user_error(run("convert", TINY, "--input-size", "3x16x16", "--out", converted.name), "exists", "--force")
    assert converted.read_bytes() == before
    res = run("convert", TINY, "--input-size", "3x16x16", "--out", converted.name, "--force", "--seed", "1")
    assert res.exit_code == 0 and converted.read_bytes() != before
    (tmp_path / "afile").write_text("x")
    assert_user_error(run("convert", TINY, "--out", "afile/m.safetensors"), "--out", "is a file")
    assert_user_error(run("convert", TINY, "--out", str(tmp_path)), "--out", "is a folder")


def test_convert_is_deterministic_with_seed(run, tmp_path):
    import njetify.io

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run("convert", TINY, "--input-size", "3x16x16", "--out", f"{name}.safetensors", "--seed", str(seed)
                   ).exit_code == 0
    a, b, c = (njetify.io.load(tmp_path / f"{n}.safetensors").state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_bake_writes_nothing_when_onnx_fails(run, converted, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_user_error(run("bake", converted.name, "--out", "m.pt2", "--onnx", "afile/m.onnx"), "--onnx")
    assert not (tmp_path / "m.pt2").exists()
    res = run("bake", converted.name)
    assert res.exit_code == 0 and (tmp_path / "tiny-baked.pt2").is_file()  # next to the input
    assert_user_error(run("bake", converted.name), "tiny-baked.pt2", "exists", "--force")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_inspect_a_pytorch_checkpoint_points_to_convert(run, tmp_path):
    torch.save(TinyNet().state_dict(), tmp_path / "ckpt.pth")
    assert_user_error(run("inspect", "ckpt.pth"), "PyTorch checkpoint", "njetify convert MODEL --weights ckpt.pth")


def test_device_that_is_not_there(run, two_class):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "--device", "cuda"),
                      "--device cuda", "no CUDA GPU", "--device cpu")
    assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "--device", "tpu"), "--device")


def test_folder_traps(run, two_class, tmp_path):
    _folder(tmp_path / "gray", mode="L")
    assert_user_error(run("finetune", two_class, "--data", "folder:gray"), "grayscale", "--in-chans 1")
    _folder(tmp_path / "nosplit", split=False)
    assert_user_error(run("finetune", two_class, "--data", "folder:nosplit"), "no val/ or test/", "--val-split 0.1")
    res = run("finetune", two_class, "--data", "folder:nosplit", "--val-split", "0.25", "--epochs", "1", "-b", "2",
              "--out", "held")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "held" / "history.json").read_text())["meta"]["val_samples"] == 2
    _folder(tmp_path / "broken")
    (tmp_path / "broken" / "train" / "c0" / "x.png").write_bytes(b"\x89PNG no image")
    assert_user_error(run("finetune", two_class, "--data", "folder:broken"), "not readable images", "x.png")
    _folder(tmp_path / "three", classes=3)
    assert_user_error(run("finetune", two_class, "--data", "folder:three"), "3 classes", "2 outputs",
                      "--num-classes 3")
    assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "-b", "64"), "--batch-size 64", "8")
    assert not any((tmp_path / d).exists() for d in ("two-finetune",))  # nothing was started


def test_calibrate_on_a_flat_folder_of_images(run, tmp_path):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    for i in range(5):
        Image.new("L", (20, 20), 40 * i).save(tmp_path / "flat" / f"{i}.jpg")
    res = run("convert", TINY, "--calibrate", "folder:flat", "--calibrate-batches", "1", "--input-size", "1x16x16",
              "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["report"]["calibration"]["batches"] == 1 and doc["input_size"] == [1, 16, 16]


def test_run_folder_resume_and_force(run, two_class, tmp_path):
    args = ["finetune", two_class, "--data", "folder:imgs", "-b", "4", "--epochs", "2", "--out", "run"]
    res = run(*args, "--max-steps", "1", "--checkpoint-every", "1")
    assert res.exit_code == 0, res.stderr
    assert "stopped by --max-steps at step 1" in " ".join(res.stdout.split())
    assert_user_error(run(*args), "already holds a run at step 1", "--resume", "--force")
    assert_user_error(run(*args, "--resume", "--force"), "--resume", "--force")
    assert_user_error(run(*args, "--resume", "--seed", "7"), "--seed 7 differs", "run.json")
    res = run("finetune", two_class, "--data", "folder:imgs", "--out", "run", "--resume")  # settings from run.json
    assert res.exit_code == 0, res.stderr
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in hist["epochs"]] == [0, 1, 2] and hist["epochs"][-1]["step"] == 4
    res = run(*args, "--force", "--max-steps", "2", "--plot")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epochs"][-1]["step"] == 2
    res = run("plot", "run", "--out", "figs")
    assert res.exit_code == 0 and sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "curves.png", "macs.png", "sigma.png", "sigma_layers.png", "sizes.png"]
    assert_user_error(run("plot", "figs"), "no history.json")


def test_nothing_to_convert_exits_2_and_writes_nothing(run, tmp_path):
    class Pointwise(nn.Module):
        def __init__(self, num_classes=None, in_chans=None):
            super().__init__()
            self.mix = nn.Conv2d(in_chans or 3, 4, 1)

        def forward(self, x):
            return self.mix(x).mean((2, 3))

    registry.register_model("pointwise_cli_test", overwrite=True)(Pointwise)
    try:
        assert_user_error(run("convert", "pointwise_cli_test", "--input-size", "3x8x8"), "nothing to convert",
                          "nothing was written")
        assert not list(tmp_path.glob("*.safetensors"))
    finally:
        registry._BUILTINS.pop("pointwise_cli_test", None)


def test_api_words_become_cli_words():
    from njetify.cli.errors import cli_words

    assert cli_words("create_model: unknown model name 'x' (njetify.list_models() lists them all)") == \
        "unknown model name 'x' ('njetify models PATTERN' lists them)"
    assert "--download" in cli_words("or pass download=True to fetch them") and "download=True" not in \
        cli_words("or pass download=True to fetch them")
    assert cli_words("give calibration_data for a data-aware fit") == "use --calibrate DATASET for a data-aware fit"


def test_detection_models_are_not_supported_yet(run):
    assert_user_error(run("convert", "tv:fasterrcnn_resnet50_fpn"), "detection model", "not supported yet")


def test_max_fit_error_sets_the_gate(run):
    """--max-fit-error 0 keeps every conv (and says how to change that), none converts every one; a bad value is one
    error naming the option."""
    import json

    bad = run("convert", TINY, "--max-fit-error", "-1", "--dry-run")
    assert bad.exit_code == 2 and "--max-fit-error" in bad.output and "Traceback" not in bad.output
    kept = run("convert", TINY, "--max-fit-error", "0", "--input-size", "3x16x16", "--dry-run", "--json")
    doc = json.loads(kept.stdout)
    assert kept.exit_code == 0 and doc["report"]["calibration"]["reverted"] == ["conv1", "conv2"]
    allowed = run("convert", TINY, "--order", "2", "--max-fit-error", "none", "--input-size", "3x16x16", "--dry-run",
                  "--json")
    rows = json.loads(allowed.stdout)["report"]["rows"]
    assert [r["action"] for r in rows if r["kind"] == "conv"] == ["converted", "converted"]
    shown = run("convert", TINY, "--max-fit-error", "0", "--input-size", "3x16x16", "--dry-run")
    assert "raise --max-fit-error, or set it to none" in shown.output
