"""A small U-Net (Ronneberger et al. 2015), the toy segmentation network of Pintea et al. 2021.

Three levels with 64, 128 and 256 channels; each level is two 3×3 convs with
'same' padding and ReLU (no batch norm); 2×2 max-pooling on the way down;
bilinear upsampling, concatenation with the skip connection and two 3×3 convs on
the way up; a 1×1 conv to the classes. The upsampling goes to the *skip's size*
(not a fixed factor 2), so odd input sizes work and the decoder follows whatever
sizes a (safe-)subsampling in the encoder produces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["UNetSmall", "DoubleConv", "UpBlock"]


class DoubleConv(nn.Sequential):
    """Two 3×3 'same' convs with ReLU: ``(N, cin, H, W)`` → ``(N, cout, H, W)``."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Bilinear upsampling of ``x`` to the size of ``skip``, concatenation, :class:`DoubleConv`."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin + cskip, cout)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNetSmall(nn.Module):
    """3-level U-Net. Input ``(N, in_chans, H, W)`` → per-pixel logits ``(N, num_classes, H, W)``.

    Args:
        width: channels of the first level (64); doubled at each level below.
        levels: number of resolution levels (3: two poolings).
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 3, width: int = 64, levels: int = 3):
        super().__init__()
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"UNetSmall: levels must be an int ≥ 2, got {levels!r}")
        chans = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = in_chans
        for c in chans:
            self.down.append(DoubleConv(cin, c))
            cin = c
        # one pooling module per level (not one shared): surgery replaces each site on its own
        self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in range(levels - 1))
        self.up = nn.ModuleList(UpBlock(chans[i + 1], chans[i], chans[i]) for i in reversed(range(levels - 1)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pools[i - 1](x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)


@register_model("unet_small", description="3-level U-Net (64-128-256, max-pool, bilinear up, no BN), 1.88M params")
def unet_small(num_classes=None, in_chans=None, **kwargs) -> UNetSmall:
    """The paper's toy-segmentation U-Net; kwargs: ``width`` (64), ``levels`` (3)."""
    return UNetSmall(
        num_classes=2 if num_classes is None else num_classes,
        in_chans=3 if in_chans is None else in_chans,
        **kwargs,
    )
