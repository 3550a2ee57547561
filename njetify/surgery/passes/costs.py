"""Passes ``macs`` and ``budget``: the original's MACs, the converted model's cost table and its budget.

``macs`` counts the unconverted model on the example inputs (per sample); ``budget`` builds the
converted model's :class:`~njetify.budget.CostTable` (before calibration, at the filter sizes of
conversion), attaches it as ``model.njetify_costs`` and, when the recipe has a ``budget``, caps the
filter sizes per layer (:func:`njetify.budget.apply_budget`). :func:`cost_summary` (run by
``finish``) writes ``report.macs`` and warns when the MACs grew by more than 20 % without a budget.
"""

from __future__ import annotations

import warnings

from ...budget import BUDGET_ATTR, GROWTH_WARNING, BudgetError, apply_budget, count_per_sample, measure_costs
from ...layers.sizes import label_sizes
from ..context import SurgeryContext


def _example(ctx: SurgeryContext):
    inputs = ctx.example_inputs
    return inputs[0] if len(inputs) == 1 else inputs


def macs_pass(ctx: SurgeryContext) -> None:
    """With example inputs: the original model's MACs per sample (``ctx.macs_before``)."""
    if ctx.example_inputs is None:
        if ctx.recipe.budget is not None:
            raise BudgetError("budget: the MACs are counted at the model's input size — give example_inputs "
                              "(or tensor calibration_data) with a budget")
        return
    ctx.macs_before = count_per_sample(ctx.model, _example(ctx))[0]


def budget_pass(ctx: SurgeryContext) -> None:
    """The converted model's cost table (``ctx.costs``, ``model.njetify_costs``); caps for a budget."""
    label_sizes(ctx.model)  # the first pass that runs the new layers: their messages name their paths
    if ctx.macs_before is None:
        return
    table = measure_costs(ctx.model, _example(ctx), ctx.macs_before)
    budget = ctx.recipe.budget
    if budget is not None:
        apply_budget(ctx.model, budget, table)
        caps = [layer.cap for layer in table.layers]
        span = f"{min(caps)}–{max(caps)} px" if caps else "no σ layer"
        ctx.note(f"budget {budget:g}× the original's MACs: filter sizes capped per layer ({span}); with every "
                        f"filter at its cap the model costs {table.ceiling:.2f}×")
    setattr(ctx.model, BUDGET_ATTR, table)
    ctx.costs = table


def cost_summary(ctx: SurgeryContext) -> None:
    """``ctx.macs`` (the report's ``macs``) from the cost table at the final filter sizes; a warning when the MACs grew
    by more than :data:`~njetify.budget.GROWTH_WARNING` and no budget was given."""
    table = ctx.costs
    if table is None:
        return
    after = table.macs(ctx.model)
    ctx.macs = {"before": round(table.original), "after": round(after)}
    if table.budget is not None:
        ctx.macs.update(budget=table.budget, ceiling=round(table.ceiling, 4),
                               caps={layer.path: layer.cap for layer in table.layers})
    elif table.original and after > (1 + GROWTH_WARNING) * table.original:
        growth = after / table.original - 1
        msg = (f"the conversion grows the MACs by {growth:.0%} ({table.original / 1e6:,.1f}M → {after / 1e6:,.1f}M per "
               "sample, every N-Jet filter counted as a dense conv of its size): filters grew past the original "
               "kernels (σ₀ by fit, dilated kernels, or σ near a size boundary); set a cost budget to cap them "
               "(recipe `budget: 1.3`, `--budget 1.3`, or convert(..., budget=1.3))")
        ctx.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=5)
