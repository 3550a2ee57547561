"""NJetConv2d.from_conv: σ₀ from k, least-squares fit, data-aware fit, semantics kept."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njetify import NJetConv2d
from njetify.basis import gaussian_basis_2d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("k,d,sigma0", [(3, 1, 0.5), (5, 1, 1.0), (7, 1, 1.5), (3, 2, 1.0), (3, 6, 3.0)])
def test_sigma0_from_kernel_and_dilation(k, d, sigma0):
    conv = nn.Conv2d(2, 3, k, dilation=d, padding=d * (k - 1) // 2)
    layer = NJetConv2d.from_conv(conv)
    assert layer.sigma.item() == pytest.approx(sigma0)
    assert layer.kernel_size == (d * (k - 1) + 1,) * 2
    x = torch.randn(1, 2, 20, 20)
    assert layer(x).shape == conv(x).shape


def test_order4_reproduces_any_3x3_conv():
    conv = nn.Conv2d(8, 16, 3, padding=1, stride=2)
    layer = NJetConv2d.from_conv(conv, order=4)
    assert layer.fit_error < 1e-5
    x = torch.randn(2, 8, 17, 17)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)
    assert layer.stride == 2 and layer.bias is not None


def test_kernel_in_span_is_reproduced():
    # a 5×5 kernel built from the order-3 basis at σ = 1 lies in the span
    basis = gaussian_basis_2d(torch.tensor(1.0, dtype=torch.float64), 3, 2)
    alpha = torch.randn(6, 4, 10, dtype=torch.float64)
    conv = nn.Conv2d(4, 6, 5, padding=2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("ocf,fyx->ocyx", alpha, basis))
    layer = NJetConv2d.from_conv(conv, order=3)
    assert layer.fit_error < 1e-10
    torch.testing.assert_close(layer.alpha, alpha)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_grouped_and_depthwise_conversion():
    for groups in (2, 8):
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        layer = NJetConv2d.from_conv(conv, order=4)
        x = torch.randn(1, 8, 10, 10)
        torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)


def test_valid_padding_conv_keeps_output_size():
    conv = nn.Conv2d(3, 4, 3, padding=0)
    layer = NJetConv2d.from_conv(conv, order=4)
    x = torch.randn(1, 3, 12, 12)
    assert layer.trim == 1
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.to_conv()(x), conv(x), atol=1e-5, rtol=1e-4)


def test_timm_conv2d_same_semantics_kept():
    from timm.layers import Conv2dSame

    conv = Conv2dSame(3, 4, 3, stride=2)
    layer = NJetConv2d.from_conv(conv, order=4)
    assert layer.padding == "dynamic_same"
    for size in (16, 17):
        x = torch.randn(1, 3, size, size)
        torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)


def test_padding_mode_and_device_dtype_kept():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect").double()
    layer = NJetConv2d.from_conv(conv, order=4)
    assert layer.padding_mode == "reflect" and layer.alpha.dtype == torch.float64
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_data_aware_fit_lowers_output_error():
    # smooth, correlated inputs (like real images) make the data-aware fit matter
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = F.avg_pool2d(torch.randn(16, 4, 36, 36), 5, stride=1)
    ref = conv(x)
    plain = NJetConv2d.from_conv(conv, order=2)
    aware = NJetConv2d.from_conv(conv, order=2, inputs=[x[:8], x[8:]])
    err_plain = (plain(x) - ref).norm() / ref.norm()
    err_aware = (aware(x) - ref).norm() / ref.norm()
    assert err_aware < 0.8 * err_plain
    assert aware.fit_error >= plain.fit_error  # worse in weight space, better where it counts


def test_data_aware_fit_with_dead_channel_stays_finite():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(4, 3, 10, 10)
    x[:, 1] = 0.0  # a channel that never fires
    layer = NJetConv2d.from_conv(conv, order=2, inputs=x)
    assert torch.isfinite(layer.alpha).all()
    plain = NJetConv2d.from_conv(conv, order=2)
    torch.testing.assert_close(layer.alpha[:, 1], plain.alpha[:, 1])


def test_explicit_sigma_and_kwargs():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    layer = NJetConv2d.from_conv(conv, order=2, sigma=1.0, learn_sigma=False, max_size=7)
    assert layer.kernel_size == (5, 5) and not layer.log_sigma.requires_grad and layer.max_size == 7


def test_from_conv_with_sigma_per_channel():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = NJetConv2d.from_conv(conv, order=4, sigma_per="channel")
    assert layer.sigma.shape == (4,) and layer.fit_error < 1e-5
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)


def test_data_aware_fit_is_the_engines_and_names_bad_inputs():
    """from_conv(inputs=) runs the calibration engine's output matching (one data-based fit): a strided,
    biased, dilated conv is fitted too, and bad inputs give one ValueError that says what is wrong."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2)
    x = F.avg_pool2d(torch.randn(8, 4, 30, 30), 5, stride=1)
    ref = conv(x)
    plain = NJetConv2d.from_conv(conv, order=2)
    aware = NJetConv2d.from_conv(conv, order=2, inputs=x)
    with torch.no_grad():
        err_plain = float((plain(x) - ref).norm() / ref.norm())
        err_aware = float((aware(x) - ref).norm() / ref.norm())
    assert err_aware < 0.9 * err_plain
    assert not torch.equal(aware.bias, conv.bias)  # the bias is refitted with α
    with pytest.raises(ValueError, match="data-aware fit: inputs"):
        NJetConv2d.from_conv(conv, inputs=[])
    with pytest.raises(ValueError, match="data-aware fit"):
        NJetConv2d.from_conv(conv, inputs=torch.randn(2, 3, 16, 16))  # 3 channels for a 4-channel conv
