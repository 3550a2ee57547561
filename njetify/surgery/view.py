"""The report as a view of the surgery state: built once, at the end, from the decisions.

:func:`build_report` replays ``ctx.decisions`` in order — a decision that opens a site adds its
row, one that supersedes amends the rows before it — and copies the totals the passes left
on the state (tracing, calibration, MACs, parameter counts, notes).
"""

from __future__ import annotations

import copy
from typing import Any

from .context import SurgeryContext
from .record import record_of
from .report import ConversionReport


def build_report(ctx: SurgeryContext, *, recipe: dict[str, Any], input_shapes, params_before: int) -> ConversionReport:
    """The :class:`ConversionReport` of the conversion in ``ctx`` (``recipe``: the resolved recipe as a
    dict; ``input_shapes``: the example inputs' shapes; ``params_before``: the original's parameters).
    Its ``record`` is what :func:`njetify.save` stores (:func:`~njetify.surgery.record.record_of`)."""
    record = record_of(ctx, recipe, input_shapes)
    sub = ctx.recipe.subsample
    report = ConversionReport(
        notes=list(ctx.notes),
        tracing=dict(ctx.tracing),
        recipe=copy.deepcopy(record.recipe),  # a view: editing it does not change the record
        subsample={"mode": sub.mode, "r": sub.r, "where": sub.where, "interpolation": sub.interpolation},
        calibration=(ctx.calibrated.as_dict() if ctx.calibrated is not None
                     else {"fit": "weight-space", "batches": 0}),
        example_input_shape=input_shapes,
        params_before=params_before,
        params_after=ctx.params_after if ctx.params_after is not None else 0,
        model_class=ctx.model_class,
        macs=dict(ctx.macs),
        record=record,
    )
    for d in ctx.decisions:
        row = d.row()
        if row is not None:
            report.rows.append(row)
        d.amend(report)
    return report
