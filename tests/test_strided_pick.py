"""A convolution followed by a nearest safe-subsampling that keeps every k-th pixel runs at stride k:
the same outputs and gradients as stride 1 + subsample, at a quarter of the work for k = 2."""

import math

import pytest
import torch
from torch import nn

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.layers.safe_subsample import FixedSubsample, exact_stride, full_resolution, strided_pick
from njetify.layers.bake_form import bake_forms
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
    assert strided_pick(FixedSubsample(0.5), side, side) == 2  # a baked model shortcuts too (eager)
    assert strided_pick(FixedSubsample(0.5, align=1), side, side) is None
    bilinear = SafeSubsample(conv, stride=2, interpolation="bilinear")
    assert strided_pick(bilinear, side, side) is None


@pytest.mark.parametrize("side", [64, 33, 224])
def test_sigma_a_hair_below_sigma0_keeps_the_sizes_and_the_shortcut(side):
    """σ moved by float noise below σ₀ (a factor 1e-7 above 1/2) keeps the original map size and the
    every-2nd-pixel picks; a real move (a factor 2e-4 above 1/2, σ down ~1.5e-4) grows the map."""
    conv = _layer()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        conv.log_sigma.sub_(2e-7)
    assert conv.subsample.factor > 0.5
    assert strided_pick(conv.subsample, side, side) == 2
    assert conv(x).shape[-1] == -(-side // 2)
    with torch.no_grad():
        conv.log_sigma.sub_(6e-4)
    assert conv.subsample.factor > 0.5 * (1 + 2e-4)
    assert strided_pick(conv.subsample, side, side) is None
    assert conv(x).shape[-1] == (side + 2) // 2  # ⌈side·f⌉ with f just above 1/2: one more on even sides


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


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 1), (2, 0)])
def test_safe_max_pool_runs_strided(kernel, padding):
    import njetify

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(kernel, 2, padding)

        def forward(self, x):
            return self.pool(self.conv(x))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    converted, _ = njetify.convert(net, subsample="safe", example_inputs=x)
    with full_resolution():
        slow = converted(x)
    fast = converted(x)
    assert fast.shape == net(x).shape
    torch.testing.assert_close(fast, slow)


def test_exact_stride_only_for_a_frozen_factor_of_exactly_one_over_k():
    assert exact_stride(FixedSubsample(0.5)) == 2 and exact_stride(FixedSubsample(1 / 3)) == 3
    assert exact_stride(FixedSubsample(0.47)) is None and exact_stride(FixedSubsample(1.0)) is None
    assert exact_stride(FixedSubsample(0.5, interpolation="bilinear")) is None
    assert exact_stride(FixedSubsample(0.5, align=1)) is None
    assert exact_stride(_layer().subsample) is None  # learned: σ may move it


@pytest.mark.parametrize("trim,mode", [(0, "zeros"), (1, "reflect")])
def test_baked_layer_at_sigma0_is_a_strided_conv_with_the_same_outputs(trim, mode):
    """At σ₀ the frozen factor is exactly 1/2: the baked layer is one nn.Conv2d at stride 2 (it scripts and
    exports), equal to the converted layer on every input size; once σ moved, stride 1 + FixedSubsample."""
    torch.manual_seed(0)
    conv = NJetConv2d(3, 5, order=2, sigma=0.5, trim=trim, padding_mode=mode)
    conv.subsample = SafeSubsample(conv, stride=2)
    with bake_forms("never"):
        baked = conv.baked()
    assert type(baked) is nn.Conv2d and baked.stride == (2, 2)
    scripted = torch.jit.script(baked)
    for side in (7, 16, 17, 33):
        x = torch.randn(2, 3, side, side + 1)
        with torch.no_grad(), full_resolution():
            want = conv(x)
        torch.testing.assert_close(baked(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        conv.log_sigma.add_(0.2)
    with bake_forms("never"):  # a plain conv, not the factorised form (which a timing may pick here)
        moved = conv.baked()
    assert isinstance(moved, SubsampledConv2d) and isinstance(moved.subsample, FixedSubsample)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad(), full_resolution():
        torch.testing.assert_close(moved(x), conv(x), rtol=1e-5, atol=1e-6)


def test_baked_plain_subsampled_conv_is_strided_at_sigma0():
    """A 1×1 shortcut conv that runs at stride 1 then subsamples (safe mode) bakes to a stride-2 conv."""
    import njetify
    from njetify.bake import bake

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 1, stride=2))
    model, _ = njetify.convert(net, subsample="safe", example_inputs=torch.randn(1, 3, 16, 16))
    assert isinstance(model[1], SubsampledConv2d)
    baked = bake(model)
    assert type(baked[1]) is nn.Conv2d and baked[1].stride == (2, 2)
    x = torch.randn(2, 3, 15, 18)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), model(x), rtol=1e-5, atol=1e-6)
    from njetify.bake_record import unbake

    back = unbake(baked)  # what njetify.rescale starts from: the safe-subsampled conv is back
    assert isinstance(back[1], SubsampledConv2d) and isinstance(back[1].subsample, SafeSubsample)
