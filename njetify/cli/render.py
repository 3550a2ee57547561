"""Rich renderings of API results that fit an 80-column terminal."""

from __future__ import annotations

from .common import fmt_count

__all__ = ["kv_table", "pct", "report_tables"]


def _table(title: str):
    from rich.table import Table

    return Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                 header_style="bold", show_edge=False)


def report_tables(report) -> list:
    """The rows of a :class:`~njetify.surgery.ConversionReport` as compact tables, one per kind."""
    out = []
    convs = report.select("conv")
    if convs:
        t = _table("convolutions")
        t.add_column("module", overflow="fold", ratio=1, min_width=12)
        t.add_column("op", no_wrap=True)
        t.add_column("action", no_wrap=True)
        for name in ("N", "σ₀", "s", "fit err"):
            t.add_column(name, justify="right", no_wrap=True)
        for r in convs:
            action = r.action if not r.reason or r.action == "converted" else f"{r.action}: {r.reason}"
            t.add_row(r.path, r.op, action, _f(r.order), _f(r.sigma0, ".3g"), _f(r.size), _f(r.fit_error, ".2g"))
        out.append(t)
    subs = report.select("subsample")
    if subs:
        t = _table("subsampling")
        t.add_column("module", overflow="fold", ratio=1, min_width=12)
        t.add_column("op", no_wrap=True)
        t.add_column("action", no_wrap=True)
        t.add_column("σ source / reason", overflow="fold", ratio=1)
        for r in subs:
            why = r.extra.get("source") if r.action == "subsampled" and r.extra.get("source") else (r.reason or "")
            t.add_row(r.path, r.op, r.action, why)
        out.append(t)
    others = [r for r in report.rows if r.kind not in ("conv", "subsample")]
    if others:
        t = _table("other changes")
        t.add_column("module", overflow="fold", ratio=1, min_width=12)
        t.add_column("kind", no_wrap=True)
        t.add_column("action", no_wrap=True)
        t.add_column("details", overflow="fold", ratio=1)
        for r in others:
            details = r.reason or r.op
            if r.sigma0 is not None:
                details = f"σ₀ {r.sigma0:.3g}; {details}"
            t.add_row(r.path, r.kind, r.action, details)
        out.append(t)
    return out


def kv_table(rows: list[tuple[str, str]], title: str | None = None):
    """A two-column key/value table."""
    t = _table(title or "")
    t.add_column("key", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    t.show_header = False
    for k, v in rows:
        t.add_row(k, v)
    return t


def pct(before: float | None, after: float | None) -> str:
    """``"1.2M → 1.3M (+8.3%)"``."""
    if before is None or after is None:
        return "-"
    change = "" if not before else f" ({(after - before) / before * 100:+.1f}%)"
    return f"{fmt_count(before)} → {fmt_count(after)}{change}"


def _f(v, spec: str = "") -> str:
    return "" if v is None else format(v, spec)
