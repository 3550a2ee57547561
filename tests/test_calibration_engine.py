"""One calibration engine: typed decisions, reverts through the surgery's Rewriter, r=auto read from
SafeSubsample.auto, and the recipe's ``calibration:`` block reaching the engine (issue 21)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import njetify
from njetify import options
from njetify.calibration import CalibrationOptions, GateDecision, LayerOptions, calibrate
from njetify.calibration.revert import auto_subsamples, fixed_r_reason
from njetify.recipes import CalibrationConfig, Recipe, RecipeError, load_recipe, resolve_recipe
from njetify.surgery.passes.calibrate import engine_options


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1, dilation=2)).eval()


def test_one_engine_with_and_without_data_returns_fits_and_decisions():
    net = _net()
    conv, _ = njetify.convert(net, max_fit_error=math.inf)
    paths = ["0", "2", "4"]
    gate = {"0": LayerOptions(max_error=None), "2": LayerOptions(max_error=math.inf), "4": LayerOptions(max_error=0.0)}
    data = calibrate(net, conv, paths, [torch.randn(2, 3, 12, 12)], layer_options=gate)
    assert [d.path for d in data.decisions] == [r.path for r in data.layers] == paths
    keep, inf, zero = data.decisions
    assert isinstance(keep, GateDecision) and keep.action == "keep" and keep.limit is None and keep.reason is None
    assert inf.action == "keep" and inf.measured == "output" and inf.error == data.layers[1].error_after
    assert zero.reverted and zero.limit == 0.0 and zero.comparison == ">" and data.layers[2].status == "reverted"
    assert zero.reason == data.layers[2].reason and f"{zero.error:.3f}" in zero.reason
    assert type(conv[4]) is nn.Conv2d  # reverted at once
    conv2, _ = njetify.convert(net, max_fit_error=math.inf)
    dry = calibrate(net, conv2, paths, None, layer_options={p: LayerOptions(max_error=0.3) for p in paths})
    assert all(d.measured == "weight-space" for d in dry.decisions)
    assert [d.reverted for d in dry.decisions] == [r.weight_error > 0.3 for r in dry.layers]


def test_the_pass_reverts_through_the_rewriter_and_rows_come_from_the_decision():
    net = _net()
    calib = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    out, report = njetify.convert(net, calibration_data=calib, rules=[{"match": "4", "max_fit_error": 0.0}])
    row = next(r for r in report.select("conv") if r.path == "4")
    assert row.action == "kept" and row.extra["reverted"] and type(out[4]) is nn.Conv2d
    assert row.reason == "fidelity gate: relative output error > max_fit_error 0: original conv kept"
    assert row.extra["gate"].startswith("fidelity gate: relative output error ") and "> max_fit_error 0" in row.extra["gate"]
    # a failing pass after the revert rolls the whole conversion back, the revert included
    from njetify.surgery import DEFAULT_PASSES, Pass

    def boom(ctx):
        raise RuntimeError("boom")

    model = _net()
    before = {p: type(m) for p, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        njetify.convert(model, inplace=True, calibration_data=calib, rules=[{"match": "4", "max_fit_error": 0.0}],
                        passes=[*DEFAULT_PASSES, Pass("boom", boom)])
    assert {p: type(m) for p, m in model.named_modules()} == before


def test_auto_r_is_what_safesubsample_stores():
    net = _net()
    conv, _ = njetify.convert(net, max_fit_error=math.inf, sigma_init="kernel")
    subs = [(p, m) for p, m in conv.named_modules() if isinstance(m, njetify.SafeSubsample) and m.source is not None]
    assert subs
    path, ss = subs[0]
    assert ss.auto and auto_subsamples(conv, ss.source) == [path] and fixed_r_reason(conv, ss.source) is None
    with torch.no_grad():  # σ moved away from σ₀: the factor is no longer 1/stride, still r = auto
        ss.source.log_sigma.add_(0.3)
    assert auto_subsamples(conv, ss.source) == [path]
    fixed, _ = njetify.convert(net, max_fit_error=math.inf, r=4)
    src = next(m.source for m in fixed.modules() if isinstance(m, njetify.SafeSubsample) and m.source is not None)
    assert auto_subsamples(fixed, src) == [] and "numeric r" in fixed_r_reason(fixed, src)


def test_calibration_block_defaults_are_the_engines_and_live_in_options():
    block, engine = CalibrationConfig(), CalibrationOptions()
    names = {f.name for f in dataclasses.fields(block)} - {"sigma_fractions"}
    assert names | {"search_max_dim"} == {f.name for f in dataclasses.fields(engine)}
    assert all(getattr(block, n) == getattr(engine, n) for n in names)
    assert engine.ridge == options.OUTPUT_MATCHING_RIDGE != options.MOMENTS_RIDGE
    assert tuple(block.sigma_fractions) == options.SIGMA_FRACTIONS
    assert Recipe().search_max_dim == engine.search_max_dim == options.SEARCH_MAX_DIM
    assert engine_options(Recipe()) == engine
    assert load_recipe("default").calibration == block


def test_calibration_block_reaches_the_engine(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("base: default\ncalibration:\n  ridge: 0.01\n  sigma_fractions: [0.0, 1.0]\n  max_samples: 512\n")
    rec = load_recipe(str(path))
    assert rec.calibration.ridge == 0.01 and rec.calibration.max_samples == 512 and rec.calibration.seed == 0
    assert engine_options(rec).ridge == 0.01 and engine_options(rec).max_samples == 512
    net = _net()
    _, report = njetify.convert(net, recipe=str(path), calibration_data=[torch.randn(2, 3, 12, 12)],
                                max_fit_error=math.inf)
    tried = next(r for r in report.select("conv") if r.path == "0").extra["sigma_candidates"]
    assert sorted(tried) == [0.5, 1.0]  # the two fractions asked for
    assert report.recipe["calibration"]["ridge"] == 0.01  # saved with the model, so load rebuilds the same
    assert resolve_recipe(calibration={"ridge": 0.1}).calibration.ridge == 0.1
    assert resolve_recipe(calibration=CalibrationConfig(seed=3)).calibration.seed == 3


@pytest.mark.parametrize("block, msg", [
    ({"rigde": 0.1}, r"calibration\.rigde: unknown key; did you mean 'ridge'\?"),
    ({"max_samples": 0}, r"calibration\.max_samples: 0 is not allowed; expected an int ≥ 1"),
    ({"sigma_fractions": [0.0, 1.5]}, r"calibration\.sigma_fractions\[1\]: 1\.5 is not allowed"),
    ({"search_fraction": 0}, r"calibration\.search_fraction"),
])
def test_calibration_block_errors_name_the_key(block, msg):
    with pytest.raises(RecipeError, match=msg):
        load_recipe({"calibration": block})
    with pytest.raises(RecipeError, match=msg.replace("recipe mapping", "")):
        njetify.convert(_net(), calibration=block)
