"""Progress of fit(): a bar with ETA and a metrics line (terminal), or periodic log lines (pipes, files).

In a terminal the display is two lines that fit 80 columns::

    epoch 1/10 ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━         30/1875 0:00:12 eta 0:12:40
    step 30  loss 2.3374  acc 11.88  σ 0.494–0.504 px  194 img/s

When stderr is not a terminal, one such line is printed every tenth of an epoch (and at
least once a minute), so a log file shows the run moving.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


class _TwoLineProgress(Progress):
    """A rich Progress whose bar line is followed by one line of text (``self.info``)."""

    info = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.info:
            yield Text(self.info, overflow="ellipsis", no_wrap=True)


def evaluation_line(head: str, row: dict) -> str:
    """``head`` and a history ``row``'s train/val metrics and σ range on one line, or two when one
    would not fit 80 columns."""
    parts = []
    for split in ("train", "val"):
        vals = [f"{k} {v:.3g}" for k, v in row.get(split, {}).items() if k in ("loss", "acc", "miou")]
        if vals:
            parts.append(f"{split} " + " ".join(vals))
    sig = [d["sigma"] for d in row["layers"].values()]
    if sig:
        parts.append(f"σ {min(sig):.3g}–{max(sig):.3g}")
    rest = "  ".join(parts)
    return f"{head}  {rest}" if len(head) + len(rest) + 2 <= 80 else f"{head}\n  {rest}"


def format_duration(seconds: float) -> str:
    """``4530`` → ``"1 h 15 min"``, ``75`` → ``"1 min 15 s"``, ``8.2`` → ``"8 s"``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


class TrainProgress:
    """Progress display of one run; a no-op when disabled (``enabled=False``, non-main rank)."""

    def __init__(self, enabled: bool, total_epochs: int, console: Console | None = None):
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.console = console or Console(file=sys.stderr, highlight=False)
        self._progress: _TwoLineProgress | None = None
        self._task = None
        self._epoch, self._steps, self._done = 0, 0, 0
        self._t0 = self._last_line = 0.0

    def __enter__(self):
        if self.enabled and self.console.is_terminal:
            self._progress = _TwoLineProgress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=None),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                expand=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_epoch(self, epoch: int, steps: int, done: int = 0, stop: int | None = None) -> None:
        """Begin the bar of ``epoch`` (1-based) with ``steps`` batches, ``done`` of them already run;
        ``stop``: the batch after which the run stops in this epoch (``max_steps``), if it does."""
        steps = steps if stop is None else min(steps, stop)
        self._epoch, self._steps, self._done = epoch, steps, done
        self._t0 = self._last_line = time.monotonic()
        self._start_done = done
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._progress.info = ""
        self._task = self._progress.add_task(f"epoch {epoch}/{self.total_epochs}", total=steps, completed=done)

    def update(self, step: int, loss: float, metric: str, value: float, sigma: tuple[float, float] | None,
               throughput: float) -> None:
        """Advance one step; show running loss, metric, σ range (px) and images/s."""
        if not self.enabled:
            return
        self._done += 1
        info = f"step {step}  loss {loss:.4f}  {metric} {value:.2f}"
        if sigma is not None:
            info += f"  σ {sigma[0]:.3g}–{sigma[1]:.3g} px"
        info += f"  {throughput:,.0f} img/s"
        if self._progress is not None and self._task is not None:
            self._progress.info = info
            self._progress.update(self._task, advance=1)
            return
        now = time.monotonic()
        every = max(1, self._steps // 10)
        if self._done % every and self._done != self._steps and now - self._last_line < 60:
            return
        self._last_line = now
        ran = self._done - self._start_done
        eta = (now - self._t0) / ran * (self._steps - self._done) if ran else 0.0
        self.console.print(f"epoch {self._epoch}/{self.total_epochs} {self._done}/{self._steps}  {info}  "
                           f"eta {format_duration(eta)}", soft_wrap=True)

    def log(self, text: str) -> None:
        """Print one line above the bars (epoch summaries, notes)."""
        if self.enabled:
            self.console.print(text, soft_wrap=not self.console.is_terminal)  # a log file keeps whole lines
