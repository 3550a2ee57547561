"""Tables whose first column holds module paths and that fit the terminal: paths are shortened in
the middle (``stages.3.bl…2.conv_dw``), never dropped; optional columns go first when it is narrow.

:class:`PathTable` is a rich renderable: it measures the console width when it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Column", "PathTable", "shorten_middle"]

ELLIPSIS = "…"


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells by replacing its middle with ``…`` (the end, the leaf name, keeps more)."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    keep = width - 1
    head = keep * 2 // 5
    tail = keep - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


@dataclass
class Column:
    """A column: ``header``, ``justify`` (left/right), ``optional`` (dropped first when space is short)."""

    header: str
    justify: str = "left"
    optional: bool = False


class PathTable:
    """Rows of strings under ``columns``; column 0 is the module path.

    Printed on a console of width W, the other columns keep their natural width, the path
    column gets the rest (at least ``min_path`` cells: optional columns are dropped to make
    room) and longer paths are shortened in the middle.
    """

    gap = 2  # cells between two columns (rich padding (0, 1) on both sides, none at the edges)

    def __init__(self, columns: list[Column], rows: list[list[str]], title: str | None = None, min_path: int = 16):
        self.columns, self.rows, self.title, self.min_path = columns, rows, title, min_path

    def _widths(self, keep: list[int]) -> list[int]:
        from rich.cells import cell_len

        return [max([cell_len(self.columns[i].header)] + [cell_len(r[i]) for r in self.rows]) for i in keep]

    def layout(self, width: int) -> tuple[list[int], int]:
        """The columns kept (indices) and the width of the path column for a console ``width`` cells wide."""
        keep = list(range(len(self.columns)))
        optional = [i for i in keep if self.columns[i].optional]
        while True:
            w = self._widths(keep)
            room = width - sum(w[1:]) - self.gap * (len(keep) - 1)
            if room >= min(w[0], self.min_path) or not optional:
                return keep, max(1, min(w[0], room))
            keep.remove(optional.pop())

    def build(self, width: int):
        """The ``rich.table.Table`` laid out for ``width`` cells."""
        from rich.table import Table

        keep, path_width = self.layout(width)
        t = Table(title=self.title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                  show_edge=False, header_style="bold", padding=(0, 1))
        for n, i in enumerate(keep):
            col = self.columns[i]
            t.add_column(col.header, justify=col.justify, no_wrap=True, width=path_width if n == 0 else None)
        for r in self.rows:
            t.add_row(shorten_middle(r[0], path_width), *[r[i] for i in keep[1:]])
        return t

    def __rich_console__(self, console, options):
        yield self.build(options.max_width)
