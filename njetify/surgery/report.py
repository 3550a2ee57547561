"""ConversionReport: what the surgery did, row by row, as a rich table and as plain data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Attribute of a converted model that holds its ConversionReport (``njetify.save`` reads it).
REPORT_ATTR = "njetify_report"


@dataclass
class ReportRow:
    """One convolution, subsampling site or inserted module.

    ``kind`` says which: ``"conv"`` (a convolution: converted, tied into an ASPP head, kept or
    skipped), ``"subsample"`` (a strided op: subsampled or kept), ``"guard"`` (a flatten → Linear
    head), ``"aspp"`` (a DeepLab head: tied or skipped), ``"upsample"`` (a fixed upsampling that meets
    another map: ``follows`` — it resizes to that map's size — or kept), ``"module"`` (a module of yours whose
    forward was replaced by a traced one). Fields that do not apply stay None. σ₀ and sizes are in pixels;
    ``fit_error`` is the relative weight-space error ``‖W_fit − W‖/‖W‖``; ``error_before`` /
    ``error_after`` the relative output error ``‖y − y_orig‖/‖y_orig‖`` on the calibration data
    before / after output-matching calibration (the table's ``err`` shows ``error_after`` when
    there is one, else ``fit_error``).
    """

    kind: str
    path: str
    op: str
    action: str
    kernel: int | tuple | None = None
    stride: int | tuple | None = None
    dilation: int | tuple | None = None
    groups: int | None = None
    order: int | None = None
    sigma0: float | None = None
    size: int | None = None
    fit_error: float | None = None
    error_before: float | None = None
    error_after: float | None = None
    params_before: int = 0
    params_after: int = 0
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionReport:
    """Everything a conversion did, and everything needed to redo it.

    ``rows``: one :class:`ReportRow` per conv / subsampling site / inserted module.
    ``tracing``: ``{"mode": "fx" | "fx-partial" | "swap", "regions": [...], "failures": [...]}``.
    ``recipe``: the resolved recipe as a dict (keyword overrides applied).
    ``params_before`` / ``params_after``: parameter totals of the whole model.
    ``macs``: MACs per sample at the example input (``before``, ``after``; with a budget also
    ``budget``, ``ceiling`` — the cost with every filter at its cap — and ``caps``), see :mod:`njetify.budget`.
    ``record``: what :func:`njetify.save` stores to redo the conversion
    (:class:`~njetify.surgery.record.ConversionRecord`, built from the passes' decisions; not in :meth:`to_dict`).

    ``njetify.convert`` builds the report once, at the end, as a view of the passes' decisions
    (:func:`njetify.surgery.view.build_report`).
    """

    rows: list[ReportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tracing: dict[str, Any] = field(default_factory=lambda: {"mode": None, "regions": [], "failures": []})
    recipe: dict[str, Any] = field(default_factory=dict)
    subsample: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=lambda: {"fit": "weight-space", "batches": 0})
    example_input_shape: list[list[int]] | None = None
    params_before: int = 0
    params_after: int = 0
    model_class: str = ""
    macs: dict[str, Any] = field(default_factory=dict)
    record: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ rows
    def add(self, row: ReportRow) -> ReportRow:
        """Append a row and return it."""
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        """Add a free-text note (shown under the table)."""
        if text not in self.notes:
            self.notes.append(text)

    def select(self, kind: str | None = None, action: str | None = None) -> list[ReportRow]:
        """Rows filtered by ``kind`` and/or ``action``."""
        return [r for r in self.rows if (kind is None or r.kind == kind) and (action is None or r.action == action)]

    def row(self, kind: str, path: str) -> ReportRow | None:
        """The first row of ``kind`` at module ``path`` (None when there is none)."""
        return next((r for r in self.rows if r.kind == kind and r.path == path), None)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {action: number of rows}}``."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r.kind, {}).setdefault(r.action, 0)
            out[r.kind][r.action] += 1
        return out

    @property
    def converted(self) -> int:
        """Number of convolutions that became N-Jet layers."""
        return len(self.select("conv", "converted"))

    # ------------------------------------------------------------ rendering
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        d = asdict(self)
        d.pop("record", None)
        d["counts"] = self.counts()
        return _jsonable(d)

    def to_json(self, **kwargs) -> str:
        """JSON text of :meth:`to_dict` (``kwargs`` go to ``json.dumps``)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def subsampling_counts(self) -> dict[str, int]:
        """``{"made_safe", "kept", "fixed"}``: subsampling sites whose factor follows a σ; sites that keep their
        stride, counting ``fixed`` ones — made stride-1 then resized by a fixed ``1/stride`` because their σ
        source went back to its original conv (same output as the strided op, so kept in effect)."""
        rows = self.select("subsample")
        fixed = sum(_fixed(r) for r in rows)
        safe = sum(r.action == "subsampled" for r in rows) - fixed
        return {"made_safe": safe, "kept": len(rows) - safe, "fixed": fixed}

    def gate_advice(self, cli: bool = False) -> str | None:
        """A sentence when the fidelity gate kept most of the layers it was given as original convs (None
        otherwise), with what to try: output-matching calibration (when the fit was in weight space) or a
        higher basis order. ``cli``: in command-line words (``--calibrate DATASET``, ``--order N``)."""
        convs = self.select("conv")
        reverted = sum(bool(r.extra.get("reverted")) for r in convs)
        tried = reverted + sum(r.action in ("converted", "tied") for r in convs)
        if not reverted or 2 * reverted <= tried:
            return None
        orders = [int(o) for o in (self.recipe.get("order"), *(r.extra.get("order") for r in convs)) if o]
        higher = max(orders, default=2) + 1
        tries = []
        if self.calibration.get("fit") != "output-matching":
            tries.append("--calibrate DATASET" if cli else "calibration_data (output matching)")
        tries.append(f"a higher --order ({higher})" if cli else f"a higher order (order={higher})")
        limit = "--max-fit-error" if cli else "the recipe's max_fit_error"
        return (f"the fidelity gate kept {reverted} of {tried} layers as their original conv (fit error above "
                f"{limit}): try {' or '.join(tries)}")

    def summary(self) -> str:
        """One paragraph: totals, tracing mode, fit and subsampling (and :meth:`gate_advice` when the fidelity
        gate kept most layers). :meth:`__str__` wraps it at 100 columns."""
        c = self.counts()
        conv = c.get("conv", {})
        sub = self.subsampling_counts()
        fixed = f" ({sub['fixed']} fixed at 1/stride: σ source kept)" if sub["fixed"] else ""
        parts = [
            f"{self.model_class or 'model'}: {conv.get('converted', 0)} conv(s) converted, "
            f"{conv.get('kept', 0)} kept, {conv.get('skipped', 0)} skipped",
            f"{sub['made_safe']} subsampling site(s) made safe, {sub['kept']} kept{fixed}",
            f"tracing: {self.tracing.get('mode')}",
            f"fit: {self.calibration.get('fit')}",
            f"params {self.params_before:,} -> {self.params_after:,}",
        ]
        advice = self.gate_advice()
        return "; ".join(parts + ([advice] if advice else []))

    def table(self, kind: str | None = None):
        """The rows of ``kind`` (``"conv"``, ``"subsample"``, other kinds; None: every row) as a rich
        renderable that fits the console it is printed on: module paths are shortened in the
        middle, never dropped; reasons are numbered footnotes (see :meth:`footnotes`)."""
        from ..textfit import Column, PathTable

        marks = {reason: i for i, reason in enumerate(self.footnotes(), 1)}
        rows = [r for r in self.rows if kind is None or r.kind == kind]

        def action(r: ReportRow) -> str:
            return f"{r.action} [{marks[r.reason]}]" if r.reason in marks else r.action

        if kind == "subsample":
            cols = [Column("module"), Column("op"), Column("action"), Column("σ from")]
            cells = [[r.path, r.op, action(r), str(r.extra.get("source") or "")] for r in rows]
            return PathTable(cols, cells, title="subsampling")
        if kind == "conv" or (kind is None and all(r.kind == "conv" for r in rows)):
            cols = [Column("module"), Column("op"), Column("action"), Column("N", "right"), Column("σ₀", "right"),
                    Column("s", "right"), Column("err", "right", optional=True),
                    Column("params", "right", optional=True)]
            cells = [[r.path, r.op, action(r), _fmt(r.order), _fmt(r.sigma0, ".3g"), _fmt(r.size),
                      _fmt(r.fit_error if r.error_after is None else r.error_after, ".2f"), _params(r)] for r in rows]
            return PathTable(cols, cells, title="convolutions")
        if kind == "aspp":
            cols = [Column("module"), Column("action"), Column("merge"), Column("rates→σ₀"),
                    Column("params", "right"), Column("err", "right", optional=True), Column("s", optional=True)]
            cells = [[r.path, action(r), str(r.extra.get("merge") or ""), _rates(r), _params(r),
                      _fmt(r.fit_error if r.error_after is None else r.error_after, ".2f"),
                      _slashed(r.extra.get("sizes"))] for r in rows]
            return PathTable(cols, cells, title="ASPP heads (err: joint fit of the shared α over every branch)")
        cols = [Column("module"), Column("kind"), Column("action"), Column("σ₀", "right"),
                Column("op", optional=True)]
        cells = [[r.path or "(model)", r.kind, action(r), _fmt(r.sigma0, ".3g"), r.op] for r in rows]
        return PathTable(cols, cells, title="other changes" if kind is None else kind)

    def footnotes(self) -> list[str]:
        """The distinct reasons of the rows, in order of first appearance (the ``[n]`` marks of the
        tables); the σ source a subsampled row names is shown in its own column instead."""
        return list(dict.fromkeys(r.reason for r in self.rows if r.reason and not _sourced(r)))

    def __rich__(self):
        from rich.console import Group

        return Group(*self.rich_parts())

    def rich_parts(self, summary: bool = True) -> list:
        """What ``rich`` prints for the report: the :meth:`summary` line (if ``summary``), one table per
        kind of row (convolutions, subsampling, other changes), the footnotes and the notes."""
        from rich.text import Text

        parts = [Text(self.summary()), Text("")] if summary else []
        kinds = list(dict.fromkeys(r.kind for r in self.rows))
        for kind in [k for k in ("conv", "subsample") if k in kinds]:
            parts += [self.table(kind), Text("")]
        if "aspp" in kinds:
            parts += [self.table("aspp"), Text("")]
        others = [k for k in kinds if k not in ("conv", "subsample", "aspp")]
        if others:
            from copy import copy

            rest = copy(self)
            rest.rows = [r for r in self.rows if r.kind in others]
            parts += [rest.table(None) if len(others) > 1 else self.table(others[0]), Text("")]
        notes = [Text(f"[{i}] {reason}") for i, reason in enumerate(self.footnotes(), 1)]
        return parts + notes + [Text("note: " + n) for n in self.notes]

    def __str__(self) -> str:
        """Plain text: the summary, one line per row, the notes; every line at most :data:`TEXT_WIDTH`
        columns (longer ones wrap, indented under their start)."""
        lines = _wrap(self.summary(), "    ")
        for r in self.rows:
            extra = f" ({r.reason})" if r.reason else ""
            lines += _wrap(f"  {r.kind:9s} {r.path}: {r.op} -> {r.action}{extra}", " " * 14)
        for n in self.notes:
            lines += _wrap(f"note: {n}", " " * 6)
        return "\n".join(lines)


#: Widest line of ``str(report)`` (columns).
TEXT_WIDTH = 100


def _wrap(text: str, indent: str) -> list[str]:
    """``text`` as lines of at most :data:`TEXT_WIDTH` columns, continuation lines after ``indent``."""
    import textwrap

    return textwrap.wrap(text, TEXT_WIDTH, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _fixed(r: ReportRow) -> bool:
    """A subsampling made stride-1 and then resized by a fixed ``1/stride`` (its σ source was reverted)."""
    return r.kind == "subsample" and r.action == "subsampled" and (bool(r.extra.get("fixed"))
                                                                  or not r.extra.get("source"))


def _sourced(r: ReportRow) -> bool:
    """A subsampled row whose reason only names its σ source (shown in the table's own column)."""
    return r.kind == "subsample" and r.action == "subsampled" and bool(r.extra.get("source"))


def _fmt(v, spec: str = "") -> str:
    return "" if v is None else format(v, spec)


def _params(r: ReportRow) -> str:
    if r.kind == "conv" and r.action == "converted" and r.extra.get("head") and not r.params_after:
        return f"{_short(r.params_before)}→shared"  # a tied branch: its head holds the shared α (ASPP table)
    if not r.params_before and not r.params_after:
        return ""
    if r.params_before == r.params_after:
        return _short(r.params_before)
    return f"{_short(r.params_before)}→{_short(r.params_after)}"


def _slashed(values) -> str:
    """``[6.0, 12.0, 18.0]`` → ``"6/12/18"`` (empty for None)."""
    return "/".join(format(v, ".3g") for v in values) if values else ""


def _rates(r: ReportRow) -> str:
    """An ASPP head's dilation rates and the σ₀ each branch got: ``"12/24/36→6/12/18"``."""
    rates, sigma0 = r.extra.get("rates"), r.extra.get("sigma0")
    if not rates:
        return ""
    return f"{_slashed(rates)}→{_slashed(sigma0)}" if sigma0 else _slashed(rates)


def _short(n: int) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)
