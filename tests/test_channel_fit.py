"""The calibration engine's per-input-channel solver (``calibration.wide_solver: per_channel``, the data-based
fit of ``from_conv(inputs=)`` on wide layers) and the separable response maps it reads large filters with."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify import NJetConv2d, options
from njetify.calibration import CalibrationOptions, LayerOptions, calibrate
from njetify.calibration.channel_fit import channel_chunks
from njetify.calibration.on_inputs import _SideBySide, fit_on_inputs
from njetify.calibration.responses import Geometry, basis_responses, sample_positions, separable
from njetify.recipes import RecipeError, load_recipe
from njetify.surgery.passes.calibrate import engine_options

WIDE = dict(direct_max_dim=1)  # every layer counts as wide
NO_GATE = LayerOptions(max_error=None)


def _smooth(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(*shape, generator=g), 3, stride=1, padding=1)  # correlated, like features


def _fit(net, x, **opts):
    conv, _ = njetify.convert(net, max_fit_error=math.inf)
    result = calibrate(net, conv, ["0"], [x], options=CalibrationOptions(**opts), layer_options={"0": NO_GATE})
    return conv[0], result.layers[0]


def test_decoupled_channels_give_the_joint_fit():
    # a depthwise conv has one input channel per group: the per-channel solve is the joint one
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False)).eval()
    x = _smooth(2, 6, 14, 14)
    ridge = dict(ridge=options.MOMENTS_RIDGE)
    joint, rj = _fit(net, x, **ridge)
    per, rp = _fit(net, x, wide_solver="per_channel", **WIDE, **ridge)
    assert rj.solver == "direct" and rp.solver == "per-channel"
    torch.testing.assert_close(per.alpha, joint.alpha, rtol=1e-3, atol=1e-5)
    assert rp.error_after == pytest.approx(rj.error_after, rel=1e-3, abs=1e-6)


def test_reported_errors_are_the_real_outputs_and_the_bias_is_refitted():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(5, 7, 3, padding=1)).eval()
    x = _smooth(2, 5, 10, 10) + 0.5  # a mean the bias must absorb
    before = njetify.convert(net, max_fit_error=math.inf)[0][0]
    layer, res = _fit(net, x, wide_solver="per_channel", **WIDE)
    assert res.solver == "per-channel" and res.samples == 2 * 10 * 10  # every position
    with torch.no_grad():
        ref = net(x)
        err = float((layer(x) - ref).norm() / ref.norm())
        err0 = float((before(x) - ref).norm() / ref.norm())
        resid = (ref - layer(x)).mean((0, 2, 3))
    assert res.error_after == pytest.approx(err, rel=1e-4) and res.error_before == pytest.approx(err0, rel=1e-4)
    assert err < 0.8 * err0
    assert float(resid.abs().max()) < 1e-4 * float(ref.abs().max())  # the bias took the mean residual


def test_from_conv_inputs_uses_it_and_generalises_where_the_joint_fit_overfits():
    torch.manual_seed(2)
    conv = nn.Conv2d(128, 16, 3, padding=3, dilation=3)  # 1281 unknowns per output, 2 images of 12²: 288 positions
    x, held_out = _smooth(2, 128, 12, 12), _smooth(4, 128, 12, 12, seed=1)
    layers = {name: NJetConv2d.from_conv(conv, order=3) for name in ("plain", "per", "joint")}
    res = fit_on_inputs([layers["per"]], [conv], x)
    joint = fit_on_inputs([layers["joint"]], [conv], x, {"direct_max_dim": 8192})
    assert res.solver == "per-channel" and joint.solver == "direct"
    with torch.no_grad():
        ref = conv(x)
        assert float((layers["per"](x) - ref).norm() / ref.norm()) == pytest.approx(res.error_after, rel=1e-3)
        ref = conv(held_out)
        err = {k: float((m(held_out) - ref).norm() / ref.norm()) for k, m in layers.items()}
    assert joint.error_after < res.error_after  # the joint fit wins on the images it saw ...
    assert err["per"] < err["plain"] < err["joint"]  # ... and loses on others; per-channel beats weight space
    layer = NJetConv2d.from_conv(conv, order=3, inputs=x)
    torch.testing.assert_close(layer.alpha, layers["per"].alpha)


def test_a_tied_head_is_fitted_per_channel_with_a_bias_per_branch():
    torch.manual_seed(3)
    convs = [nn.Conv2d(6, 4, 3, padding=r, dilation=r) for r in (1, 2, 3)]
    x = _smooth(2, 6, 16, 16)
    head = njetify.TiedNJetConv2d.from_convs(convs)
    with torch.no_grad():
        before = [float((head.forward_branch(x, k) - c(x)).pow(2).sum()) for k, c in enumerate(convs)]
    paths = ["0", "1", "2"]
    result = calibrate(_SideBySide(convs), _SideBySide(head.branches), paths, [x], layer_options=lambda p: NO_GATE,
                       options=CalibrationOptions(wide_solver="per_channel", **WIDE))
    (res,) = result.layers
    with torch.no_grad():
        after = [float((head.forward_branch(x, k) - c(x)).pow(2).sum()) for k, c in enumerate(convs)]
        resid = [(c(x) - head.forward_branch(x, k)).mean((0, 2, 3)).abs().max() for k, c in enumerate(convs)]
    assert res.solver == "per-channel" and res.kind == "tied" and sum(after) < 0.9 * sum(before)  # measured 0.81
    assert max(float(r) for r in resid) < 1e-4  # one bias per branch, each refitted


def test_a_unit_it_cannot_serve_falls_back_to_conjugate_gradients_and_says_why():
    torch.manual_seed(4)
    net = nn.Sequential(nn.ConvTranspose2d(4, 3, 2, stride=2)).eval()
    conv, _ = njetify.convert(net, max_fit_error=math.inf, convs=True)
    if not isinstance(conv[0], njetify.layers.NJetConvTranspose2d):
        pytest.skip("transposed convs are not converted by default")
    result = calibrate(net, conv, ["0"], [_smooth(2, 4, 6, 6)], layer_options={"0": NO_GATE},
                       options=CalibrationOptions(wide_solver="per_channel", **WIDE))
    res = result.layers[0]
    assert res.solver.startswith("pcg") and "per-channel solver" in res.reason


def test_the_recipe_chooses_it_and_rejects_an_unknown_solver():
    rec = load_recipe({"calibration": {"wide_solver": "per_channel"}})
    assert engine_options(rec).wide_solver == "per_channel"
    assert engine_options(load_recipe({})).wide_solver == options.WIDE_SOLVER == "pcg"
    with pytest.raises(RecipeError, match=r"calibration\.wide_solver: 'cg' is not allowed.*pcg.*per_channel"):
        load_recipe({"calibration": {"wide_solver": "cg"}})


@pytest.mark.parametrize("sigma, trim, step, samples", [(1.0, 0, 1, 30), (2.0, 1, 2, 20), (5.0, 0, 1, 400)])
def test_separable_maps_give_the_patch_responses(sigma, trim, step, samples):
    layer = NJetConv2d(3, 2, order=3, sigma=sigma, dtype=torch.float64)
    basis = layer.basis().detach()
    x = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    geometry = Geometry("same", trim, 1, "zeros")
    grid = geometry.out_size(18, 18, basis.shape[-1], step)
    pos = sample_positions(2, *grid, samples // 2, torch.Generator().manual_seed(0))
    x_pad = geometry.pad(x, basis.shape[-1])
    b = basis.flatten(1).T
    n, i, j = pos.unbind(1)
    r = torch.arange(basis.shape[-1])
    patches = x_pad[n[:, None, None], :, (i * step)[:, None, None] + r[None, :, None], (j * step)[:, None, None] + r]
    ref = patches.flatten(1, 2).transpose(1, 2) @ b  # the definition, patch by patch
    torch.testing.assert_close(basis_responses(x, basis, geometry, pos, step), ref, rtol=1e-9, atol=1e-9)


def test_a_basis_of_higher_rank_is_not_taken_for_separable():
    rank2 = torch.eye(5, dtype=torch.float64)[None] + torch.ones(1, 5, 5, dtype=torch.float64)
    assert separable(rank2) is None
    rank1 = torch.outer(torch.arange(1.0, 4, dtype=torch.float64), torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64))
    cols, rows = separable(rank1[None])
    torch.testing.assert_close(torch.outer(cols[0], rows[0]), rank1)


def test_channel_chunks_hold_whole_groups_or_lie_in_one():
    assert channel_chunks(8, 8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert channel_chunks(8, 2, 5) == [(0, 4), (4, 8)]
    assert channel_chunks(6, 3, 2) == [(0, 2), (2, 3), (3, 5), (5, 6)]


def test_the_report_names_the_solver_of_each_layer():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    data = [_smooth(2, 3, 12, 12)]
    _, joint = njetify.convert(net, calibration_data=data, max_fit_error=math.inf)
    _, per = njetify.convert(net, calibration_data=data, max_fit_error=math.inf,
                             calibration={"wide_solver": "per_channel", "direct_max_dim": 0})
    assert [r.extra["solver"] for r in joint.select("conv")] == ["direct", "direct"]
    assert [r.extra["solver"] for r in per.select("conv")] == ["per-channel", "per-channel"]
    assert "solver" not in njetify.convert(net, max_fit_error=math.inf)[1].select("conv")[0].extra  # no data
