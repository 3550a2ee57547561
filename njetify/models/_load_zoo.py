"""Import the built-in architectures so that their ``register_model`` calls run."""

from . import allcnn, cifar_resnet, nin, unet  # noqa: F401
