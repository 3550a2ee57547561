"""Model surgery: trace a CNN, convert its convolutions, make its subsampling safe, report.

Public API: :func:`njetify`, :func:`convert`, :class:`ConversionReport`. The pipeline is
:data:`PASSES` (a list of :class:`Pass` over a shared :class:`SurgeryContext`);
:func:`insert_pass` adds a step (e.g. ASPP tying before ``"convs"``).
"""

from .api import convert, njetify, resolve_recipe
from .context import PASSES, Pass, Region, SurgeryContext, insert_pass, run_passes
from .guards import FlattenGuard
from .pools import StridelessPool2d
from .report import ConversionReport, ReportRow

__all__ = [
    "PASSES",
    "ConversionReport",
    "FlattenGuard",
    "Pass",
    "Region",
    "ReportRow",
    "StridelessPool2d",
    "SurgeryContext",
    "convert",
    "insert_pass",
    "njetify",
    "resolve_recipe",
    "run_passes",
]
