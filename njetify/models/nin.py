"""Network in Network, CIFAR-10 version (Lin, Chen, Yan, ICLR 2014).

Three mlpconv blocks — a spatial conv followed by two 1×1 convs, every conv
followed by ReLU — separated by 3×3/stride-2 pooling (max, then average) and
dropout 0.5, ending with a 1×1 conv to the classes and global average pooling
(no fully connected layer). Layer widths as in the authors' released CIFAR-10
model: 192-160-96 (5×5), 192-192-192 (5×5), 192-192-classes (3×3); 0.97M
parameters for 10 classes. The pools use padding 1, which gives the 16 and 8
pixel maps of the original (Caffe, ceil-mode) model on 32×32 inputs.
"""

from __future__ import annotations

from torch import nn

from ._blocks import GlobalPoolNet, conv_relu
from .registry import register_model

__all__ = ["NiN"]


class NiN(GlobalPoolNet):
    """NiN for CIFAR. Input ``(N, in_chans, H, W)`` (32×32 in the paper) → logits ``(N, num_classes)``.

    Args:
        dropout: dropout after the first two pooling layers (paper: 0.5).
        batch_norm: add BatchNorm after every conv (not in the original; off by default).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.5, batch_norm: bool = False):
        bn = batch_norm
        super().__init__(nn.Sequential(
            *conv_relu(in_chans, 192, 5, bn=bn), *conv_relu(192, 160, 1, bn=bn), *conv_relu(160, 96, 1, bn=bn),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Dropout(dropout),
            *conv_relu(96, 192, 5, bn=bn), *conv_relu(192, 192, 1, bn=bn), *conv_relu(192, 192, 1, bn=bn),
            nn.AvgPool2d(3, stride=2, padding=1),
            nn.Dropout(dropout),
            *conv_relu(192, 192, 3, bn=bn), *conv_relu(192, 192, 1, bn=bn), *conv_relu(192, num_classes, 1, bn=bn),
        ))


@register_model("nin", description="Network in Network, CIFAR version (Lin et al. 2014), 0.97M params")
def nin(num_classes=None, in_chans=None, **kwargs) -> NiN:
    """NiN for 32×32 inputs; kwargs: ``dropout`` (0.5), ``batch_norm`` (False)."""
    return NiN(num_classes=10 if num_classes is None else num_classes, in_chans=3 if in_chans is None else in_chans, **kwargs)
