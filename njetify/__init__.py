"""njetify: make a CNN's resolution learnable with N-Jet layers.

Public API (see README): ``NJetConv2d``, ``SafeSubsample``.
"""

from .layers import NJetConv2d, SafeSubsample
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["NJetConv2d", "SafeSubsample", "__version__", "create_model", "list_models"]
