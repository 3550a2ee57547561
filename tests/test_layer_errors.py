"""Bad input to the layers fails early with a message that names the argument and what is allowed."""

import pytest
import torch
from torch import nn

from njetify import NJetConv2d, SafeSubsample


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma must be a positive"),
        ({"sigma": -1.0}, "sigma must be a positive"),
        ({"sigma": "big"}, "sigma"),
        ({"order": -1}, r"order must be an int in 0\.\.8"),
        ({"order": 20}, r"order must be an int in 0\.\.8"),
        ({"order": 2.5}, "order must be an int"),
        ({"groups": 3}, "divisible by groups"),
        ({"padding_mode": "mirror"}, "padding_mode must be one of 'zeros', 'reflect'"),
        ({"sigma_per": "pixel"}, "sigma_per must be one of"),
        ({"extent": 0}, "extent must be a positive"),
        ({"stride": 0}, "stride must be a positive int"),
        ({"max_size": 0}, "max_size must be a positive int"),
        ({"sigma": [1.0, 2.0]}, "sigma has 2 values"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = {"in_channels": 4, "out_channels": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        NJetConv2d(**args)


@pytest.mark.parametrize(
    "conv, match",
    [
        (nn.Conv2d(2, 2, (3, 5), padding=(1, 2)), "non-square kernel 3x5"),
        (nn.ConvTranspose2d(2, 2, 3), "transposed"),
        (nn.Conv1d(2, 2, 3), "1-D convolution"),
        (nn.Conv3d(2, 2, 3), "3-D convolution"),
        (nn.Conv2d(2, 2, 1), "1x1 kernel"),
        (nn.Conv2d(2, 2, 4), "even kernel"),
        (nn.Conv2d(2, 2, 3, padding=(1, 0)), "asymmetric padding"),
    ],
)
def test_from_conv_rejects(conv, match):
    with pytest.raises(ValueError, match=match):
        NJetConv2d.from_conv(conv)


def test_from_conv_rejects_non_conv_and_custom_forward():
    with pytest.raises(TypeError, match="expected an nn.Conv2d, got Linear"):
        NJetConv2d.from_conv(nn.Linear(2, 2))

    class Weird(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(ValueError, match="Weird has its own forward"):
        NJetConv2d.from_conv(Weird(2, 2, 3, padding=1))


def test_safe_subsample_errors():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        SafeSubsample(None, 2, interpolation="cubic")
    with pytest.raises(ValueError, match="r must be a positive"):
        SafeSubsample(NJetConv2d(2, 2), 2, r=-1.0)
    with pytest.raises(ValueError, match="r='auto' needs stride > 1"):
        SafeSubsample(NJetConv2d(2, 2), 1)


def test_fit_rejects_unequal_per_channel_sigma():
    layer = NJetConv2d(2, 2, sigma=[0.5, 1.0], sigma_per="channel")
    with pytest.raises(ValueError, match="per-channel σ differ"):
        layer.fit_(torch.randn(2, 2, 3, 3))
