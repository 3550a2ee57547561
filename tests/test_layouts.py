"""Heads that change the feature layout (MTCNN R-Net/O-Net, permute before flatten, Linear → Linear,
flatten inside a forward) convert in both subsample modes, with and without calibration, and keep
working when σ moves; an unguardable head is a kept row with the reason, never an exception."""

import pytest
import torch
import torch.nn.functional as F

import njetify
from layout_nets import FlattenInForward, LinearLinear, ONetLike, PermuteFlat, RNetLike

NETS = {"rnet": (RNetLike, 24), "onet": (ONetLike, 48), "permute": (PermuteFlat, 16),
        "linear2": (LinearLinear, 16), "flat_in_forward": (FlattenInForward, 16)}


def _outs(y):
    return y if isinstance(y, tuple) else (y,)


def _rel(model, conv, x) -> float:
    with torch.no_grad():
        return max(float((a - b).norm() / a.norm()) for a, b in zip(_outs(model(x)), _outs(conv(x))))


def _grow_sigma(model, factor=1.6):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_sigma"):
                p.add_(torch.log(torch.tensor(factor)))


def _net(name):
    cls, side = NETS[name]
    torch.manual_seed(0)
    noise = torch.randn(16, 3, side // 4 + 1, side // 4 + 1)  # smooth, image-like inputs
    return cls().eval(), F.interpolate(noise, size=(side, side), mode="bilinear", align_corners=True)


@pytest.mark.parametrize("mode", ["keep", "safe"])
@pytest.mark.parametrize("name", list(NETS))
def test_layout_heads_convert_and_calibrate(name, mode):
    model, x = _net(name)
    plain, _ = njetify.convert(model, order=3, subsample=mode)
    conv, report = njetify.convert(model, order=3, subsample=mode, calibration_data=[x[:8]])
    held_out = x[8:]
    assert _rel(model, conv, held_out) < 0.1
    assert _rel(model, conv, held_out) < _rel(model, plain, held_out)
    _grow_sigma(conv)  # σ moves as in fine-tuning: every head still reads the width it was built for
    assert [o.shape for o in _outs(conv(held_out))] == [o.shape for o in _outs(model(held_out))]
    assert report.calibration["fit"] == "output-matching"


@pytest.mark.parametrize("name,head", [("rnet", "dense4"), ("onet", "dense5"), ("permute", "fc")])
def test_permuted_map_before_flatten_is_a_kept_row(name, head):
    model, x = _net(name)
    for inputs in (None, x[:2]):  # with and without recorded shapes
        conv, report = njetify.convert(model, order=3, subsample="safe", example_inputs=inputs)
        (row,) = report.select("guard")
        assert (row.path, row.action) == (head, "kept") and "rearranged" in row.reason
        kept = report.select("subsample", "kept")
        assert kept and all(head in r.reason for r in kept) and not report.select("subsample", "subsampled")
        assert head in str(report)


def test_linear_after_linear_is_not_a_guard():
    model, x = _net("linear2")
    conv, report = njetify.convert(model, order=3, subsample="safe", example_inputs=x[:2])
    assert [(r.path, r.action) for r in report.select("guard")] == [("fc1", "inserted")]
    assert report.select("subsample", "subsampled")
    _grow_sigma(conv, 3.0)
    assert conv(x).shape == (16, 5)


def test_flatten_inside_a_forward_is_guarded():
    model, x = _net("flat_in_forward")
    conv, report = njetify.convert(model, order=3, subsample="safe")
    assert [(r.path, r.action) for r in report.select("guard")] == [("fc", "inserted")]
    _grow_sigma(conv, 3.0)
    assert conv(x).shape == (16, 16, 4)


def _boom(*args, **kwargs):
    raise TypeError("an argument the analysis never met")


@pytest.mark.parametrize("target", ["njetify.surgery.analysis.sites.spec_from_module",
                                    "njetify.surgery.analysis.guards._head",
                                    "njetify.surgery.passes.plan.group_sites"])
def test_an_analysis_error_keeps_the_site_with_the_reason(monkeypatch, target):
    model, x = _net("linear2")
    monkeypatch.setattr(target, _boom)
    with pytest.raises(TypeError, match="never met"):  # the test suite runs strict: bugs surface
        njetify.convert(model, order=3, subsample="safe")
    monkeypatch.setenv("NJETIFY_STRICT", "0")
    with pytest.warns(UserWarning, match="failed unexpectedly"):
        conv, report = njetify.convert(model, order=3, subsample="safe", example_inputs=x[:2])
    assert not report.select("subsample", "subsampled")
    assert any("never met" in (r.reason or "") for r in report.rows)
    assert any("bug in njetify" in n for n in report.notes)
    _grow_sigma(conv, 3.0)
    assert conv(x).shape == (16, 5)


def test_a_failed_conv_conversion_keeps_the_conv(monkeypatch):
    model, x = _net("rnet")
    monkeypatch.setenv("NJETIFY_STRICT", "0")
    monkeypatch.setattr("njetify.surgery.passes.convs._njet", _boom)
    with pytest.warns(UserWarning, match="failed unexpectedly"):
        conv, report = njetify.convert(model, order=3, subsample="keep")
    assert {r.action for r in report.select("conv")} == {"kept"}
    assert conv(x)[0].shape == (16, 4)
