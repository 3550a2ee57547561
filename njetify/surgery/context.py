"""What one conversion's passes share (:class:`SurgeryContext`) and what a pass is (:class:`Pass`).

A pass is a named function ``run(ctx) -> None`` that reads and changes the context. It declares
the context fields it ``requires`` (filled by an earlier pass) and the ones it ``provides``, and
may check the state itself before it runs (``check``) and after (``ensures``), like torch.fx's
``PassBase`` ``requires``/``ensures``. :func:`check_pipeline` checks the whole pipeline before any
pass runs: a field no earlier pass provides, or one that a later pass also provides (it would not
be complete yet), is an error naming the pass, the field and the pass that provides it;
:func:`run_pipeline` also runs each ``check`` and ``ensures``, so an order that would silently drop
work is an error, never a smaller conversion.

Passes record what they decide per site as typed :mod:`~njetify.surgery.decisions` in
``ctx.decisions`` (:meth:`SurgeryContext.decide`), each pass its own; the report is a view built
from them once, at the end (:func:`njetify.surgery.view.build_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from torch import nn

from ..recipes.schema import Recipe
from .decisions import Decision, TiedHead
from .rewrite import Rewriter

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Analysis
    from .analysis.lineage import Plan

D = TypeVar("D", bound=Decision)


@dataclass
class ConvertedLayer:
    """A convolution that became a σ layer: the new ``layer`` and the original ``conv`` it replaced;
    ``calibrated``: the calibration engine refits (and gates) it (its converter says so)."""

    path: str
    layer: nn.Module
    conv: nn.Module
    calibrated: bool = True


@dataclass(frozen=True)
class CalibrationOutcome:
    """What the ``calibrate`` pass did in total: ``fit`` (``"output-matching"`` or ``"weight-space"``),
    the engine's ``totals`` (batches, images, seconds, a count per status) and the paths it
    ``reverted``, left ``unreached`` or ``skipped``; ``gated``: it had layers to fit and gate (the
    saved record then carries its decisions as rules and turns the gate off)."""

    fit: str = "weight-space"
    totals: dict = field(default_factory=lambda: {"batches": 0})
    reverted: tuple[str, ...] = ()
    unreached: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    gated: bool = False

    def as_dict(self) -> dict:
        """``report.calibration``."""
        if not self.gated:
            return {"fit": self.fit, **self.totals}
        return {"fit": self.fit, **self.totals, "reverted": list(self.reverted), "unreached": list(self.unreached),
                "skipped": list(self.skipped)}


@dataclass
class SurgeryContext:
    """The state of one conversion.

    Inputs (always there): ``model`` (the user's model object or its deep copy, rewritten
    in place), ``recipe``, ``rewriter`` (every module swap goes through it, so a failed
    conversion is undone), ``example_inputs`` (tuple of tensors or None), ``calibration`` (list
    of input batches on the model's device, or None), ``original`` (an untouched copy of the
    model when calibrating, else None) and ``model_class`` (the name of the user's class).

    Filled by passes: ``analysis`` (traced graphs of the model, pass ``trace``; ``tracing``: its
    mode and regions for the report), ``out_shapes`` (the original outputs' shapes on the example
    inputs, pass ``shapes``), ``macs_before`` (pass ``macs``), ``plan`` (subsampling sites, their
    σ-source groups and flatten guards, pass ``plan``), ``converted`` (path → :class:`ConvertedLayer`:
    passes ``aspp``, whose tied branches are there, and ``convs``), ``tied`` (the tied ASPP heads,
    :class:`~njetify.surgery.decisions.TiedHead`, pass ``aspp``), ``subsampled`` / ``upsampled`` /
    ``guarded`` (the decisions of those passes), ``costs`` (pass ``budget``), ``calibrated``
    (:class:`CalibrationOutcome`, pass ``calibrate``), ``params_after`` and ``macs`` (pass ``finish``).

    Shared by all passes: ``decisions`` (every pass's typed decisions, in order, :meth:`decide`),
    ``notes`` (:meth:`note`) and ``failures`` (reasons of per-site analyses that failed unexpectedly
    and left their site as it was, :func:`njetify.surgery.robust.attempt`).
    """

    model: nn.Module
    recipe: Recipe
    rewriter: Rewriter
    example_inputs: tuple | None = None
    calibration: list | None = None
    original: nn.Module | None = None
    model_class: str = ""
    analysis: Analysis | None = None
    tracing: dict[str, Any] = field(default_factory=lambda: {"mode": None, "regions": [], "failures": []})
    out_shapes: Any = None
    plan: Plan | None = None
    converted: dict[str, ConvertedLayer] = field(default_factory=dict)
    tied: list[TiedHead] | None = None
    subsampled: list | None = None
    upsampled: list | None = None
    guarded: list | None = None
    calibrated: CalibrationOutcome | None = None
    failures: list[str] = field(default_factory=list)
    macs_before: float | None = None
    costs: Any = None
    params_after: int | None = None
    macs: dict[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def module(self, path: str) -> nn.Module:
        """The module at ``path`` in the model as it is now ("" is the model)."""
        return self.model.get_submodule(path) if path else self.model

    def decide(self, decision: D) -> D:
        """Record a pass's ``decision`` (appended; decisions are never changed) and return it."""
        if not isinstance(decision, Decision):
            raise TypeError(f"decide: expected a njetify.surgery.decisions.Decision, got {type(decision).__name__}")
        self.decisions.append(decision)
        return decision

    def decided(self, kind: type[D], path: str | None = None) -> list[D]:
        """The decisions of type ``kind`` (at module ``path``), in the order they were made."""
        return [d for d in self.decisions if isinstance(d, kind) and (path is None or d.path == path)]

    def note(self, text: str) -> None:
        """Add a free-text note for the report (shown under its tables; each text once)."""
        if text not in self.notes:
            self.notes.append(text)

    @property
    def report(self):
        raise AttributeError("SurgeryContext has no report while the passes run: the report is built once, at the "
                             "end, from ctx.decisions; record a decision (ctx.decide) or a note (ctx.note) instead")


#: Context fields that are there before any pass runs.
INPUTS = frozenset({"model", "recipe", "rewriter", "example_inputs", "calibration", "original", "model_class",
                    "decisions", "notes", "failures"})


@dataclass(frozen=True)
class Pass:
    """A named step of the pipeline: ``run(ctx)``, the fields it ``requires`` and ``provides``,
    ``check(ctx)`` (run just before the pass) and ``ensures(ctx)`` (run just after it): None when the
    state is right, else what is wrong (a :class:`PipelineError` naming the pass)."""

    name: str
    run: Callable[[SurgeryContext], None]
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    doc: str = ""
    check: Callable[[SurgeryContext], str | None] | None = None
    ensures: Callable[[SurgeryContext], str | None] | None = None


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
        for r in p.requires:  # a field is complete once every pass that provides it has run
            by = next((q.name for q in passes[i + 1:] if r in q.provides), None)
            if by is not None:
                raise PipelineError(
                    f"passes: pass {p.name!r} requires {r!r}, which pass {by!r} after it also provides: put {by!r} "
                    f"before {p.name!r} (order: {', '.join(names + [p.name])}, ..., {by})")
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
    """Check ``passes`` (:func:`check_pipeline`), then run them in order on ``ctx``, each between its
    ``check`` and its ``ensures``."""
    for p in check_pipeline(passes):
        problem = p.check(ctx) if p.check is not None else None
        if problem:
            raise PipelineError(f"passes: pass {p.name!r} cannot do its work: {problem}")
        p.run(ctx)
        problem = p.ensures(ctx) if p.ensures is not None else None
        if problem:
            raise PipelineError(f"passes: pass {p.name!r} did not do its work: {problem}")
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

