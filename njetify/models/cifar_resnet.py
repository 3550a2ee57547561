"""CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2.

Depth 6n+2: a 3×3 conv with 16 channels, three stages of n basic blocks with
16/32/64 channels (the first block of stages 2 and 3 subsamples with stride 2),
global average pooling and a fully connected layer. Shortcuts are "option A":
identity, subsampled and zero-padded where the shape changes — no parameters.
Parameter counts (10 classes) match the paper's Table 6: ResNet-20 0.27M,
ResNet-32 0.46M, ResNet-44 0.66M, ResNet-56 0.85M, ResNet-110 1.7M.

The option-A shortcut is written as ``MaxPool2d(kernel_size=1, stride=2)`` (which is
exactly ``x[..., ::2, ::2]``) followed by :class:`ChannelPad`, so that model
surgery sees an ordinary strided op that it can turn into safe-subsampling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["CifarResNet", "BasicBlock", "ChannelPad"]


class ChannelPad(nn.Module):
    """Append ``extra`` all-zero channels: ``(N, C, H, W)`` → ``(N, C + extra, H, W)``."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = int(extra)

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"extra={self.extra}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an option-A identity shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        layers: list[nn.Module] = []
        if stride != 1:
            layers.append(nn.MaxPool2d(kernel_size=1, stride=stride))
        if planes != in_planes:
            layers.append(ChannelPad(planes - in_planes))
        self.shortcut = nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs. Input ``(N, in_chans, H, W)`` → logits ``(N, num_classes)``."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64)):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n+2 with n ≥ 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _builder(depth: int, params: str):
    def build(num_classes=None, in_chans=None, **kwargs):
        return CifarResNet(
            depth,
            num_classes=10 if num_classes is None else num_classes,
            in_chans=3 if in_chans is None else in_chans,
            **kwargs,
        )

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcuts; {params} params with 10 classes)."
    return build


for _depth, _params in ((20, "0.27M"), (32, "0.46M"), (44, "0.66M"), (56, "0.85M"), (110, "1.7M")):
    register_model(
        f"resnet{_depth}",
        description=f"CIFAR ResNet-{_depth}, He et al. 2016 §4.2, option-A shortcuts, {_params} params",
    )(_builder(_depth, _params))
