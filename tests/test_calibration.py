"""The output-matching calibration engine (njetify.calibration): solvers, geometry, sweep, σ₀ by fit,
fidelity gate and reverts, bad calibration data, and the calibrate pass of njetify.convert."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import njetify
from njetify.calibration import (
    CalibrationOptions, LayerOptions, calibrate_model, calibrate_weights, sigma_candidates,
)
from njetify.calibration.iterative import DesignStore
from njetify.calibration.layer_fit import check_geometry
from njetify.calibration.ridge import GramStats, pack, unpack
from njetify.calibration.sigma_search import choose
from njetify.calibration.targets import collect_targets
from njetify.calibration.units import build_units
from njetify.layers import NJetConv2d, SafeSubsample
from njetify.recipes import resolve_recipe

from surgery_models import TinyResNet


def _njet_paths(model):
    return [p for p, m in model.named_modules() if isinstance(m, NJetConv2d)]


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


# ------------------------------------------------------------------ solvers
def test_gram_ridge_matches_closed_form_and_pcg_matches_gram():
    torch.manual_seed(0)
    groups, c, nf, o, s = 2, 6, 3, 4, 400
    q = torch.randn(s, c, nf)
    t = torch.randn(s, o)
    x0 = torch.randn(groups, c // groups * nf + 1, o // groups, dtype=torch.float64)
    gram = GramStats(groups, c // groups * nf, 1, o // groups)
    store = DesignStore(groups, c // groups * nf, 1, o // groups, nf)
    store.max_iter, store.tol = 200, 1e-10
    for part in range(2):
        sl = slice(part * 200, (part + 1) * 200)
        gram.update(q[sl], t[sl])
        store.update(q[sl], t[sl])
    x = gram.solve(x0, rho=1e-2)
    a = torch.cat([q.reshape(s, groups, -1).transpose(0, 1), torch.ones(groups, s, 1)], -1).double()
    tg = t.reshape(s, groups, -1).transpose(0, 1).double()
    for g in range(groups):  # (AᵀA + Λ) x = AᵀT + Λ x0 with Λ = ρ·[mean diag]·I on α, ρ·diag on the bias
        ata = a[g].T @ a[g]
        lam = torch.full((ata.shape[0],), float(ata.diagonal()[:-1].mean()), dtype=torch.float64)
        lam[-1] = ata[-1, -1]
        lam = 1e-2 * lam
        ref = torch.linalg.solve(ata + torch.diag(lam), a[g].T @ tg[g] + lam[:, None] * x0[g])
        assert torch.allclose(x[g], ref, atol=1e-8)
    assert math.isclose(gram.error2(x), float(((a @ x - tg) ** 2).sum()), rel_tol=1e-8)
    assert torch.allclose(store.solve(x0, rho=1e-2), x, atol=1e-4)
    assert math.isclose(store.error2(x), gram.error2(x), rel_tol=1e-4)


def test_pack_unpack_round_trip():
    alpha, bias = torch.randn(6, 2, 10), torch.randn(3, 6)
    a2, b2 = unpack(pack(alpha, bias, groups=3), num_bias=3, num_basis=10)
    assert torch.allclose(a2.float(), alpha) and torch.allclose(b2.float(), bias)


# ----------------------------------------------------------------- geometry
@pytest.mark.parametrize("kw", [
    dict(stride=2, padding=1), dict(padding=0), dict(groups=2, padding=1), dict(groups=4, padding=1),
    dict(padding=1, padding_mode="reflect"), dict(kernel_size=5, padding=2, stride=2), dict(padding=2, dilation=2),
])
def test_basis_responses_reproduce_the_layer(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, kw.pop("kernel_size", 3), **kw)
    original = nn.Sequential(conv)
    for stride in (None, 1):  # keep mode, and the surgery's stride-1 layer
        converted = nn.Sequential(NJetConv2d.from_conv(conv, stride=stride))
        (unit,) = build_units(original, converted, ["0"])
        x = torch.randn(2, 4, 11, 13)
        targets = collect_targets(original, [unit], [x], budgets={0: 64})
        assert check_geometry(unit, [(0, x)], targets[0]) is None


def test_check_geometry_rejects_a_changed_input_size():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    original, converted = nn.Sequential(conv), nn.Sequential(NJetConv2d.from_conv(conv))
    (unit,) = build_units(original, converted, ["0"])
    targets = collect_targets(original, [unit], [torch.randn(1, 3, 8, 8)], budgets={0: 16})
    assert "input in the converted model" in check_geometry(unit, [(0, torch.randn(1, 3, 9, 9))], targets[0])


# ------------------------------------------------------------ the engine
def test_engine_improves_outputs_and_safe_equals_keep():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    batches = [torch.randn(4, 3, 24, 24) for _ in range(3)]
    ref = model(batches[0]).detach()
    outs = {}
    for mode in ("safe", "keep"):
        conv, _ = njetify.convert(model, subsample=mode, recipe=resolve_recipe(max_fit_error=float("inf")))
        before = _rel(conv(batches[0]).detach(), ref)
        res = calibrate_model(model, conv, _njet_paths(conv), batches)
        assert [r.status for r in res.layers] == ["calibrated"] * 8
        assert all(r.error_after < r.error_before for r in res.layers)
        outs[mode] = conv(batches[0]).detach()
        assert _rel(outs[mode], ref) < before / 2
    assert torch.allclose(outs["safe"], outs["keep"], atol=1e-4)


def test_one_forward_per_batch_of_each_model():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    conv, _ = njetify.convert(model)
    calls = {"original": 0, "converted": 0}
    model.head.register_forward_hook(lambda *a: calls.__setitem__("original", calls["original"] + 1))
    conv.get_submodule("head").register_forward_hook(lambda *a: calls.__setitem__("converted", calls["converted"] + 1))
    calibrate_model(model, conv, _njet_paths(conv), [torch.randn(2, 3, 24, 24) for _ in range(3)])
    # the engine's own geometry checks call single layers, never the model
    assert calls == {"original": 3, "converted": 3}


def test_sigma_search_keeps_the_subsampling_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    batches = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    conv, _ = njetify.convert(model)
    res = calibrate_model(model, conv, _njet_paths(conv), batches,
                          layer_options={p: LayerOptions(sigmas=(0.5, 0.75)) for p in _njet_paths(conv)},
                          options=CalibrationOptions(sigma_tolerance=0.0))  # the lowest error wins
    first = res.by_path()["0"]
    assert set(first.candidates) == {0.5, 0.75} and first.sigma0[0] == min(first.candidates, key=first.candidates.get)
    (ss,) = [m for m in conv.modules() if isinstance(m, SafeSubsample)]
    assert ss.source is conv.get_submodule("0") and math.isclose(ss.factor, 0.5, rel_tol=1e-6)
    assert conv(batches[0]).shape == model(batches[0]).shape


def test_sigma_candidates_and_choice():
    assert sigma_candidates(3) == (0.5, 0.6, 0.75, 1.0)
    assert sigma_candidates(5) == (1.0, 1.1, 1.25, 1.5)
    assert sigma_candidates(3, dilation=2) == (1.0, 1.1, 1.25, 1.5)
    assert sigma_candidates(1) == ()
    assert choose({0.5: 0.101, 0.6: 0.1, 0.75: 0.2}, tolerance=0.02) == 0.5
    assert choose({0.5: 0.2, 0.6: 0.1}, tolerance=0.02) == 0.6


# ---------------------------------------------------------------- the gate
def test_gate_reverts_a_dilated_kernel_and_keeps_random_init_3x3():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1))
    conv, report = njetify.convert(model)  # no data: the gate reads the weight-space error
    rows = {r.path: r for r in report.select("conv")}
    assert rows["0"].action == rows["4"].action == "converted" and rows["0"].fit_error < 0.4
    assert rows["2"].action == "kept" and "fidelity gate" in rows["2"].reason and rows["2"].fit_error > 0.8
    assert f"{rows['2'].fit_error:.3f}" in rows["2"].extra["gate"]  # the table shows the number in its err column
    assert type(conv.get_submodule("2")) is nn.Conv2d and report.calibration["reverted"] == ["2"]
    x = torch.randn(2, 3, 16, 16)
    assert conv(x).shape == model(x).shape


def test_reverting_everything_restores_the_original_outputs():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    batches = [torch.randn(2, 3, 24, 24) for _ in range(2)]
    with pytest.warns(UserWarning, match="fidelity gate reverted every converted layer"):
        conv, report = njetify.convert(model, calibration_data=batches, recipe=resolve_recipe(max_fit_error=0.0))
    assert report.converted == 0 and len(report.calibration["reverted"]) == 8
    assert all(m.source is None for m in conv.modules() if isinstance(m, SafeSubsample))
    assert all("reverted" in r.reason for r in report.select("subsample", "subsampled"))
    assert torch.allclose(conv(batches[0]), model(batches[0]), atol=1e-5)


def test_revert_callback_runs_before_later_layers_are_fitted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)).eval()
    conv, _ = njetify.convert(model)
    seen = []

    def revert(path, reason):
        seen.append((path, type(conv.get_submodule("2")).__name__))
        setattr(conv, path, copy.deepcopy(model[int(path)]))

    opts = {"0": LayerOptions(max_error=1e-9), "2": LayerOptions(max_error=None)}
    res = calibrate_model(model, conv, ["0", "2"], [torch.randn(2, 3, 10, 10)], layer_options=opts, revert=revert)
    assert seen == [("0", "NJetConv2d")]  # layer 2 not fitted yet when layer 0 was reverted
    assert [r.status for r in res.layers] == ["reverted", "calibrated"]
    # layer 2 was fitted on the reverted layer's (exact) outputs
    x = torch.randn(2, 3, 10, 10)
    assert _rel(conv(x), model(x)) <= res.layers[1].error_after * 3


def test_unreached_layer_keeps_weight_space_fit_and_is_listed():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Conv2d(3, 4, 3, padding=1)
            self.aux = nn.Conv2d(3, 4, 3, padding=1)  # defined, never called

        def forward(self, x):
            return self.main(x)

    model = Aux()
    conv, report = njetify.convert(model, calibration_data=[torch.randn(2, 3, 8, 8)])
    assert report.calibration["unreached"] == ["aux"] and report.calibration["calibrated"] == 1
    assert any("not reached" in n for n in report.notes)
    row = {r.path: r for r in report.rows}["aux"]
    assert row.action == "converted" and row.error_after is None and row.extra["fit"] == "unreached"


# --------------------------------------------------------- pipeline and report
def test_convert_reports_errors_and_time():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    batches = [torch.randn(2, 3, 24, 24) for _ in range(2)]
    conv, report = njetify.convert(model, calibration_data=batches, recipe=resolve_recipe(sigma_init="fit"))
    cal = report.calibration
    assert cal["fit"] == "output-matching" and cal["calibrated"] == report.converted == 8 and cal["seconds"] > 0
    for r in report.select("conv", "converted"):
        assert r.error_after < r.error_before and r.extra["fit"] == "output-matching"
        tried = set(r.extra["sigma_candidates"])  # from small to large until the error rises again
        assert {0.5, 0.6} <= tried <= {0.5, 0.6, 0.75, 1.0} and r.sigma0 in tried
        assert r.size == 2 * math.ceil(2 * r.sigma0 - 1e-9) + 1
    assert "error_after" in report.to_json()
    from rich.console import Console

    Console(file=__import__("io").StringIO(), width=100).print(report)


def test_per_channel_sigma_layers_are_calibrated():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    batches = [torch.randn(2, 3, 24, 24) for _ in range(2)]
    conv, report = njetify.convert(model, recipe=resolve_recipe(sigma_per="channel"), calibration_data=batches)
    assert report.calibration["calibrated"] == report.converted == 8


def test_tied_head_is_fitted_jointly():
    from test_aspp_models import _Head

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(3, 1, 1), _Head()).eval()
    batches = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    conv, report = njetify.convert(model, recipe="paper-deeplabv2-aspp", calibration_data=batches)
    branches = [r for r in report.select("conv") if "head" in r.extra]
    assert len(branches) == 3 and report.calibration["calibrated"] == 1
    assert all(r.error_after < r.error_before for r in branches)
    x = batches[0]
    ws, _ = njetify.convert(model, recipe="paper-deeplabv2-aspp")
    assert _rel(conv(x), model(x)) < _rel(ws(x), model(x))


def test_wide_layers_use_conjugate_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)).eval()
    batches = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    results = {}
    for wide in (False, True):
        conv, _ = njetify.convert(model)
        opts = CalibrationOptions(direct_max_dim=8 if wide else 8192, max_iter=300)
        results[wide] = calibrate_model(model, conv, ["0", "2"], batches, options=opts)
    assert [r.solver for r in results[False].layers] == ["direct", "direct"]
    assert all(r.solver.startswith("pcg") for r in results[True].layers)
    for a, b in zip(results[False].layers, results[True].layers):
        assert abs(a.error_after - b.error_after) < 0.01


def test_calibrate_weights_picks_sigma_by_weight_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    conv, _ = njetify.convert(model, recipe=resolve_recipe(max_fit_error=None))
    res = calibrate_weights(model, conv, ["0"], layer_options={"0": LayerOptions(sigmas=sigma_candidates(3))})
    (r,) = res.layers
    assert r.status == "weight-space" and r.sigma0[0] == choose(r.candidates)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("data,exc,msg", [
    ([torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)], TypeError, "dtype torch.uint8"),
    ([], ValueError, "is empty"),
    (iter([]), ValueError, "is empty"),
    (5, TypeError, "must be an iterable"),
    ([torch.randn(2, 4, 8, 8)], ValueError, "original model fails on batch 0"),
    ([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8)], ValueError, "batch 1 has shape"),
    ([torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8)], ValueError, "batch 1 has shape"),
    (["text"], TypeError, "batch 0 is a str"),
])
def test_bad_calibration_data_fails_before_conversion(data, exc, msg):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(exc, match="calibration_data") as err:
        njetify.convert(model, calibration_data=data, inplace=True)
    assert msg in str(err.value)
    assert type(model[0]) is nn.Conv2d  # nothing was converted


def test_engine_rejects_wrong_paths():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    conv, _ = njetify.convert(model)
    with pytest.raises(ValueError, match="'1' in the original model is a ReLU"):
        calibrate_model(model, conv, ["1"], [torch.randn(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="no module at path 'nope'"):
        calibrate_model(model, conv, ["nope"], [torch.randn(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="same module"):
        calibrate_model(conv, conv, ["0"], [torch.randn(1, 3, 8, 8)])


def test_save_load_rebuilds_chosen_sigmas_and_reverts(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    batches = [torch.randn(2, 3, 24, 24) for _ in range(2)]
    rec = resolve_recipe(sigma_init="fit", rules=[{"match": "layer2.conv1", "max_fit_error": 0.0}])
    conv, report = njetify.convert(model, calibration_data=batches, recipe=rec)
    assert report.calibration["reverted"] == ["layer2.conv1"]
    assert {"match": "layer2.conv1", "max_fit_error": 0.0} in report.recipe["rules"]
    njetify.save(conv, tmp_path / "m.safetensors")
    back = njetify.load(tmp_path / "m.safetensors", model=TinyResNet()).eval()
    kept = back.get_submodule("layer2.conv1")  # its fixed nearest 1/2 subsampling is the original stride again
    assert type(kept) is nn.Conv2d and kept.stride == (2, 2)
    sub = {p: (m.source is None, m.factor) for p, m in back.named_modules() if isinstance(m, SafeSubsample)}
    assert sub == {p: (m.source is None, m.factor) for p, m in conv.named_modules() if isinstance(m, SafeSubsample)}
    assert torch.equal(back(batches[0]), conv.eval()(batches[0]))
