"""What one conversion's passes share (:class:`SurgeryContext`) and what a pass is (:class:`Pass`).

A pass is a named function ``run(ctx) -> None`` that reads and changes the context.
It declares the context fields it ``requires`` (filled by an earlier pass) and the
ones it ``provides``, like torch.fx's ``PassBase`` ``requires``/``ensures``;
:func:`run_pipeline` checks the whole pipeline before it runs any pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..recipes.schema import Recipe
from .report import ConversionReport, ReportRow
from .rewrite import Rewriter

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Analysis
    from .analysis.lineage import Plan


@dataclass
class ConvertedLayer:
    """A convolution that became a σ layer: the new ``layer`` and the original ``conv`` it replaced."""

    path: str
    layer: nn.Module
    conv: nn.Module


@dataclass
class SurgeryContext:
    """The state of one conversion.

    Inputs (always there): ``model`` (the user's model object or its deep copy, rewritten
    in place), ``recipe``, ``report``, ``rewriter`` (every module swap goes through it, so a
    failed conversion is undone), ``example_inputs`` (tuple of tensors or None),
    ``calibration`` (list of input batches on the model's device, or None) and ``original``
    (an untouched copy of the model when calibrating, else None).

    Filled by passes: ``analysis`` (traced graphs of the model, pass ``trace``),
    ``out_shapes`` (the original outputs' shapes on the example inputs, pass ``shapes``),
    ``plan`` (subsampling sites, their σ-source groups and flatten guards, pass ``plan``),
    ``converted`` (path → :class:`ConvertedLayer`: passes ``convs`` and ``aspp``, whose tied branches are there too), ``tied`` (the tied ASPP
    heads' report rows, pass ``aspp``), ``failures`` (reasons of per-site analyses that failed
    unexpectedly and left their site as it was, :func:`njetify.surgery.robust.attempt`).
    """

    model: nn.Module
    recipe: Recipe
    report: ConversionReport
    rewriter: Rewriter
    example_inputs: tuple | None = None
    calibration: list | None = None
    original: nn.Module | None = None
    analysis: Analysis | None = None
    out_shapes: Any = None
    plan: Plan | None = None
    converted: dict[str, ConvertedLayer] = field(default_factory=dict)
    tied: list[ReportRow] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    macs_before: float | None = None
    costs: Any = None

    def module(self, path: str) -> nn.Module:
        """The module at ``path`` in the model as it is now ("" is the model)."""
        return self.model.get_submodule(path) if path else self.model


#: Context fields that are there before any pass runs.
INPUTS = frozenset({"model", "recipe", "report", "rewriter", "example_inputs", "calibration", "original"})


@dataclass(frozen=True)
class Pass:
    """A named step of the pipeline: ``run(ctx)``, the fields it ``requires`` and ``provides``."""

    name: str
    run: Callable[[SurgeryContext], None]
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    doc: str = ""


class PipelineError(ValueError):
    """A pipeline whose passes cannot run in this order (names the pass and the missing field)."""


def check_pipeline(passes) -> tuple[Pass, ...]:
    """The passes as a tuple, after checking that each one's ``requires`` are provided earlier."""
    passes = tuple(passes)
    available = set(INPUTS)
    names: list[str] = []
    for p in passes:
        if not isinstance(p, Pass):
            raise TypeError(f"passes must hold njetify.surgery.Pass objects, got {type(p).__name__}")
        if p.name in names:
            raise PipelineError(f"passes: two passes are named {p.name!r}")
        missing = [r for r in p.requires if r not in available]
        if missing:
            raise PipelineError(
                f"passes: pass {p.name!r} requires {', '.join(map(repr, missing))}, which no earlier pass provides "
                f"(order: {', '.join(names + [p.name])})"
            )
        available.update(p.provides)
        names.append(p.name)
    return passes


def run_pipeline(ctx: SurgeryContext, passes) -> SurgeryContext:
    """Check ``passes`` (:func:`check_pipeline`), then run them in order on ``ctx``."""
    for p in check_pipeline(passes):
        p.run(ctx)
    return ctx


def insert_pass(passes, new: Pass, *, before: str | None = None, after: str | None = None) -> tuple[Pass, ...]:
    """A new pipeline: ``passes`` with ``new`` placed before or after the pass of that name
    (at the end without an anchor). A pass of the same name is replaced."""
    out = [p for p in passes if p.name != new.name]
    anchor = before if before is not None else after
    if anchor is None:
        return (*out, new)
    names = [p.name for p in out]
    if anchor not in names:
        raise PipelineError(f"insert_pass: no pass named {anchor!r}; passes are {names}")
    i = names.index(anchor) + (0 if before is not None else 1)
    return (*out[:i], new, *out[i:])


def describe(passes) -> str:
    """One line per pass: name, what it requires and provides."""
    lines = []
    for p in passes:
        req = ", ".join(p.requires) or "-"
        prov = ", ".join(p.provides) or "-"
        lines.append(f"{p.name:10s} requires {req:28s} provides {prov}")
    return "\n".join(lines)

