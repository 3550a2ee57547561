"""Rich renderings of API results that fit an 80-column terminal."""

from __future__ import annotations

from .common import fmt_count

__all__ = ["kv_table", "pct"]


def _table(title: str):
    from rich.table import Table

    return Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                 header_style="bold", show_edge=False)


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
