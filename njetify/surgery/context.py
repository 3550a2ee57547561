"""What one conversion's passes share (:class:`SurgeryContext`) and what a pass is (:class:`Pass`).

A pass is a named function ``run(ctx) -> None`` that reads and changes the context.
It declares the context fields it ``requires`` (filled by an earlier pass) and the
ones it ``provides``, and may check the state itself before it runs (``check``), like
torch.fx's ``PassBase`` ``requires``/``ensures``. :func:`check_pipeline` checks the whole
pipeline before any pass runs: a field no earlier pass provides is an error naming the pass,
the field and the pass that provides it; :func:`run_pipeline` also runs each ``check``, so an
order that would silently drop work (ASPP heads whose branches another pass already converted)
is an error, never a smaller conversion.
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
    """A convolution that became a σ layer: the new ``layer`` and the original ``conv`` it replaced;
    ``calibrated``: the calibration engine refits (and gates) it (its converter says so)."""

    path: str
    layer: nn.Module
    conv: nn.Module
    calibrated: bool = True


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
    """A named step of the pipeline: ``run(ctx)``, the fields it ``requires`` and ``provides``, and
    ``check(ctx)``: None when the state lets the pass do all its work, else what is wrong (run just
    before the pass; a message is a :class:`PipelineError` naming the pass)."""

    name: str
    run: Callable[[SurgeryContext], None]
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    doc: str = ""
    check: Callable[[SurgeryContext], str | None] | None = None


class PipelineError(ValueError):
    """A pipeline whose passes cannot run in this order (names the pass, what it needs and which pass provides it)."""


def check_pipeline(passes) -> tuple[Pass, ...]:
    """The passes as a tuple, after checking that each one's ``requires`` are provided earlier."""
    passes = tuple(passes)
    available = set(INPUTS)
    names: list[str] = []
    for i, p in enumerate(passes):
        if not isinstance(p, Pass):
            raise TypeError(f"passes must hold njetify.surgery.Pass objects, got {type(p).__name__}")
        if p.name in names:
            raise PipelineError(f"passes: two passes are named {p.name!r}")
        missing = [r for r in p.requires if r not in available]
        if missing:
            raise PipelineError(
                f"passes: pass {p.name!r} requires {', '.join(map(repr, missing))}, which no earlier pass provides"
                f"{_providers(missing, passes[i + 1:], p.name)} (order: {', '.join(names + [p.name])})"
            )
        available.update(p.provides)
        names.append(p.name)
    return passes


def _providers(fields, later, name: str) -> str:
    """Which pass provides each missing field: a later pass of this pipeline, else one of the default pipeline."""
    from .pipeline import DEFAULT_PASSES

    parts = []
    for f in fields:
        by = next((q.name for q in later if f in q.provides), None)
        if by is not None:
            parts.append(f"pass {by!r} provides {f!r}: put it before {name!r}")
            continue
        by = next((q.name for q in DEFAULT_PASSES if f in q.provides), None)
        parts.append(f"pass {by!r} of the default pipeline provides {f!r}: add it before {name!r}" if by
                     else f"no pass of the default pipeline provides {f!r}")
    return "; " + "; ".join(parts)


def run_pipeline(ctx: SurgeryContext, passes) -> SurgeryContext:
    """Check ``passes`` (:func:`check_pipeline`), then run them in order on ``ctx``, each after its ``check``."""
    for p in check_pipeline(passes):
        problem = p.check(ctx) if p.check is not None else None
        if problem:
            raise PipelineError(f"passes: pass {p.name!r} cannot do its work: {problem}")
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

