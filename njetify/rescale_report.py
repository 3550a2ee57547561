"""RescaleReport: what :func:`njetify.rescale` changed, layer by layer, as a rich table and as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["LayerRescale", "RescaleReport", "SiteRescale"]


@dataclass
class LayerRescale:
    """One σ layer. σ in pixels of its input map (mean over channels/branches' own σ); sizes are the
    filter side in pixels; ``needed``: the side σ asks for before any ``max_size`` cap; ``scaled``: the
    factor its σ was multiplied by (the rescale factor, or 1 behind a safe-subsampling); MACs of one
    sample at the input size before / after."""

    path: str
    scaled: float
    sigma_before: float
    sigma_after: float
    size_before: int
    size_after: int
    needed: int | None = None
    capped: bool = False
    macs_before: int = 0
    macs_after: int = 0
    floored: bool = False


@dataclass
class SiteRescale:
    """One safe-subsampling site: its resize factor and output side (pixels) before / after, its ``scale`` and
    ``sigma_scale`` (see :class:`~njetify.layers.SafeSubsample`)."""

    path: str
    scale: float
    factor_before: float
    factor_after: float
    out_before: tuple[int, int] | None = None
    out_after: tuple[int, int] | None = None
    sigma_scale: float = 1.0


@dataclass
class RescaleReport:
    """Everything :func:`njetify.rescale` did. ``factor``: this call's; ``total_factor``: the model's
    resolution factor now (after earlier rescales); inputs ``(C, H, W)`` before / after; MACs of one
    sample of that size; ``capped`` / ``floored``: paths of the layers whose filter hit ``max_size`` / whose σ
    was held at ``min_sigma``; ``baked``: the
    model was baked, and was rebuilt from its record, rescaled and baked again."""

    factor: float
    total_factor: float
    input_before: tuple[int, int, int]
    input_after: tuple[int, int, int]
    layers: list[LayerRescale] = field(default_factory=list)
    sites: list[SiteRescale] = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    baked: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def capped(self) -> list[str]:
        """Paths of the σ layers whose filter is capped at ``max_size`` after rescaling."""
        return [r.path for r in self.layers if r.capped]

    @property
    def floored(self) -> list[str]:
        """Paths of the σ layers whose σ was held at ``min_sigma``."""
        return [r.path for r in self.layers if r.floored]

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict."""
        d = asdict(self)
        d["capped"], d["floored"] = self.capped, self.floored
        return d

    def summary(self) -> str:
        """One line: the factor, the input sizes, the layers changed, the MACs."""
        hw = lambda s: f"{s[1]}×{s[2]}"  # noqa: E731
        moved = sum(1 for r in self.layers if r.scaled != 1.0)
        parts = [f"rescaled ×{self.factor:.4g} (×{self.total_factor:.4g} of the resolution it was built for)",
                 f"input {hw(self.input_before)} → {hw(self.input_after)}",
                 f"σ of {moved}/{len(self.layers)} layer(s) ×{self.factor:.4g}",
                 f"{len(self.sites)} safe-subsampling site(s) follow",
                 f"MACs {_short(self.macs_before)} → {_short(self.macs_after)}"]
        if self.capped:
            parts.append(f"{len(self.capped)} filter(s) capped at max_size")
        if self.floored:
            parts.append(f"{len(self.floored)} σ held at min_sigma")
        if self.baked:
            parts.append("rebuilt from the bake record and baked again")
        return "; ".join(parts)

    def table(self):
        """σ layers: σ, filter size and MACs before → after, the factor applied, the cap column."""
        from .textfit import Column, PathTable

        cols = [Column("layer"), Column("×σ", "right"), Column("σ", "right"), Column("σ'", "right"),
                Column("s", "right"), Column("s'", "right"), Column("limit", optional=True),
                Column("MACs", "right"), Column("MACs'", "right")]
        rows = [[r.path, f"{r.scaled:.3g}", f"{r.sigma_before:.3g}", f"{r.sigma_after:.3g}", str(r.size_before),
                 str(r.size_after), _limit(r), _short(r.macs_before),
                 _short(r.macs_after)] for r in self.layers]
        return PathTable(cols, rows, title="σ layers (' = after rescale)")

    def site_table(self):
        """Safe-subsampling sites: factor and output side before → after."""
        from .textfit import Column, PathTable

        cols = [Column("site"), Column("scale", "right"), Column("factor", "right"), Column("factor'", "right"),
                Column("out", "right"), Column("out'", "right")]
        rows = [[s.path, f"{s.scale:.4g}", f"{s.factor_before:.4g}", f"{s.factor_after:.4g}", _hw(s.out_before),
                 _hw(s.out_after)] for s in self.sites]
        return PathTable(cols, rows, title="safe-subsampling")

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        parts = [Text(self.summary()), Text(""), self.table()]
        if self.sites:
            parts += [Text(""), self.site_table()]
        return Group(*parts, *[Text("note: " + n) for n in self.notes])

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.layers:
            cap = f" ({_limit(r)})" if _limit(r) else ""
            lines.append(f"  {r.path}: σ {r.sigma_before:.3g} -> {r.sigma_after:.3g}, "
                         f"size {r.size_before} -> {r.size_after}{cap}, MACs {_short(r.macs_before)} -> "
                         f"{_short(r.macs_after)}")
        for s in self.sites:
            lines.append(f"  {s.path}: factor {s.factor_before:.4g} -> {s.factor_after:.4g}, "
                         f"out {_hw(s.out_before)} -> {_hw(s.out_after)}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _limit(r: LayerRescale) -> str:
    if r.capped:
        return f"capped (needs {r.needed})"
    return "σ floor" if r.floored else ""


def _hw(v) -> str:
    if v is None:
        return "-"
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def _short(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)
