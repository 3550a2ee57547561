"""A convolution followed by a nearest safe-subsampling that keeps every k-th pixel runs at stride k:
the same outputs and gradients as stride 1 + subsample, at a quarter of the work for k = 2."""

import math

import pytest
import torch
from torch import nn

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.layers.safe_subsample import FixedSubsample, full_resolution, strided_pick
from njetify.layers.sizes import refresh_sizes
from njetify.layers.subsampled_conv import SubsampledConv2d


def _layer(sigma=0.5):
    torch.manual_seed(0)
    conv = NJetConv2d(3, 5, order=2, sigma=sigma)
    conv.subsample = SafeSubsample(conv, stride=2)
    return conv


@pytest.mark.parametrize("side", [16, 17, 7])
def test_picks_at_sigma0_and_near_it(side):
    conv = _layer()
    assert strided_pick(conv.subsample, side, side) == 2  # σ₀: factor exactly 1/2
    with torch.no_grad():
        conv.log_sigma.add_(math.log(1.02))  # σ moved a little: the picks are still every 2nd pixel
    assert strided_pick(conv.subsample, side, side) == 2
    with torch.no_grad():
        conv.log_sigma.add_(math.log(1.5))  # the factor is now well below 1/2: other pixels
    assert strided_pick(conv.subsample, side, side) is None
    assert strided_pick(FixedSubsample(0.5), side, side) is None  # a baked model runs as it is
    bilinear = SafeSubsample(conv, stride=2, interpolation="bilinear")
    assert strided_pick(bilinear, side, side) is None


@pytest.mark.parametrize("log_step", [0.0, math.log(1.02), math.log(1.6)])
def test_same_outputs_and_gradients_as_full_resolution(log_step):
    conv = _layer()
    with torch.no_grad():
        conv.log_sigma.add_(log_step)
    refresh_sizes(conv)
    x = torch.randn(2, 3, 15, 15, requires_grad=True)
    results = []
    for ctx in (torch.enable_grad, full_resolution):
        with ctx():
            y = conv(x)
            grads = torch.autograd.grad(y.square().sum(), (x, conv.alpha, conv.log_sigma))
        results.append((y, grads))
    (y1, g1), (y2, g2) = results
    assert y1.shape == y2.shape
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_subsampled_plain_conv_runs_strided(monkeypatch):
    torch.manual_seed(0)
    src = NJetConv2d(3, 3, order=1, sigma=0.5)
    original = nn.Conv2d(3, 4, 1, stride=2)
    sub = SubsampledConv2d.from_conv(original, SafeSubsample(src, stride=2))
    x = torch.randn(2, 3, 9, 9)
    with full_resolution():
        slow = sub(x)
    seen = []
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", lambda *a: seen.append(1) or None)
    fast = sub(x)  # the strided shortcut never runs the stride-1 conv
    assert not seen
    assert fast.shape[-2:] == (5, 5)
    torch.testing.assert_close(fast, slow)


def test_hooks_on_the_subsampling_still_see_its_output():
    conv = _layer()
    seen = []
    conv.subsample.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[-2:])))
    conv(torch.randn(1, 3, 16, 16))
    assert seen == [(8, 8)]
