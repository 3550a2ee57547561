"""What the passes decide, site by site: typed, frozen records that the surgery state collects.

Each pass adds its own decisions to ``ctx.decisions`` (:meth:`SurgeryContext.decide`) and never
changes another pass's. A later pass that changes a site's outcome adds a decision that
*supersedes* (the calibrate pass's :class:`Reversion` puts a converted layer back to its original
conv; its :class:`Refit` gives a layer its fitted σ₀ and errors). The
:class:`~njetify.surgery.report.ConversionReport` is a view, built once at the end by replaying
the decisions in order (:func:`njetify.surgery.view.build_report`): a decision that opens a site
gives its :meth:`~Decision.row`, one that supersedes :meth:`~Decision.amend` s the rows built so
far. The record :func:`njetify.save` stores is built from the decisions too
(:mod:`njetify.surgery.record`).

A pass of your own adds a decision of its own type: subclass :class:`Decision` (frozen) and
give it a ``row`` (a new report row) or an ``amend`` (a change to earlier rows), see
docs/surgery.md, "Adding a pass".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .report import ReportRow

if TYPE_CHECKING:  # pragma: no cover
    from .report import ConversionReport


@dataclass(frozen=True)
class Decision:
    """One pass's decision about the site at module ``path``."""

    path: str

    def row(self) -> ReportRow | None:
        """The report row this decision opens (None: it supersedes earlier ones, see :meth:`amend`)."""
        return None

    def amend(self, report: ConversionReport) -> None:
        """Apply this decision to the rows (and notes) built from the decisions before it."""


def _first(report: ConversionReport, kind: str, path: str, action: str | None = None) -> ReportRow | None:
    return next((r for r in report.rows if r.kind == kind and r.path == path
                 and (action is None or r.action == action)), None)


# ------------------------------------------------------------------------------- conversions
@dataclass(frozen=True)
class Conversion(Decision):
    """A convolution the ``convs`` pass (or, for a tied ASPP branch, the ``aspp`` pass) decided on:
    ``decision`` ``"converted"``, ``"kept"`` or ``"skipped"`` with the ``reason``; the σ layer's
    ``order``, ``sigma0`` (px), filter ``size`` and weight-space ``fit_error`` when converted.
    ``head`` / ``branch``: the ASPP head a tied branch belongs to and its index."""

    op: str = ""
    decision: str = "kept"
    reason: str | None = None
    kernel: int | tuple | None = None
    stride: int | tuple | None = None
    dilation: int | tuple | None = None
    groups: int | None = None
    order: int | None = None
    sigma0: float | None = None
    size: int | None = None
    fit_error: float | None = None
    params_before: int = 0
    params_after: int = 0
    layer_class: str | None = None
    per_axis: bool = False
    head: str | None = None
    branch: int | None = None

    def row(self) -> ReportRow:
        extra: dict = {}
        if self.layer_class is not None:
            extra["class"] = self.layer_class
        if self.per_axis:
            extra["per_axis"] = True
        if self.head is not None:
            extra.update(head=self.head, branch=self.branch)
        return ReportRow(kind="conv", path=self.path, op=self.op, action=self.decision, kernel=self.kernel,
                         stride=self.stride, dilation=self.dilation, groups=self.groups, order=self.order,
                         sigma0=self.sigma0, size=self.size, fit_error=self.fit_error,
                         params_before=self.params_before, params_after=self.params_after, reason=self.reason,
                         extra=extra)


@dataclass(frozen=True)
class TiedHead(Decision):
    """A DeepLab ASPP head the ``aspp`` pass tied: its ``branches`` (paths) share one α and keep one σ
    each (``sigma0``, filter ``sizes``, the dilation ``rates``), merged by ``merge``; ``skipped``:
    ``(path, why)`` of parallel convs left out of the head."""

    op: str = ""
    branches: tuple[str, ...] = ()
    rates: tuple = ()
    merge: str = ""
    order: int | None = None
    sigma0: tuple[float, ...] = ()
    sizes: tuple[int, ...] = ()
    fit_error: float | None = None
    branch_errors: tuple[float, ...] = ()
    params_before: int = 0
    params_after: int = 0
    max_size: int | None = None
    capped: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    reason: str | None = None

    def row(self) -> ReportRow:
        return ReportRow(
            kind="aspp", path=self.path, op=self.op, action="tied", dilation=tuple(self.rates), order=self.order,
            size=max(self.sizes), fit_error=self.fit_error, params_before=self.params_before,
            params_after=self.params_after, reason=self.reason,
            extra={"branches": list(self.branches), "rates": list(self.rates), "merge": self.merge,
                   "sigma0": list(self.sigma0), "sizes": list(self.sizes), "fit": "weight-space",
                   "branch_errors": list(self.branch_errors), "max_size": self.max_size,
                   "capped": list(self.capped), "skipped": [list(x) for x in self.skipped]},
        )


@dataclass(frozen=True)
class SkippedHead(Decision):
    """An ASPP head the ``aspp`` pass left untied, with the ``reason`` (a recipe rule, or what the
    analysis found); ``branches`` when the analysis names them, ``rates`` when known."""

    op: str = ""
    reason: str | None = None
    rates: tuple | None = None
    branches: tuple[str, ...] | None = None

    def row(self) -> ReportRow:
        return ReportRow(kind="aspp", path=self.path, op=self.op, action="skipped", reason=self.reason,
                         dilation=None if self.rates is None else tuple(self.rates),
                         extra={} if self.branches is None else {"branches": list(self.branches)})


# ------------------------------------------------------------------------------- the map sizes
@dataclass(frozen=True)
class Subsampling(Decision):
    """A strided op the ``subsample`` pass made safe (``decision`` ``"subsampled"``: its factor follows
    the σ of ``source`` with ratio ``r``) or left as it was (``"kept"``, with the ``reason``)."""

    op: str = ""
    decision: str = "kept"
    reason: str | None = None
    kernel: int | tuple | None = None
    stride: int | tuple | None = None
    source: str | None = None
    r: float | None = None
    factor: float | None = None
    group: int | None = None
    align: int | None = None

    def row(self) -> ReportRow:
        row = ReportRow(kind="subsample", path=self.path, op=self.op, action=self.decision, kernel=self.kernel,
                        stride=self.stride, reason=self.reason)
        if self.decision == "subsampled":
            row.extra.update(source=self.source, r=self.r, factor=self.factor, group=self.group, align=self.align)
        return row

    def amend(self, report: ConversionReport) -> None:
        conv = report.row("conv", self.path) if self.decision == "subsampled" else None
        if conv is not None:
            conv.extra["subsampled"] = True


@dataclass(frozen=True)
class Retraced(Decision):
    """A module of the user's whose forward a pass replaced by an edited traced one (class ``op``)."""

    op: str = ""
    reason: str | None = None

    def row(self) -> ReportRow:
        return ReportRow(kind="module", path=self.path, op=self.op, action="retraced", reason=self.reason)


@dataclass(frozen=True)
class Upsampling(Decision):
    """A fixed upsampling the ``upsample`` pass made follow the map it meets (``"follows"``: it resizes
    to the size of ``partner`` in the forward of ``scope``) or left fixed (``"kept"``)."""

    op: str = ""
    decision: str = "kept"
    reason: str | None = None
    scope: str | None = None
    partner: str | None = None

    def row(self) -> ReportRow:
        row = ReportRow(kind="upsample", path=self.path, op=self.op, action=self.decision, reason=self.reason)
        if self.decision == "follows":
            row.extra.update(scope=self.scope, partner=self.partner)
        return row


@dataclass(frozen=True)
class Guard(Decision):
    """A flatten → Linear head the ``guards`` pass guarded (``"inserted"``) or could not (``"kept"``)."""

    op: str = ""
    decision: str = "kept"
    reason: str | None = None

    def row(self) -> ReportRow:
        return ReportRow(kind="guard", path=self.path, op=self.op, action=self.decision, reason=self.reason)


# ------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Reversion(Decision):
    """The fidelity gate put the original conv back at ``path`` (pass ``calibrate``): the relative
    ``measure`` (``"output"`` or ``"weight-space"``) error was above (``comparator`` ``">"``; ``"≥"``
    when ``max_fit_error`` is 0) ``limit``. ``gate``: the engine's sentence, with the error."""

    measure: str = "weight-space"
    comparator: str = ">"
    limit: float = 0.0
    gate: str = ""

    @property
    def reason(self) -> str:
        """The gate's reason without the number (the table's err column shows it): one footnote for all."""
        return (f"fidelity gate: relative {self.measure} error {self.comparator} max_fit_error {self.limit:g}: "
                "original conv kept")

    def amend(self, report: ConversionReport) -> None:
        row = report.row("conv", self.path)
        if row is not None:
            row.action, row.params_after, row.reason = "kept", row.params_before, self.reason
            row.order = row.sigma0 = row.size = None
            row.extra["reverted"], row.extra["gate"] = True, self.gate
        for r in report.select("subsample", "subsampled"):
            if r.extra.get("source") == self.path:  # its subsamplings were fixed at 1/stride (counted as kept)
                r.reason = f"σ source {self.path} reverted to its original conv: factor fixed at 1/{r.stride}"
                r.extra["source"], r.extra["fixed"] = None, True


@dataclass(frozen=True)
class Refit(Decision):
    """What calibration made of the layer (or tied branch) at ``path``: ``fit`` (``"output-matching"``,
    ``"weight-space"``, or ``"reverted"`` / ``"unreached"`` / ``"skipped"``), the fitted ``sigma0`` and
    ``size``, ``weight_error`` (the weight-space error of its fit; given for a layer, ``unit``
    ``"conv"``, not for a tied branch), the output errors before / after the fit, the σ₀
    ``candidates`` tried (σ₀ → error), the engine's ``reason`` and the ``solver`` it fitted with
    (``"direct"``, ``"pcg (n iterations)"``, ``"per-channel"``; None without data)."""

    unit: str = "conv"
    fit: str = "weight-space"
    reverted: bool = False
    sigma0: float | None = None
    size: int | None = None
    weight_error: float | None = None
    error_before: float | None = None
    error_after: float | None = None
    candidates: tuple[tuple[float, float], ...] = ()
    reason: str | None = None
    solver: str | None = None

    def amend(self, report: ConversionReport) -> None:
        row = report.row("conv", self.path)
        if row is None:
            return
        row.extra["fit"] = self.fit
        if self.solver:
            row.extra["solver"] = self.solver
        if not self.reverted:
            row.sigma0, row.size = self.sigma0, self.size
            if self.unit == "conv":
                row.fit_error = self.weight_error
            if self.reason and not row.reason:
                row.reason = self.reason
        row.error_before, row.error_after = self.error_before, self.error_after
        if self.candidates:
            row.extra["sigma_candidates"] = dict(self.candidates)


@dataclass(frozen=True)
class HeadRefit(Decision):
    """What calibration made of the tied ASPP head at ``path``: its ``fit``, output errors, and the
    branches' σ₀ and sizes and the ``solver`` — or, ``reverted``, the gate's ``reason`` (every branch is a
    conv again)."""

    fit: str = "weight-space"
    reverted: bool = False
    sigma0: tuple[float, ...] = ()
    sizes: tuple[int, ...] = ()
    error_before: float | None = None
    error_after: float | None = None
    reason: str | None = None
    solver: str | None = None

    def amend(self, report: ConversionReport) -> None:
        head = _first(report, "aspp", self.path, "tied")
        if head is None:
            return
        head.extra["fit"] = self.fit
        if self.solver:
            head.extra["solver"] = self.solver
        head.error_before, head.error_after = self.error_before, self.error_after
        if self.reverted:
            head.action, head.reason, head.params_after = "kept", self.reason, head.params_before
        else:
            head.extra["sigma0"], head.extra["sizes"] = list(self.sigma0), list(self.sizes)
            head.size = max(self.sizes)


# ------------------------------------------------------------------------------- after the passes
@dataclass(frozen=True)
class Reparametrised(Decision):
    """The converted conv at ``path`` had a computed weight (``what``: weight_norm, spectral_norm, a
    prune mask) that the N-Jet layer does not carry over (:func:`njetify.convert`, after the passes)."""

    what: str = ""

    def amend(self, report: ConversionReport) -> None:
        row = report.row("conv", self.path)
        if row is None or row.action in ("kept", "skipped"):
            return
        row.extra["reparametrised"] = self.what
        report.note(f"{row.path}: {self.what} dropped: converted from its effective weight (the N-Jet layer learns "
                    "α and σ; reapply it to the N-Jet layer's α if you need it)")
