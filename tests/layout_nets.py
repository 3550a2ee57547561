"""Users' own modules whose heads change the feature layout before or after a flatten.

``RNetLike`` / ``ONetLike`` are facenet-pytorch's MTCNN R-Net and O-Net layouts written out
(conv → PReLU → max-pool(3, 2, ceil_mode) ×2 (×3 for O-Net), conv, PReLU, then
``x.permute(0, 3, 2, 1).contiguous()`` and ``dense(x.view(N, -1))``, PReLU, several Linear heads).
Inputs: R-Net 24×24, O-Net 48×48 (RGB).
"""

import torch
from torch import nn


class RNetLike(nn.Module):
    """MTCNN R-Net: ``(N, 3, 24, 24)`` → ``(box (N, 4), face probability (N, 2))``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.dense4(x.view(x.shape[0], -1))
        x = self.prelu4(x)
        a = self.softmax5_1(self.dense5_1(x))
        b = self.dense5_2(x)
        return b, a


class ONetLike(nn.Module):
    """MTCNN O-Net: ``(N, 3, 48, 48)`` → ``(box (N, 4), landmarks (N, 10), face probability (N, 2))``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.dense5(x.view(x.shape[0], -1))
        x = self.prelu5(x)
        a = self.softmax6_1(self.dense6_1(x))
        return self.dense6_2(x), self.dense6_3(x), a


class PermuteFlat(nn.Module):
    """``(N, 3, 16, 16)`` → conv, stride-2 conv, ``transpose(1, 3)``, ``torch.flatten`` → Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(x.transpose(1, 3), 1))


class LinearLinear(nn.Module):
    """``(N, 3, 16, 16)`` → convs with a stride-2 pool → ``nn.Flatten`` → Linear → ReLU → Linear → Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 16)
        self.fc3 = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc3(self.fc2(torch.relu(self.fc1(self.flat(self.features(x))))))


class FlattenInForward(nn.Module):
    """``(N, 3, 16, 16)`` → a conv block whose own forward flattens (``x.reshape(N, -1)``)
    and a head that reshapes the features to ``(N, 16, 32)`` before a Linear over the last axis."""

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)).reshape(x.shape[0], -1)

    def __init__(self):
        super().__init__()
        self.body = self.Body()
        self.fc = nn.Linear(8 * 8 * 8, 512)
        self.token = nn.Linear(32, 4)

    def forward(self, x):
        x = self.fc(self.body(x))
        return self.token(x.view(x.shape[0], 16, 32))
