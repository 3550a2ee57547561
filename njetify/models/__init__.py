"""Model names and the built-in zoo.

``create_model(name, ...)`` builds a built-in architecture (CIFAR ResNets, NiN,
All-CNN-C, a small U-Net, DeepLab v2) or a timm / torchvision / smp model;
``list_models(pattern)`` lists the names; ``load_weights`` loads local checkpoints.
"""

from .registry import ModelEntry, create_model, list_models, model_entry, register_model
from .weights import WeightsReport, load_weights, read_state_dict
from . import _load_zoo  # noqa: E402,F401  (registers the built-ins)

__all__ = [
    "ModelEntry",
    "WeightsReport",
    "create_model",
    "list_models",
    "load_weights",
    "model_entry",
    "read_state_dict",
    "register_model",
]
