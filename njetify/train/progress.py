"""Rich progress bars for fit(): epoch, step, loss, accuracy/mIoU, σ range, throughput."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """A progress display that is a no-op when disabled (``enabled=False``, non-main rank)."""

    def __init__(self, enabled: bool, total_epochs: int, console: Console | None = None):
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.console = console or Console(file=sys.stderr)
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """Begin the bar of ``epoch`` (1-based) with ``steps`` batches, ``done`` of them already run."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"epoch {epoch}/{self.total_epochs}", total=steps,
                                             completed=done, info="")

    def update(self, step: int, loss: float, metric: str, value: float, sigma: tuple[float, float] | None,
               throughput: float) -> None:
        """Advance one step; show running loss, metric, σ range (px) and images/s."""
        if self._progress is None or self._task is None:
            return
        info = f"step {step}  loss {loss:.4f}  {metric} {value:.2f}  "
        if sigma is not None:
            info += f"σ {sigma[0]:.3g}–{sigma[1]:.3g}  "
        info += f"{throughput:,.0f} img/s"
        self._progress.update(self._task, advance=1, info=info)

    def log(self, text: str) -> None:
        """Print one line above the bars (epoch summaries)."""
        if self.enabled:
            self.console.print(text)
