"""What :func:`njetify.save` stores to redo a conversion: built from the decisions, not from the report.

The record is the resolved recipe plus one rule per decision that the calibration data made —
σ₀ chosen by fit (``sigma_init: σ₀``), a layer the fidelity gate kept as its original conv
(``max_fit_error: 0``) — with the gate turned off, so that redoing the conversion without
data (:func:`njetify.load`) rebuilds this very model; and the example input shapes and the
original class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .decisions import Refit

if TYPE_CHECKING:  # pragma: no cover
    from .context import SurgeryContext


@dataclass(frozen=True)
class ConversionRecord:
    """``recipe``: the recipe to rebuild from (a dict, :func:`njetify.recipes.recipe_to_dict` form);
    ``input_shapes``: the example inputs' shapes (None: none were given); ``original_class``."""

    recipe: dict[str, Any]
    input_shapes: list[list[int]] | None = None
    original_class: str | None = None

    def with_budget(self, budget: float) -> ConversionRecord:
        """The same record with the recipe's cost ``budget`` (:func:`njetify.budget.set_budget`)."""
        return replace(self, recipe={**self.recipe, "budget": float(budget)})


def record_of(ctx: SurgeryContext, recipe: dict[str, Any], input_shapes) -> ConversionRecord:
    """The record of the conversion in ``ctx``: ``recipe`` (the resolved recipe as a dict) with a rule
    per calibration decision (:class:`~njetify.surgery.decisions.Refit`) and, when the gate ran, the
    gate turned off."""
    recipe = copy.deepcopy(recipe)
    if ctx.calibrated is not None and ctx.calibrated.gated:
        rules = recipe.setdefault("rules", [])
        for d in ctx.decided(Refit):
            rule = None
            if d.reverted:
                rule = {"match": literal(d.path), "max_fit_error": 0.0}
            elif d.candidates and d.unit == "conv":
                rule = {"match": literal(d.path), "sigma_init": d.sigma0}
            if rule is not None and rule not in rules:
                rules.append(rule)
        recipe["max_fit_error"] = None
    return ConversionRecord(recipe, input_shapes, ctx.model_class or None)


def literal(path: str) -> str:
    """A recipe glob that matches ``path`` only."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in path)
