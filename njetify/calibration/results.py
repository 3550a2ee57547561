"""What the engine did to each layer, and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .engine import GateDecision

STATUSES = ("calibrated", "weight-space", "reverted", "unreached", "skipped")


@dataclass
class LayerResult:
    """One layer or tied head.

    status: ``"calibrated"`` | ``"reverted"`` (failed the gate; the original conv is back) |
        ``"unreached"`` (no batch reached it: weight-space fit kept) | ``"skipped"`` (could not be
        fitted, ``reason`` says why: weight-space fit kept) | ``"weight-space"`` (fitted without data).
    error_before: relative output error ``‖y − y_orig‖/‖y_orig‖`` of the layer as converted (weight-space
        fit at the initial σ₀), on the inputs it receives in the converted model (earlier layers fitted);
        on the σ₀ search's share of the positions (and of at most 64 output channels per group)
        when σ₀ was searched.
    error_after: the same after the fit (the error the gate compares).
    weight_error: relative weight-space error of the initial fit.
    sigma0 / size: σ₀ (pixels) and filter size per branch after the fit.
    candidates: σ₀ tried → output error at it (on the search subset).
    """

    path: str
    paths: list[str]
    kind: str
    status: str
    reason: str | None = None
    sigma0: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    error_before: float | None = None
    error_after: float | None = None
    weight_error: float | None = None
    candidates: dict[float, float] = field(default_factory=dict)
    samples: int = 0
    solver: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CalibrationResult:
    """The fits of all layers (in the order they were fitted, unreached ones last), the gate's
    ``decisions`` (one :class:`~njetify.calibration.engine.GateDecision` per layer, same order) and totals.

    ``seconds``: the whole calibration, wall clock; ``target_seconds``: the part of it spent running the
    *original* model on the batches to record every converted layer's target outputs (one forward per
    batch; the rest is fitting the layers). ``batches`` / ``images``: the calibration data used.
    """

    layers: list[LayerResult] = field(default_factory=list)
    decisions: list[GateDecision] = field(default_factory=list)
    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    target_seconds: float = 0.0

    def by_path(self) -> dict[str, LayerResult]:
        """Results keyed by every path of every unit."""
        return {p: r for r in self.layers for p in r.paths}

    def select(self, status: str) -> list[LayerResult]:
        return [r for r in self.layers if r.status == status]

    def summary(self) -> dict:
        """Plain totals for ``report.calibration``."""
        counts = {s: len(self.select(s)) for s in STATUSES}
        return {"batches": self.batches, "images": self.images, "seconds": round(self.seconds, 3),
                "target_seconds": round(self.target_seconds, 3), **counts}
