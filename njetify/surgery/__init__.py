"""Model surgery: analyse a CNN with torch.fx, swap its modules, report (DESIGN §6).

model in → trace → passes → report → model out. Public API: :func:`convert`, :func:`njetify`,
:func:`tie_aspp`, :class:`ConversionReport`. The pipeline is a value: :data:`DEFAULT_PASSES`, a
tuple of :class:`Pass` (each says what it ``requires`` and ``provides``) run over one
:class:`SurgeryContext`; ``convert(model, passes=insert_pass(DEFAULT_PASSES, my_pass, after="convs"))``
adds a step. Passes record typed :mod:`~njetify.surgery.decisions` in the state; the report is a view
built from them once, at the end (:mod:`~njetify.surgery.view`), and so is the record ``njetify.save``
stores (:mod:`~njetify.surgery.record`).
"""

from .api import convert, njetify, resolve_recipe, tie_aspp
from .context import CalibrationOutcome, ConvertedLayer, Pass, PipelineError, SurgeryContext, check_pipeline, insert_pass, run_pipeline
from .decisions import Decision
from .pipeline import DEFAULT_PASSES
from .record import ConversionRecord
from .report import ConversionReport, ReportRow

__all__ = [
    "DEFAULT_PASSES", "CalibrationOutcome", "ConversionRecord", "ConversionReport", "ConvertedLayer", "Decision", "Pass",
    "PipelineError", "ReportRow", "SurgeryContext", "check_pipeline", "convert", "insert_pass", "njetify", "resolve_recipe", "run_pipeline", "tie_aspp",
]
