"""njetify: make a CNN's resolution learnable with N-Jet layers.

Public API (see README): ``NJetConv2d``, ``SafeSubsample``.
"""

from .layers import NJetConv2d, SafeSubsample
from .models import create_model, list_models
from .surgery import ConversionReport, convert, njetify
from .io import load, save
from .recipes import list_recipes, load_recipe
from .summary import summarize
from .surgery.aspp import tie_aspp

__version__ = "0.1.0"

__all__ = [
    "ConversionReport", "NJetConv2d", "SafeSubsample", "__version__", "convert", "create_model", "list_models",
    "njetify", "load", "save", "list_recipes", "load_recipe", "summarize",
    "tie_aspp",
]
