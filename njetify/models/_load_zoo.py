"""Import the built-in architectures so that their ``register_model`` calls run."""

from . import allcnn, cifar_resnet, nin, unet  # noqa: F401
from .deeplabv2 import check_checkpoint_classes, deeplabv2_resnet101
from .registry import register_model

register_model(
    "deeplabv2_resnet101",
    description="DeepLab v2 ResNet-101 (OS 8, ASPP 6/12/18/24 summed), kazuto1011 state_dict names; msc=True: MSC",
    check_weights=check_checkpoint_classes,
)(deeplabv2_resnet101)
