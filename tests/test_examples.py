"""Smoke tests of the paper-reproduction experiments: every ``examples/exp*.py --quick`` runs
end to end on MNIST (skipped when the MNIST files are not there) and writes its section,
figures and JSON into a temporary folder — never into docs/."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import _common as C  # noqa: E402

DATA = Path(C.DEFAULT_DATA)
HAVE_MNIST = (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST not found under {DATA}")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


def _run(name: str, key: str, images: list[str], tmp_path: Path) -> dict:
    threads = torch.get_num_threads()
    try:
        _load(name).main(["--quick", "--out", str(tmp_path), "--data-dir", str(DATA)])
    finally:
        torch.set_num_threads(threads)
    md = (tmp_path / "results.md").read_text()
    assert f"<!-- BEGIN {key} -->" in md and f"<!-- END {key} -->" in md
    assert "QUICK smoke run" in md  # quick results are labelled as such
    for img in images:
        png = tmp_path / "img" / img
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", img
        assert f"img/{img}" in md
    data = json.loads((tmp_path / "results" / f"{key}.json").read_text())
    assert data["meta"]["quick"] is True and data["meta"]["wall_time_s"] > 0
    return data


@needs_mnist
def test_exp1_quick(tmp_path):
    data = _run("exp1_sigma_follows_scale", "exp1", ["exp1_sigma_vs_scale.png"], tmp_path)
    assert {r["scale"] for r in data["runs"]} == {1.0, 1.5, 2.0}
    for r in data["runs"]:
        assert len(r["sigma"]) == 3 and all(s > 0 for s in r["sigma"])
        assert r["sigma_cascade"][0] == pytest.approx(r["sigma"][0])
        assert r["sigma_cascade"][0] < r["sigma_cascade"][1] < r["sigma_cascade"][2]
        assert 0.0 <= r["test_acc"] <= 100.0
    assert _finite(data["runs"])


def test_exp1_cascade_scale():
    """σ_j on a map subsampled by (1/2)^(σ_i/r) spans σ_j·2^(σ_i/r) input pixels; scales add in quadrature."""
    cascade_sigmas = _load("exp1_sigma_follows_scale").cascade_sigmas
    assert cascade_sigmas([2.0]) == [2.0]
    got = cascade_sigmas([1.0, 2.0, 3.0], r=4.0)
    step2 = 2.0 ** (1.0 / 4.0)
    step3 = step2 * 2.0 ** (2.0 / 4.0)
    assert got == pytest.approx([1.0, math.sqrt(1 + (2 * step2) ** 2), math.sqrt(1 + (2 * step2) ** 2 + (3 * step3) ** 2)])


@needs_mnist
def test_exp2_quick(tmp_path):
    data = _run("exp2_multiscale_seg", "exp2", ["exp2_miou_sigma_vs_scale.png", "exp2_sigma_per_layer.png"], tmp_path)
    res = data["results"]
    assert res["1"]["canvas"] == 28 and res["2"]["canvas"] == 56  # unit digit 14 px, canvas 2 × digit
    for key in ("1", "2"):
        assert 0.0 <= res[key]["baseline"]["miou"] <= 100.0
        assert res[key]["baseline"]["layers"] == {}  # the baseline has no N-Jet layer
        assert len(res[key]["njet-order2"]["layers"]) == 10  # every 3×3 conv of unet_small (levels=3)
        assert res[key]["njet-order4"]["mean_sigma"] > 0


@pytest.mark.slow  # three conversions with calibration and two trainings of a ResNet-20: ~1 CPU-minute
@needs_mnist
def test_exp3_quick(tmp_path):
    data = _run("exp3_convert_finetune", "exp3", ["exp3_sigma_fmaps.png"], tmp_path)
    hist = data["history"]
    assert len(hist["meta"]["njet_layers"]) == 19  # every 3×3 conv of ResNet-20
    sizes = sorted(hist["meta"]["feature_sizes_original"].values())
    assert sizes == [[8, 8], [8, 8], [16, 16], [16, 16]]  # two stride-2 stages, conv + shortcut each
    assert [r["epoch"] for r in hist["epochs"]] == [0, 1]
    assert _finite(data["accuracy"])


@needs_mnist
def test_exp4_quick(tmp_path):
    data = _run("exp4_tied_aspp", "exp4", ["exp4_tied_aspp.png"], tmp_path)
    res = data["results"]["0"]
    assert res["tied"]["head_params"] < res["untied"]["head_params"]
    assert len(res["tied"]["branch_sigma"]) == 4 and all(s > 0 for s in res["tied"]["branch_sigma"])


@pytest.mark.slow  # two trainings, two conversions with calibration and two fine-tunings: ~20-30 CPU-seconds
@needs_mnist
def test_exp5_quick(tmp_path):
    data = _run("exp5_resolution_transfer", "exp5", ["exp5_resolution_transfer.png"], tmp_path)
    (run,), (rev,) = data["trained_28"], data["trained_56"]
    assert set(run["acc"]) == {"1.0", "1.5", "2.0", "3.0"} and set(rev["acc"]) == {"1.0", "2.0"}
    assert run["acc"]["1.0"]["N-Jet rescaled"] == run["acc"]["1.0"]["N-Jet"]  # factor 1: the same network
    assert rev["floored"]["1.0"]  # × 0.5 from σ near 0.5 px: the floor is hit and named
    assert _finite(data["trained_28"]) and _finite(data["trained_56"])


def test_write_section_replaces_only_its_block(tmp_path):
    C.write_section(tmp_path, "exp2", "block-B-old")
    C.write_section(tmp_path, "exp1", "block-A")
    C.write_section(tmp_path, "exp3", "block-C")
    C.write_section(tmp_path, "exp2", "block-B-new")
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Results")
    assert md.index("block-A") < md.index("block-B-new") < md.index("block-C")
    assert "block-B-old" not in md and md.count("<!-- BEGIN exp2 -->") == 1


def test_mean_std_and_table():
    assert C.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    assert C.mean_std([5.0]) == (5.0, 0.0)
    assert C.pm([1.0, 3.0], 1) == "2.0 ± 1.4"
    assert C.md_table(["a", "b"], [[1, 2]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_parse_args_rejects_bad_threads():
    with pytest.raises(SystemExit):
        C.parse_args("x", ["--threads", "0"])
