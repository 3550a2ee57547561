"""What a newcomer meets (issue 22): help examples that name the files convert writes, a plan line that
names --limit-val, inspect rows parent-first, PNGs never overwritten without --force, bake's factorised
layers as a neutral note."""

from __future__ import annotations

import re

import torch
from test_cli import TINY, _folder, assert_user_error, run, tiny_model  # noqa: F401 - fixtures

from njetify.cli.convert_cmd import default_out


def test_help_examples_name_the_files_convert_writes(run):
    written = default_out("resnet32")
    for cmd in ("finetune", "inspect", "bake"):
        names = set(re.findall(r"\b[\w.-]+-njet\.safetensors", run(cmd, "--help").stdout))
        assert names == {written}, (cmd, names)
    assert "--limit-val" in run("finetune", "--help").stdout


def test_inspect_lists_a_layer_before_its_subsampling(run, tmp_path):
    from njetify.cli.inspect_cmd import parent_first

    res = run("convert", "resnet20", "--input-size", "3x16x16", "--out", "r20.safetensors")
    assert res.exit_code == 0, res.output
    paths = [line.split()[0] for line in run("inspect", "r20.safetensors").stdout.splitlines() if line[:6] == "layer2"]
    assert paths.index("layer2.0.conv1") + 1 == paths.index("layer2.0.conv1.subsample"), paths

    class Row:
        def __init__(self, path):
            self.path = path

    rows = [Row(p) for p in ("a", "b.sub", "b", "c", "d.x.sub", "d.x", "e.sub")]  # e: no row of its own
    assert [r.path for r in parent_first(rows)] == ["a", "b", "b.sub", "c", "d.x", "d.x.sub", "e.sub"]


def test_plan_line_and_pngs_not_overwritten_without_force(run, tmp_path):
    assert run("convert", TINY, "--input-size", "3x16x16", "--num-classes", "2", "--out", "two.safetensors"
               ).exit_code == 0
    _folder(tmp_path / "imgs")
    res = run("finetune", "two.safetensors", "--data", "folder:imgs", "-b", "4", "--max-steps", "2", "--plot",
              "--out", "r")
    assert res.exit_code == 0, res.stderr
    plan = " ".join(res.stderr[res.stderr.index("plan:"):].split())
    assert "--max-steps, --epochs, --limit-train or --limit-val make it shorter" in plan, plan  # names --limit-val
    before = (tmp_path / "r" / "sizes.png").read_bytes()
    assert_user_error(run("plot", "r"), "RUN_DIR", "sigma.png' exists", "--force")
    assert (tmp_path / "r" / "sizes.png").read_bytes() == before
    res = run("plot", "r", "--force")
    assert res.exit_code == 0 and "wrote r/sizes.png" in res.stdout
    assert run("inspect", "r/model.safetensors", "--plot", "figs").exit_code == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "figs").iterdir()}
    assert sorted(stamp) == ["filters_conv1.png", "sigma.png", "sigma_layers.png", "sizes.png"]
    assert_user_error(run("inspect", "r/model.safetensors", "--plot", "figs"), "--plot", "exists", "--force")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "figs").iterdir()} == stamp
    assert run("inspect", "r/model.safetensors", "--plot", "figs", "--force").exit_code == 0


def test_bake_names_factorised_layers_in_a_note_not_a_warning(run, tmp_path):
    import njetify.io

    assert run("convert", TINY, "--input-size", "3x32x32", "--out", "tiny.safetensors").exit_code == 0
    model = njetify.io.load(tmp_path / "tiny.safetensors")
    with torch.no_grad():
        model.get_submodule("conv2").log_sigma.fill_(2.0)  # σ = 7.4: a 31x31 filter, cheaper factorised
    njetify.io.save(model, tmp_path / "wide.safetensors")
    # a MAC ratio (dense needs 11.7x here), not a timing: on a busy machine the measured form may be either
    res = run("bake", "wide.safetensors", "--out", "wide.pt2", "--factorised", "4")
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "warning" not in err and "note: 1 layer(s) baked as 1-D convs + a 1x1 conv" in err, err
    assert "conv2 (31x31)" in err
    never = run("bake", "wide.safetensors", "--out", "plain.pt2", "--factorised", "never")
    assert never.exit_code == 0 and "note:" not in never.stderr, never.output
    assert_user_error(run("bake", "wide.safetensors", "--out", "x.pt2", "--factorised", "often"),
                      "--factorised", "'auto', 'never' or a positive MAC ratio")
    assert not (tmp_path / "x.pt2").exists()
