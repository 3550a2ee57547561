"""Building blocks shared by the plain all-convolutional built-ins (NiN, All-CNN-C)."""

from __future__ import annotations

from torch import nn


def conv_relu(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None,
              bn: bool = False) -> list[nn.Module]:
    """``Conv2d(k×k, "same" padding unless given) [→ BatchNorm2d] → ReLU``; no conv bias with BN."""
    pad = k // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class GlobalPoolNet(nn.Module):
    """``features`` → global average pool → ``(N, num_classes)``; He-normal conv init, zero biases."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)
