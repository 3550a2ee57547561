"""SafeSubsample: exact strided sizes and pixels at σ₀, sizes that follow σ."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njetify import NJetConv2d, SafeSubsample


@pytest.mark.parametrize("size", [8, 9, 32, 33, 65])
@pytest.mark.parametrize("stride", [2, 3, 4])
def test_reproduces_strided_conv_exactly_at_sigma0(size, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
    layer = NJetConv2d.from_conv(conv, order=4, stride=1)
    sub = SafeSubsample(layer, stride=stride)
    assert sub.factor == pytest.approx(1 / stride)
    x = torch.randn(2, 3, size, size + 1)
    ref = conv(x)
    out = sub(layer(x))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [7, 8, 33])
def test_reproduces_max_pool_on_stride1_output(size):
    # 3×3/pad-1 stride-2 max-pool == stride-1 pool + pick every 2nd pixel
    x = torch.randn(1, 2, size, size)
    sub = SafeSubsample(NJetConv2d(2, 2, sigma=0.5), stride=2)
    torch.testing.assert_close(sub(F.max_pool2d(x, 3, 1, 1)), F.max_pool2d(x, 3, 2, 1))


def test_naive_interpolate_would_pick_wrong_pixels():
    x = torch.arange(33.0).view(1, 1, 1, 33).expand(1, 1, 33, 33)
    sub = SafeSubsample(None, stride=2)
    picked = sub(x)[0, 0, 0]
    assert picked.tolist() == list(range(0, 33, 2))
    naive = F.interpolate(x, size=(17, 17), mode="nearest")[0, 0, 0]
    assert naive.tolist() != picked.tolist()


def test_size_follows_sigma_and_paper_r():
    layer = NJetConv2d(2, 2, sigma=1.0)
    sub = SafeSubsample(layer, stride=2, r=4.0)  # the paper's r
    assert sub.factor == pytest.approx(0.5 ** (1 / 4))
    with torch.no_grad():
        layer.log_sigma.fill_(torch.tensor(4.0).log())
    assert sub.factor == pytest.approx(0.5)
    assert sub(torch.randn(1, 2, 20, 20)).shape[-2:] == (10, 10)
    auto = SafeSubsample(layer, stride=2, sigma0=2.0)  # r = σ₀/log2(2) = 2
    assert auto.r == pytest.approx(2.0) and auto.factor == pytest.approx(0.25)
    assert auto.output_size(33) == 9


def test_gradient_flows_to_input_not_through_size():
    layer = NJetConv2d(2, 2, sigma=0.5)
    sub = SafeSubsample(layer, stride=2)
    x = torch.randn(1, 2, 9, 9, requires_grad=True)
    sub(layer(x)).sum().backward()
    assert x.grad is not None and layer.log_sigma.grad is not None  # σ still learns through the filter


@pytest.mark.parametrize("mode", ["bilinear", "area"])
def test_smooth_interpolations_have_the_same_size(mode):
    sub = SafeSubsample(NJetConv2d(2, 2, sigma=0.5), stride=2, interpolation=mode)
    assert sub(torch.randn(1, 2, 33, 32)).shape[-2:] == (17, 16)


def test_source_is_a_reference_not_a_submodule():
    model = nn.Sequential(NJetConv2d(2, 2, sigma=0.5))
    model.append(SafeSubsample(model[0], stride=2, source_name="0"))
    assert list(model.state_dict()) == ["0.alpha", "0.log_sigma", "0.bias"]
    clone = copy.deepcopy(model)
    assert clone[1].source is clone[0]
    assert "source=0" in repr(model)
