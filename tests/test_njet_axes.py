"""One σ per axis (issue 20 item 5): 1×k / k×1 convs become NJetAxesConv2d, square ones on request."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify import basis as B
from njetify.bake import bake
from njetify.layers import NJetAxesConv2d, NJetConv2d
from njetify.layers.njet_axes import axes_kind, axis_orders
from njetify.recipes import RecipeError, load_recipe


def _smooth_kernel(out_ch: int, in_ch: int, ky: int, kx: int, seed: int = 0) -> torch.Tensor:
    """Kernels spanned by Gaussian derivatives at σ = (k−1)/4 per axis plus 2 % noise (pretrained-like)."""
    g = torch.Generator().manual_seed(seed)

    def axis(k):
        if k == 1:
            return torch.ones(1, 1)
        return B.gaussian_derivatives_1d(torch.tensor((k - 1) / 4.0, dtype=torch.float64), 2, (k - 1) // 2).float()

    gy, gx = axis(ky), axis(kx)
    coef = torch.randn(out_ch, in_ch, gy.shape[0], gx.shape[0], generator=g)
    a, b = torch.meshgrid(torch.arange(gy.shape[0]), torch.arange(gx.shape[0]), indexing="ij")
    coef = coef * (a + b <= 2)  # total order ≤ 2: inside an order-3 basis
    w = torch.einsum("ocab,ay,bx->ocyx", coef, gy, gx)
    return w + 0.02 * w.std() * torch.randn(w.shape, generator=g)


class InceptionLike(nn.Module):
    """Stem 3×3, a factorised 1×7 → 7×1 branch and a 1×1 branch, concatenated, pooled: ``(N, 3, H, W)`` →
    ``(N, 2, H/2, W/2)``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1x7 = nn.Conv2d(8, 8, (1, 7), padding=(0, 3))
        self.b7x1 = nn.Conv2d(8, 8, (7, 1), padding=(3, 0))
        self.b1x1 = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(16, 2, 1)
        with torch.no_grad():
            self.b1x7.weight.copy_(_smooth_kernel(8, 8, 1, 7, 1))
            self.b7x1.weight.copy_(_smooth_kernel(8, 8, 7, 1, 2))

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.b7x1(F.relu(self.b1x7(x))))
        return self.head(self.pool(torch.cat([y, self.b1x1(x)], 1)))


def _images(n: int, side: int = 24) -> torch.Tensor:
    return F.interpolate(torch.randn(n, 3, side // 4 + 1, side // 4 + 1), size=(side, side), mode="bilinear",
                         align_corners=True)


@pytest.mark.parametrize("k, pad", [((1, 7), (0, 3)), ((7, 1), (3, 0)), ((1, 3), (0, 0)), ((3, 5), (1, 2))])
def test_layer_from_conv_shapes_fit_gradients_bake(k, pad):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, k, padding=pad)
    with torch.no_grad():
        conv.weight.copy_(_smooth_kernel(6, 4, *k))
    layer = NJetAxesConv2d.from_conv(conv)
    assert layer.kernel_size == k and layer.filters().shape == (6, 4, *k)
    want_sig = tuple((n - 1) / 4.0 for n in k)
    assert layer.sigma_axes == pytest.approx(want_sig)
    assert layer.alpha.shape[-1] == len(axis_orders(3, tuple(s > 0 for s in want_sig)))
    assert layer.fit_error < 0.05, layer.fit_error
    x = torch.randn(2, 4, 11, 13)
    y = layer(x)
    assert y.shape == conv(x).shape
    y.square().mean().backward()
    assert layer.log_sigma.grad is not None and (layer.log_sigma.grad != 0).all()
    assert layer.log_sigma.numel() == sum(n > 1 for n in k)  # σ only for axes with extent
    with torch.no_grad():  # σ grows: the 1-px axis stays 1 px, the other grows, the output keeps its size
        layer.log_sigma.add_(math.log(1.6))
    layer.refresh_sizes()
    grown = layer.kernel_size
    assert all((g == 1) == (n == 1) for g, n in zip(grown, k)) and max(grown) > max(k)
    assert layer(x).shape == y.shape
    baked = layer.to_conv()
    assert type(baked) is nn.Conv2d and baked.kernel_size == grown
    with torch.no_grad():
        torch.testing.assert_close(baked(x), layer(x), atol=1e-5, rtol=1e-4)


def test_flat_axis_basis_is_a_delta():
    layer = NJetAxesConv2d(2, 2, order=2, sigma=(0.0, 1.0))
    b = layer.basis()
    assert b.shape == (3, 1, 5)  # G^(0), G^(1), G^(2) along x only
    g = B.gaussian_derivatives_1d(torch.tensor(1.0), 2, 2)
    torch.testing.assert_close(b[:, 0], g)


def test_bad_sigma_and_square_kernels():
    with pytest.raises(ValueError, match="at least one axis"):
        NJetAxesConv2d(2, 2, sigma=(0.0, 0.0))
    with pytest.raises(ValueError, match="≥ 0"):
        NJetAxesConv2d(2, 2, sigma=(-1.0, 1.0))
    with pytest.raises(TypeError, match="pair"):
        NJetAxesConv2d(2, 2, sigma=1.0)
    assert axes_kind(nn.Conv2d(2, 2, 3)) is None and axes_kind(nn.Conv2d(2, 2, 3), True) == "ok"
    assert axes_kind(nn.Conv2d(2, 2, (1, 7)), False).startswith("non-square")
    assert "even" in axes_kind(nn.Conv2d(2, 2, (1, 4)))
    assert "dilation" in axes_kind(nn.Conv2d(2, 2, (1, 3), dilation=2))
    with pytest.raises(ValueError, match="square"):
        NJetAxesConv2d.from_conv(nn.Conv2d(2, 2, 3))


@pytest.mark.parametrize("calibrate", [False, True])
def test_inception_like_converts_per_axis(calibrate):
    torch.manual_seed(0)
    model = InceptionLike().eval()
    x = _images(2)
    data = [_images(4) for _ in range(3)] if calibrate else None
    net, report = njetify.convert(model, calibration_data=data, example_inputs=x)
    for path, k in (("b1x7", (1, 7)), ("b7x1", (7, 1))):
        row = report.row("conv", path)
        assert row.action == "converted" and row.extra.get("per_axis"), row.reason
        assert "one σ per axis" in row.reason and row.fit_error is not None
        layer = net.get_submodule(path)
        assert isinstance(layer, NJetAxesConv2d) and layer.kernel_size == k
        if calibrate:  # output matching: the weight-space error is no longer the aim
            assert row.error_after <= row.error_before and row.error_after < 0.02, row.error_after
        else:
            assert row.fit_error < 0.1
    assert isinstance(net.stem, NJetConv2d)  # square kernels keep one σ by default
    assert "one σ per axis" in str(report) and any("2 conv(s) converted with one σ per axis" in n for n in report.notes)
    with torch.no_grad():
        y0, y1 = model(x), net(x)
    err = float((y1 - y0).norm() / y0.norm())  # the random 3×3 stem fits worst; calibration repairs it
    print(f"output error {'calibrated' if calibrate else 'weight-space'}: {err:.4f}; fit errors 1x7 "
          f"{report.row('conv', 'b1x7').fit_error:.4f}, 7x1 {report.row('conv', 'b7x1').fit_error:.4f}")
    assert y1.shape == y0.shape and err < (0.05 if calibrate else 0.2), err
    net.train()
    net(x).square().mean().backward()
    assert (net.b1x7.log_sigma.grad != 0).all() and (net.b7x1.log_sigma.grad != 0).all()
    baked = bake(net.eval())
    assert type(baked.b1x7) is nn.Conv2d and baked.b1x7.kernel_size == (1, 7)
    assert type(baked.b7x1) is nn.Conv2d and baked.b7x1.kernel_size == (7, 1)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), net(x), atol=1e-5, rtol=1e-4)


def test_recipe_key_sigma_per_axis(tmp_path):
    torch.manual_seed(0)
    model = InceptionLike().eval()
    x = _images(2)
    net, report = njetify.convert(model, recipe=load_recipe({"sigma_per_axis": True, "max_fit_error": None}), example_inputs=x)
    assert isinstance(net.stem, NJetAxesConv2d) and net.stem.log_sigma.numel() == 2
    assert report.row("conv", "stem").extra.get("per_axis")
    net, report = njetify.convert(model, recipe=load_recipe({"sigma_per_axis": False}), example_inputs=x)
    row = report.row("conv", "b1x7")
    assert row.action == "kept" and "sigma_per_axis: false" in row.reason
    with pytest.raises(RecipeError, match="sigma_per_axis"):
        load_recipe({"sigma_per_axis": "yes"})
    with pytest.raises(RecipeError, match="sigma_per_axis"):
        load_recipe({"rules": [{"match": "b*", "sigma_per_axis": 3}]})


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    x = _images(2)
    net, _ = njetify.convert(InceptionLike().eval(), example_inputs=x)
    with torch.no_grad():
        net.b1x7.log_sigma.add_(0.3)
    njetify.save(net, tmp_path / "m.safetensors")
    back = njetify.load(tmp_path / "m.safetensors", model=InceptionLike()).eval()
    assert isinstance(back.b1x7, NJetAxesConv2d) and back.b1x7.kernel_size == net.b1x7.kernel_size
    with torch.no_grad():
        torch.testing.assert_close(back(x), net.eval()(x))
    assert "sigma=(y 0 (1 px), x " in repr(back.b1x7)


@pytest.mark.slow
def test_timm_inception_v3_converts_per_axis():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("inception_v3", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 75, 75)
    recipe = load_recipe({"max_fit_error": None, "subsample": {"mode": "keep"}})  # random kernels: no gate
    t0 = time.perf_counter()
    net, report = njetify.convert(model, recipe=recipe, example_inputs=x)
    print(f"inception_v3 at 75 px: converted in {time.perf_counter() - t0:.1f} s; per-axis rows:")
    for r in report.select("conv"):
        if r.extra.get("per_axis"):
            print(f"  {r.path} {r.op} fit error {r.fit_error:.3f}")
    rows = [r for r in report.select("conv") if r.extra.get("per_axis")]
    shapes = {net.get_submodule(r.path).kernel_size for r in rows}
    assert {(1, 7), (7, 1), (1, 3), (3, 1)} <= shapes
    assert all(r.action == "converted" for r in rows)
    with torch.no_grad():
        assert net(x).shape == model(x).shape


def test_sigma_search_keeps_the_axes_ratio():
    """σ₀ by fit moves the mean σ of a 3×5 kernel's axes; the recorded σ₀ rebuilds the same layer."""
    from njetify.calibration.units import AxesUnit

    conv = nn.Conv2d(2, 3, (3, 5), padding=(1, 2))
    layer = NJetAxesConv2d.from_conv(conv)
    unit = AxesUnit(["c"], layer, [conv])
    assert unit.sigmas() == pytest.approx([0.75])
    unit.set_sigma(1.5)
    assert layer.sigma_axes == pytest.approx((1.0, 2.0))
    again = NJetAxesConv2d.from_conv(conv, sigma=1.5)
    assert again.sigma_axes == pytest.approx((1.0, 2.0))
    assert unit.weight_space_fit() == pytest.approx(again.fit_error, rel=1e-5)


def test_rescale_grows_only_the_axes_with_extent():
    torch.manual_seed(0)
    x = _images(2)
    net, _ = njetify.convert(InceptionLike().eval(), example_inputs=x)
    big, _ = njetify.rescale(net, 2)
    assert big.b1x7.sigma_axes == pytest.approx((0.0, 3.0)) and big.b1x7.kernel_size == (1, 13)
    assert big.b7x1.kernel_size == (13, 1)
    with torch.no_grad():
        assert big.eval()(F.interpolate(x, scale_factor=2)).shape[-2:] == net.eval()(x).shape[-2:]


class StridedFactorised(nn.Module):
    """A strided 3×1 conv then a 1×3 one: ``(N, 3, H, W)`` → ``(N, 4, ⌈H/2⌉, ⌈W/2⌉)``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, (3, 1), stride=2, padding=(1, 0))
        self.b = nn.Conv2d(4, 4, (1, 3), padding=(0, 1))

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


@pytest.mark.parametrize("mode", ["safe", "keep"])
def test_strided_non_square_conv_keeps_its_stride(mode):
    torch.manual_seed(0)
    model = StridedFactorised().eval()
    x = torch.randn(2, 3, 15, 16)
    net, report = njetify.convert(model, subsample=mode, recipe=load_recipe({"max_fit_error": None}),
                                  example_inputs=x)
    assert isinstance(net.a, NJetAxesConv2d) and net.a.stride == 2
    if mode == "safe":
        (row,) = report.select("subsample")
        assert row.action == "kept" and row.reason
    with torch.no_grad():
        assert net(x).shape == model(x).shape == (2, 4, 8, 8)
