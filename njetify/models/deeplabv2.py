"""DeepLab v2 (ResNet-101, output stride 8, ASPP 6/12/18/24) in the layout of kazuto1011/deeplab-pytorch.

Module and state_dict names are those of kazuto1011's ``libs/models`` (``deeplabv2.py``,
``resnet.py``, ``msc.py``), so its checkpoints (Caffe-converted VOC init, COCO-Stuff
164k / 10k, VOC 2012 fine-tuned) load without renaming:

* ``base.layer1``: the stem — ``conv1`` (7×7/2 conv + BN + ReLU as ``.conv`` / ``.bn``) and a
  3×3/2 max-pool with ``ceil_mode=True``;
* ``base.layer2..layer5``: bottleneck stages (3, 4, 23, 3 blocks) with ``reduce``,
  ``conv3x3``, ``increase`` and, in block 1, ``shortcut`` (each a conv + BN); the stride of a
  block sits on its 1×1 ``reduce`` conv (MSRA / Caffe ResNet); layer4 and layer5 are dilated
  (rates 2 and 4) instead of strided, so the logits are at 1/8 of the input;
* ``base.aspp.c0..c3``: four biased 3×3 convs with dilation = padding = 6, 12, 18, 24 whose
  outputs are summed.

BatchNorm uses eps 1e-5 and momentum 0.001 (kazuto1011's ``momentum=1 - 0.999``).
The output is the ASPP sum: logits of shape ``(N, num_classes, ⌈H/8⌉, ⌈W/8⌉)`` (with
``ceil_mode`` pooling), as in the reference; pass ``upsample=True`` to get them
bilinearly resized to the input size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP_RATES", "MSC", "DeepLabV2", "check_checkpoint_classes", "deeplabv2_resnet101"]

#: ASPP dilation rates of DeepLab v2 (Chen et al., TPAMI 2018: "ASPP-L").
ASPP_RATES = (6, 12, 18, 24)
#: Blocks per stage of ResNet-101.
RESNET101_BLOCKS = (3, 4, 23, 3)
_EXPANSION = 4


class _ConvBnReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm (eps 1e-5, momentum 0.001) + optional ReLU; children ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class _Bottleneck(nn.Module):
    """1×1 reduce (strided) → 3×3 (dilated) → 1×1 increase, plus shortcut; ReLU after the sum."""

    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid = out_ch // _EXPANSION
        self.reduce = _ConvBnReLU(in_ch, mid, 1, stride, 0, 1, True)
        self.conv3x3 = _ConvBnReLU(mid, mid, 3, 1, dilation, dilation, True)
        self.increase = _ConvBnReLU(mid, out_ch, 1, 1, 0, 1, False)
        self.shortcut = _ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, False) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + self.shortcut(x))


class _ResLayer(nn.Sequential):
    """``n_layers`` bottlenecks ``block1..blockN``; the first one changes channels and stride."""

    def __init__(self, n_layers, in_ch, out_ch, stride, dilation):
        super().__init__()
        for i in range(n_layers):
            block = _Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation, i == 0)
            self.add_module(f"block{i + 1}", block)


class _Stem(nn.Sequential):
    """7×7/2 conv + BN + ReLU, then a 3×3/2 max-pool with ``ceil_mode=True`` (kazuto1011 / Caffe)."""

    def __init__(self, out_ch, in_ch=3):
        super().__init__()
        self.add_module("conv1", _ConvBnReLU(in_ch, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class _ASPP(nn.Module):
    """Parallel biased 3×3 convs ``c0..c{K−1}`` with dilation = padding = rate; outputs summed."""

    def __init__(self, in_ch, out_ch, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate, bias=True))
        for m in self.children():
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.children())


class DeepLabV2(nn.Sequential):
    """DeepLab v2 body: ``layer1`` (stem), ``layer2..layer5`` (ResNet stages, OS 8), ``aspp``.

    Shapes: ``(N, in_chans, H, W)`` → logits ``(N, n_classes, H', W')`` with H' ≈ H/8.
    """

    def __init__(self, n_classes: int, n_blocks: Sequence[int], atrous_rates: Sequence[int], in_chans: int = 3):
        super().__init__()
        ch = [64 * 2**p for p in range(6)]
        self.add_module("layer1", _Stem(ch[0], in_chans))
        self.add_module("layer2", _ResLayer(n_blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", _ResLayer(n_blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", _ResLayer(n_blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", _ResLayer(n_blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", _ASPP(ch[5], n_classes, atrous_rates))

    def freeze_bn(self) -> None:
        """Put every BatchNorm in eval mode (the reference trains with frozen BN statistics)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


class MSC(nn.Module):
    """Multi-scale inputs around ``base`` (kazuto1011's ``MSC``): state_dict keys are ``base.…``.

    The input is also run at each factor in ``scales`` (bilinear, align_corners False); the
    logits of every scale are resized to those of the full-size input and fused by an
    element-wise max. With ``scales=()`` it is ``base`` alone. Unlike the reference, the
    fused logits are returned in training mode too (one tensor, for generic losses);
    ``return_all=True`` restores the reference's training output
    ``[full, *scaled, fused]``. ``upsample=True`` resizes the result to the input size.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (0.5, 0.75), *,
                 upsample: bool = False, return_all: bool = False):
        super().__init__()
        self.base = base
        self.scales = tuple(float(s) for s in scales)
        for s in self.scales:
            if not 0 < s:
                raise ValueError(f"MSC: scales must be positive factors, got {scales!r}")
        self.upsample, self.return_all = upsample, return_all

    def forward(self, x: torch.Tensor):
        logits = self.base(x)
        if not self.scales:
            return self._resize(logits, x)
        size = logits.shape[-2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([logits, *resized]).max(0)[0]
        if self.training and self.return_all:
            return [logits, *pyramid, fused]
        return self._resize(fused, x)

    def _resize(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.upsample:
            return logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplabv2_resnet101(
    num_classes: int | None = 21,
    in_chans: int | None = 3,
    msc: bool = False,
    *,
    atrous_rates: Sequence[int] = ASPP_RATES,
    scales: Sequence[float] = (0.5, 0.75),
    upsample: bool = False,
    return_all: bool = False,
) -> nn.Module:
    """DeepLab v2 ResNet-101 (OS 8, ASPP rates 6/12/18/24 summed) with kazuto1011's state_dict keys.

    Args:
        num_classes: output classes (21 Pascal VOC, 182 COCO-Stuff 164k).
        in_chans: input channels.
        msc: multi-scale inputs at 1.0 and ``scales`` fused by max (kazuto1011's
            ``DeepLabV2_ResNet101_MSC``); the keys are ``base.…`` either way.
        atrous_rates: ASPP dilation rates (one branch each).
        upsample: return logits at the input size instead of at 1/8.
        return_all: with ``msc``, return the reference's list of logits in training mode.

    Returns:
        an ``MSC`` module wrapping a :class:`DeepLabV2` as ``base``; input ``(N, in_chans, H, W)``.
    """
    num_classes = 21 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    for name, v in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"deeplabv2_resnet101: {name} must be a positive int, got {v!r}")
    rates = tuple(atrous_rates)
    if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(f"deeplabv2_resnet101: atrous_rates must be positive ints, got {atrous_rates!r}")
    base = DeepLabV2(num_classes, RESNET101_BLOCKS, rates, in_chans)
    return MSC(base, scales if msc else (), upsample=upsample, return_all=return_all)


def check_checkpoint_classes(state_dict: Mapping[str, torch.Tensor], num_classes: int | None) -> int | None:
    """Check that a DeepLab v2 checkpoint's ASPP predicts ``num_classes`` classes (None: 21).

    Looks for ``aspp.c0.weight`` under any prefix (``base.``, ``module.base.``, …).

    Returns:
        the checkpoint's number of classes, or None when it has no ASPP weights.

    Raises:
        ValueError: naming both numbers when they differ.
    """
    num_classes = 21 if num_classes is None else num_classes
    for key, value in state_dict.items():
        if key == "aspp.c0.weight" or key.endswith(".aspp.c0.weight"):
            found = int(value.shape[0])
            if found != num_classes:
                raise ValueError(
                    f"deeplabv2 checkpoint: its ASPP ({key}, shape {tuple(value.shape)}) predicts {found} classes, "
                    f"but num_classes={num_classes} was requested; pass num_classes={found} "
                    "(21: Pascal VOC, 182: COCO-Stuff 164k) or drop the ASPP weights to train a new head"
                )
            return found
    return None
