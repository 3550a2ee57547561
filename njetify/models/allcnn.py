"""All-CNN-C of Springenberg, Dosovitskiy, Brox, Riedmiller, "Striving for Simplicity:
The All Convolutional Net", ICLR workshop 2015 (Table 2, model C; Table 3).

Only convolutions: 3×3 convs with 96, 96 and 96 channels (the last with stride 2 in
place of max-pooling), 3×3 convs with 192, 192 and 192 (stride 2), a 3×3 conv with
192 channels and no padding (8×8 → 6×6), a 1×1 conv with 192 and a 1×1 conv to the
classes, every conv followed by ReLU as in Table 2, then global average pooling.
Dropout 20% on the input and 50% after each stride-2 conv (paper §3.2.1).
1.37M parameters for 10 classes (the paper rounds to 1.3M).
"""

from __future__ import annotations

from torch import nn

from ._blocks import GlobalPoolNet, conv_relu
from .registry import register_model

__all__ = ["AllCNN"]


class AllCNN(GlobalPoolNet):
    """All-CNN-C. Input ``(N, in_chans, H, W)`` (32×32 in the paper) → logits ``(N, num_classes)``.

    Args:
        input_dropout: dropout on the input (paper: 0.2).
        dropout: dropout after each stride-2 conv (paper: 0.5).
        batch_norm: add BatchNorm after every conv (not in the original; off by default).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_dropout: float = 0.2,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ):
        bn = batch_norm
        super().__init__(nn.Sequential(
            nn.Dropout(input_dropout),
            *conv_relu(in_chans, 96, 3, bn=bn), *conv_relu(96, 96, 3, bn=bn), *conv_relu(96, 96, 3, stride=2, bn=bn),
            nn.Dropout(dropout),
            *conv_relu(96, 192, 3, bn=bn), *conv_relu(192, 192, 3, bn=bn), *conv_relu(192, 192, 3, stride=2, bn=bn),
            nn.Dropout(dropout),
            *conv_relu(192, 192, 3, padding=0, bn=bn), *conv_relu(192, 192, 1, bn=bn), *conv_relu(192, num_classes, 1, bn=bn),
        ))


@register_model("allcnn", description="All-CNN-C (Springenberg et al. 2015), 1.37M params")
def allcnn(num_classes=None, in_chans=None, **kwargs) -> AllCNN:
    """All-CNN-C for 32×32 inputs; kwargs: ``input_dropout`` (0.2), ``dropout`` (0.5), ``batch_norm`` (False)."""
    return AllCNN(
        num_classes=10 if num_classes is None else num_classes,
        in_chans=3 if in_chans is None else in_chans,
        **kwargs,
    )
