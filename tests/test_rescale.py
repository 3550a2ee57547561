"""njetify.rescale: σ × factor at the input's resolution, safe-subsampling following (DESIGN §9)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify import NJetConv2d, SafeSubsample
from njetify.bake import bake
from njetify.bake_record import BAKE_RECORD_ATTR
from njetify.resolution import resolution_line


class Net(nn.Module):
    """3×3 conv → 3×3/2 → 3×3 → 3×3/2 → global pool → linear (BatchNorm, ReLU): two subsampling sites."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for cout, stride in ((4, 1), (6, 2), (6, 1), (8, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def converted(subsample: str = "safe", side: int = 28) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, _ = njetify.convert(Net().eval(), order=3, subsample=subsample, example_inputs=torch.randn(2, 1, side, side))
    return net.eval()


def site_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """Output side of every safe-subsampling site on input ``x``."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, p=p: out.setdefault(p, tuple(o.shape[-2:])) and None)
             for p, m in model.named_modules() if isinstance(m, SafeSubsample)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("factor", [2.0, 1.5, 3.0, 0.5])
def test_maps_after_the_first_subsampling_keep_their_size(factor):
    net = converted()
    side = round(28 * factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # × 0.5: σ₀ = 0.5 is held at the floor (tested below)
        big, report = njetify.rescale(net, factor)
    before = site_outputs(net, torch.randn(1, 1, 28, 28))
    after = site_outputs(big, torch.randn(1, 1, side, side))
    assert after == before and len(before) == 2
    assert report.input_after == (1, side, side)
    first = "features.3"  # the strided conv carries the first subsampling: σ × factor, factor ÷ factor
    layers = {r.path: r for r in report.layers}
    assert layers["features.0"].scaled == layers[first].scaled == factor
    assert layers["features.6"].scaled == layers["features.9"].scaled == 1.0  # behind it: same maps, same σ
    sites = {s.path: s for s in report.sites}
    assert sites[f"{first}.subsample"].factor_after == pytest.approx(sites[f"{first}.subsample"].factor_before / factor)
    assert net.features[0].sigma.item() == pytest.approx(0.5)  # the input model is unchanged (a copy by default)
    assert big.features[0].sigma.item() == pytest.approx(0.5 * max(factor, 1.0))


def test_keep_mode_scales_every_sigma():
    net = converted("keep")
    big, report = njetify.rescale(net, 2)
    assert all(r.scaled == 2.0 for r in report.layers) and not report.sites
    assert big(torch.randn(1, 1, 56, 56)).shape == (1, 3)


def _blob(side: int) -> torch.Tensor:
    """A smooth pattern: an off-centre Gaussian blob plus a slanted sinusoid, ``(1, 1, side, side)``."""
    u = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    y, x = torch.meshgrid(u, u, indexing="ij")
    img = torch.exp(-((x - 0.4) ** 2 + (y - 0.55) ** 2) / (2 * 0.12 ** 2)) + 0.3 * torch.sin(2 * math.pi * (2 * x + y))
    return img[None, None].float()


def test_rescaled_layer_gives_the_same_response_in_image_units():
    torch.manual_seed(0)
    # σ = 1.5: the filter is cut at 2σ both at 1× (7 px) and at 2× (13 px); where the rounding of
    # s = 2⌈2σ⌉ + 1 cuts the two at different multiples of σ (σ = 1.2) the error is about 0.2 at order 3.
    layer = NJetConv2d(1, 6, order=3, sigma=1.5, bias=False)
    model = nn.Sequential(layer).eval()
    x1 = _blob(32)
    x2 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=False)
    big, _ = njetify.rescale(model, 2, input_size=(1, 32, 32))
    with torch.no_grad():
        ref = model(x1)
        back = F.avg_pool2d(big(x2), 2)  # the 64-px response resampled back to the 32-px grid
        naive = F.avg_pool2d(model(x2), 2)  # σ left in pixels: half the receptive field in image units
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the zero-padded border
    err = ((back - ref)[inner].norm() / ref[inner].norm()).item()
    err_naive = ((naive - ref)[inner].norm() / ref[inner].norm()).item()
    assert err < 0.12, err
    assert err_naive > 3 * err  # the comparison can fail: an unscaled filter is far off


def test_rescale_there_and_back_is_the_identity():
    net = converted()
    x = torch.randn(2, 1, 28, 28)
    there, _ = njetify.rescale(net, 3)
    back, report = njetify.rescale(there, 1 / 3)
    assert report.input_before == (1, 84, 84) and report.input_after == (1, 28, 28)
    for (k, a), b in zip(net.state_dict().items(), back.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert all(m.scale == pytest.approx(1.0) for m in back.modules() if isinstance(m, SafeSubsample))
    assert back.njetify_resolution.factor == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-5)


def test_a_fine_tuned_model_rescales():
    net = converted().train()
    opt = torch.optim.SGD([p for n, p in net.named_parameters() if "log_sigma" in n], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 1, 28, 28)).pow(2).mean().backward()
        opt.step()
    net.eval()
    sig = net.features[3].sigma.item()
    assert sig != pytest.approx(0.5)
    big, report = njetify.rescale(net, 2)
    assert big.features[3].sigma.item() == pytest.approx(2 * sig)
    assert site_outputs(big, torch.randn(1, 1, 56, 56)) == site_outputs(net, torch.randn(1, 1, 28, 28))


def test_save_load_keeps_the_resolution(tmp_path):
    net = converted()
    big, _ = njetify.rescale(net, 2)
    path = njetify.save(big, tmp_path / "big.safetensors")
    loaded = njetify.load(path, model=Net()).eval()
    x = torch.randn(1, 1, 56, 56)
    with torch.no_grad():
        assert torch.allclose(loaded(x), big(x), atol=1e-6)
    assert resolution_line(loaded) == "built for inputs of 28×28 px; rescaled ×2 → 56×56"
    assert resolution_line(net) == "built for inputs of 28×28 px"
    again, report = njetify.rescale(loaded, 0.5)  # the loaded model knows it runs at 56 px now
    assert report.input_before == (1, 56, 56)
    assert resolution_line(again) == "built for inputs of 28×28 px"


def test_filters_beyond_max_size_are_capped_visibly():
    net = converted()
    net.features[0].max_size = 5
    with pytest.warns(UserWarning, match=r"features\.0 \(needs 9 px, capped at 5\)"):
        _, report = njetify.rescale(net, 4)
    assert report.capped == ["features.0"]
    assert "capped" in report.summary()


def test_a_baked_model_is_rebuilt_from_its_record():
    net = converted()
    baked = bake(net)
    x = torch.randn(2, 1, 56, 56)
    big, report = njetify.rescale(baked, 2)
    assert report.baked and not njetify.layers.sigma_layers(big)
    with torch.no_grad():
        assert torch.allclose(big(x), bake(njetify.rescale(net, 2)[0])(x), atol=1e-5)
    with torch.no_grad():
        baked.features[0].weight.mul_(1.1)  # fine-tuned as a plain conv: the record is out of date
    with pytest.raises(ValueError, match="changed since baking"):
        njetify.rescale(baked, 2)
    del baked.__dict__[BAKE_RECORD_ATTR]  # e.g. exported and re-imported: no record
    with pytest.raises(ValueError, match=r"rescale the converted model, then bake"):
        njetify.rescale(baked, 2)


@pytest.mark.parametrize("factor", [0, -2, float("nan"), float("inf"), "2", True, None])
def test_bad_factors(factor):
    with pytest.raises(ValueError, match="factor must be a positive"):
        njetify.rescale(converted(), factor)


def test_a_model_without_sigma_layers():
    with pytest.raises(ValueError, match=r"no σ layer.*convert it first"):
        njetify.rescale(Net(), 2)


def test_shrinking_sigma_is_floored_visibly_and_the_subsampling_still_follows():
    net = converted()  # σ₀ = 0.5 everywhere: × 0.5 would give 0.25 px
    with pytest.warns(UserWarning, match=r"below min_sigma=0\.5 px.*features\.0 \(σ 0\.5 × 0\.5 = 0\.25\)"):
        small, report = njetify.rescale(net, 0.5)
    assert report.floored == ["features.0", "features.3"]
    assert small.features[0].sigma.item() == pytest.approx(0.5)
    assert site_outputs(small, torch.randn(1, 1, 14, 14)) == site_outputs(net, torch.randn(1, 1, 28, 28))
    bare, report = njetify.rescale(net, 0.5, min_sigma=None)
    assert not report.floored and bare.features[0].sigma.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="min_sigma must be a positive"):
        njetify.rescale(net, 0.5, min_sigma=0)
