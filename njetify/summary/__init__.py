"""Inspect a converted model: per-layer σ, filter size, feature-map sizes and receptive fields.

``summarize(model, "3x32x32")`` returns a :class:`ModelSummary` (a rich table and a dict);
``compare_models(original, converted, x)`` gives parameters, MACs and the output difference;
:mod:`njetify.plots` draws a summary (``plot_summary``).
"""

from .compare import Comparison, compare_models, default_input_size
from .core import LayerInfo, ModelSummary, count_macs, parse_input_size, summarize
from .trace import RF, MacCounter, RFTracker

__all__ = [
    "RF",
    "Comparison",
    "LayerInfo",
    "MacCounter",
    "ModelSummary",
    "RFTracker",
    "compare_models",
    "count_macs",
    "default_input_size",
    "parse_input_size",
    "summarize",
]
