"""Small models for the surgery tests (ResNet/ResNet-D/Inception-like merges, fallbacks, MNIST)."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Basic residual block; ``shortcut`` = "conv" (1×1 stride 2) or "avgpool" (ResNet-D, ceil mode)."""

    def __init__(self, cin, cout, stride=1, shortcut="conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            if shortcut == "avgpool":
                pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
                self.down = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            else:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """3×3/1×1 kernels only (order 4 spans them), strided stem, ceil-mode max-pool, both shortcut kinds,
    a functional 2×2 max-pool and a global pool + Linear head."""

    def __init__(self, cin=3, classes=5, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, 2, "conv")
        self.layer3 = Block(2 * width, 2 * width, 2, "avgpool")
        self.post = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.pool(self.stem(x)))))
        x = F.max_pool2d(self.post(x), 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionDown(nn.Module):
    """Inception-style reduction: three parallel strided branches concatenated."""

    def __init__(self, cin=3, width=4):
        super().__init__()
        self.stem = nn.Conv2d(cin, width, 3, padding=1)
        self.b1 = nn.Conv2d(width, width, 3, stride=2)
        self.b2 = nn.Sequential(nn.Conv2d(width, width, 1), nn.Conv2d(width, width, 3, padding=1),
                                nn.Conv2d(width, width, 3, stride=2))
        self.after = nn.Conv2d(3 * width, width, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), F.max_pool2d(x, 3, 2)], 1)
        return self.after(x)


class MnistCNN(nn.Module):
    """Strided conv, max-pooling, flatten → Linear (28×28 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))


def leaf_shapes(model, x, skip=()):
    """``{path: output shape}`` of every leaf module not of a type in ``skip``, and the output."""
    shapes, handles = {}, []
    for name, m in model.named_modules():
        if name and not list(m.children()) and not isinstance(m, skip):
            handles.append(m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))))
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return shapes, out


class DataDependent(nn.Module):
    """Root forward branches on data (does not trace); its children trace."""

    def __init__(self):
        super().__init__()
        self.a = TinyResNet(classes=4)
        self.b = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        if x.mean() > 100:  # data-dependent: symbolic tracing fails here
            return self.a(x) * 0
        return self.a(x) + self.b(x).mean((2, 3))


class Gate(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() != 0 else self.conv(x) * 0


class NothingTraces(nn.Module):
    """Every non-leaf module branches on data: module swap is the only option."""

    def __init__(self):
        super().__init__()
        self.g1 = Gate(3, 4, 2)
        self.g2 = Gate(4, 4)

    def forward(self, x):
        if x.abs().sum() < 0:
            return x
        return self.g2(self.g1(x))


class PlainCNN(nn.Module):
    """NiN/AllCNN-like chain without merges (for ``where="every_layer"``)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        )

    def forward(self, x):
        return self.body(x)
