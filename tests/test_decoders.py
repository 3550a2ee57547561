"""Encoder–decoder networks in both subsample modes (issue 20): smp FPN / DeepLabV3+, a U-Net with
transposed up-convs, an HRNet-style fusion. Safe mode must make the encoder's strides safe, keep the
original's output size at σ₀ and after every σ grows by 30 %, and train (forward + backward)."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify.bake import bake
from njetify.layers import NJetConvTranspose2d, SafeUpsample, sigma_parameters
from njetify.layers.sizes import refresh_sizes

smp = pytest.importorskip("segmentation_models_pytorch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grow(model: nn.Module, factor: float = 1.3) -> None:
    with torch.no_grad():
        for p in sigma_parameters(model):
            p.add_(math.log(factor))
    refresh_sizes(model)


def _convert(model, mode, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASPP filter caps at this small input
        return njetify.convert(model, subsample=mode, example_inputs=x, **kw)


def _train_step(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.train()
    for p in net.parameters():
        p.grad = None
    out = net(x)
    out.square().mean().backward()
    sig = sigma_parameters(net)
    assert sig and all(p.grad is not None and torch.isfinite(p.grad).all() for p in sig)
    assert any(float(p.grad.abs().sum()) > 0 for p in sig)
    return out


@pytest.mark.parametrize("mode", ["safe", pytest.param("keep", marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch", ["FPN", "DeepLabV3Plus"])
def test_smp_decoder_encoder_strides_follow_sigma(arch, mode):
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=2).eval()
    x = torch.randn(2, 3, 64, 64)
    net, report = _convert(model, mode, x)
    sub = report.select("subsample")
    with torch.no_grad():
        want = model(x).shape
        feats0 = [f.shape[-2:] for f in model.encoder(x)]
        assert net(x).shape == want
        assert [f.shape[-2:] for f in net.encoder(x)] == feats0  # exact sizes at σ₀
    if mode == "safe":
        assert len(sub) >= 6 and all(r.action == "subsampled" for r in sub), [(r.path, r.reason) for r in sub]
        ups = report.select("upsample")
        assert ups and all(r.action == "follows" for r in ups), [(r.path, r.reason) for r in ups]
        kept, _ = _convert(model, "keep", x)  # the same layers with their strides and fixed upsamplings
        with torch.no_grad():  # at σ₀ safe-subsampling and safe-upsampling give the very same pixels
            torch.testing.assert_close(net(x), kept(x), atol=0, rtol=0)
    else:
        assert all(r.action != "subsampled" for r in sub)
    _grow(net)
    with torch.no_grad():
        net.eval()
        assert net(x).shape == want
        feats = [f.shape[-2:] for f in net.encoder(x)]
    if mode == "safe":  # the encoder's maps follow σ: the deeper ones shrank
        assert feats != feats0 and all(a[0] <= b[0] for a, b in zip(feats, feats0))
    else:
        assert feats == feats0
    assert _train_step(net, x).shape == want


class TUNet(nn.Module):
    """Two-level U-Net with a ``ConvTranspose2d(k=2, s=2)`` up-conv: ``(N, 3, H, W)`` → ``(N, 2, H, W)``."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.enc1(x)
        b = self.enc2(self.pool(a))
        return self.head(self.dec(torch.cat([a, self.up(b)], 1)))


def _smooth(n: int, side: int = 32) -> torch.Tensor:
    return F.interpolate(torch.randn(n, 3, side // 4 + 1, side // 4 + 1), size=(side, side), mode="bilinear",
                         align_corners=True)


@pytest.mark.parametrize("mode", ["safe", "keep"])
def test_unet_transposed_upconv_converts_calibrates_and_bakes(mode):
    torch.manual_seed(0)
    model = TUNet().eval()
    batches = [_smooth(4) for _ in range(3)]
    x = _smooth(2)
    net, report = _convert(model, mode, x, calibration_data=batches)
    row = report.row("conv", "up")
    assert row.action == "converted" and isinstance(net.up, NJetConvTranspose2d)
    assert row.error_after is not None and row.error_after < row.error_before
    if mode == "safe":
        assert report.row("subsample", "pool").action == "subsampled"
        (up,) = report.select("upsample")
        assert up.action == "follows", up.reason
        assert any(isinstance(m, SafeUpsample) for m in net.modules())
    with torch.no_grad():
        y0, y1 = model(x), net(x)
    err = float((y1 - y0).norm() / y0.norm())
    assert y1.shape == y0.shape and err < 0.05, err
    _grow(net)
    assert _train_step(net, x).shape == y0.shape
    net.eval()
    baked = bake(net)
    assert isinstance(baked.up, nn.ConvTranspose2d) and not any(carries for carries in
                                                                 [hasattr(m, "log_sigma") for m in baked.modules()])
    with torch.no_grad():
        torch.testing.assert_close(baked(x), net(x), atol=1e-5, rtol=1e-4)


def test_hrnet_fusion_sites_all_safe_and_follow_sigma():
    """Parallel branches at 1/1, 1/2, 1/4 merged by fixed ×2 / ×4 upsamplings + add (several in one forward)."""
    mod = _load_example("decoders_safe")
    model = mod.HRNetFusion().eval()
    x = torch.randn(2, 3, 32, 32)
    net, report = _convert(model, "safe", x)
    sub, ups = report.select("subsample"), report.select("upsample")
    assert len(sub) == 6 and all(r.action == "subsampled" for r in sub), [(r.path, r.reason) for r in sub]
    assert len(ups) == 5 and all(r.action == "follows" for r in ups), [(r.path, r.reason) for r in ups]
    with torch.no_grad():
        assert net(x).shape == model(x).shape
    _grow(net)
    assert _train_step(net, x).shape == model(x).shape


class DerivedSizeMerge(nn.Module):
    """PAN-like pyramid: a branch pooled twice is resized to ``(h // 4, w // 4)`` of the block's input
    (a size computed from a shape, not a scale factor) and added to the branch pooled once more."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        x = self.stem(x)
        h, w = x.shape[-2:]
        x2 = self.down2(self.down1(x))
        x3 = F.interpolate(self.down3(x2), size=(h // 4, w // 4), mode="bilinear", align_corners=True)
        return F.interpolate(x2 + x3, size=(h, w), mode="bilinear", align_corners=True)


def test_resize_to_a_size_computed_from_a_shape_follows_its_partner():
    torch.manual_seed(0)
    model = DerivedSizeMerge().eval()
    x = torch.randn(2, 3, 32, 32)
    net, report = _convert(model, "safe", x)
    sub, ups = report.select("subsample"), report.select("upsample")
    assert len(sub) == 3 and all(r.action == "subsampled" for r in sub), [(r.path, r.reason) for r in sub]
    (up,) = ups
    assert up.action == "follows" and "size computed from a shape" in up.op, (up.op, up.reason)
    _grow(net, 1.6)
    with torch.no_grad():
        net.eval()
        assert net(x).shape == model(x).shape
        assert net.down2(net.down1(net.stem(x))).shape[-1] < 8  # the pyramid follows σ
    assert _train_step(net, x).shape == model(x).shape


def test_decoders_script_rows_and_table(capsys):
    mod = _load_example("decoders_safe")
    threads = torch.get_num_threads()
    try:
        (row,) = mod.main(["--models", "HRNetFusion"])
    finally:
        torch.set_num_threads(threads)
    assert (row["safe"], row["kept"], row["follows"], row["up_kept"]) == (6, 0, 5, 0)
    assert row["shape_ok"] and row["grads"]
    assert "| HRNetFusion (64×64) | 6 | 0 | 5 | 0 | ok | — |" in mod.table([row])


def test_stride_one_transposed_convs_convert_and_bake():
    from njetify.bake import bake
    from njetify.layers import NJetConvTranspose2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.t = nn.ConvTranspose2d(8, 4, 3, stride=1, padding=1)  # same size
            self.u = nn.ConvTranspose2d(4, 4, 3, stride=1)  # grows by 2 px

        def forward(self, x):
            return self.u(torch.relu(self.t(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    converted, report = njetify.convert(net, example_inputs=x)
    assert isinstance(converted.t, NJetConvTranspose2d) and isinstance(converted.u, NJetConvTranspose2d)
    assert converted(x).shape == net(x).shape == (2, 4, 18, 18)
    baked = bake(converted)
    assert type(baked.t) is nn.ConvTranspose2d and type(baked.u) is nn.ConvTranspose2d
    torch.testing.assert_close(baked(x), converted(x), rtol=1e-5, atol=1e-5)
