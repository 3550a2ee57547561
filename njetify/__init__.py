"""njetify: make a CNN's resolution learnable with N-Jet layers.

model in → trace → passes → report → model out::

    net, report = njetify.convert(model, order=3, calibration_data=batches)

Public API (see README): layers (``NJetConv2d``, ``SafeSubsample``, ``TiedNJetConv2d``),
conversion (``njetify``, ``convert``, ``ConversionReport``, ``tie_aspp``), models
(``create_model``, ``list_models``), recipes (``load_recipe``, ``list_recipes``),
files (``save``, ``load``), ``summarize`` and ``rescale`` (another input resolution). Training lives in ``njetify.train``,
data in ``njetify.data``, plots in ``njetify.plots``, deployment in ``njetify.bake``.
"""

from .budget import set_budget
from .io import load, save
from .layers import NJetConv2d, SafeSubsample, TiedNJetConv2d
from .models import create_model, list_models
from .recipes import list_recipes, load_recipe
from .rescaling import rescale
from .summary import summarize
from .surgery import ConversionReport, convert, njetify
from .surgery import tie_aspp

__version__ = "0.1.0"

__all__ = [
    "ConversionReport", "NJetConv2d", "SafeSubsample", "TiedNJetConv2d", "__version__", "convert",
    "create_model", "list_models", "list_recipes", "load", "load_recipe", "njetify", "rescale", "save", "set_budget",
    "summarize", "tie_aspp",
]
