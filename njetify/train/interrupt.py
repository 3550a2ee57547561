"""Ctrl-C during fit(): finish the current step, write a checkpoint, then stop.

The first SIGINT only sets a flag; the trainer looks at it after every optimizer step
and at epoch ends, writes ``last.pt`` at that exact position and raises
:class:`TrainingInterrupted`, so ``resume=True`` continues bit-identically. A second
SIGINT raises ``KeyboardInterrupt`` at once (the last checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """fit() stopped on Ctrl-C after a complete step.

    ``checkpoint``: the ``last.pt`` written at that position (None when nothing could be
    written: no ``out_dir``, or no step had run); ``step``/``epoch``/``batch``: the position
    (``batch`` batches into epoch ``epoch + 1``).
    """

    def __init__(self, checkpoint: Path | None, step: int, epoch: int, batch: int, steps_per_epoch: int):
        self.checkpoint, self.step, self.epoch, self.batch = checkpoint, step, epoch, batch
        self.steps_per_epoch = steps_per_epoch
        where = f"step {step} (epoch {epoch + 1}, batch {batch}/{steps_per_epoch})"
        saved = f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint written"
        super().__init__(f"interrupted at {where}{saved}")


class StopFlag:
    """Set by the first SIGINT inside :meth:`watch`; ``requested`` is read by the trainer."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def watch(self, enabled: bool = True):
        """Install the two-stage SIGINT handler inside the block (main thread only)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:  # second Ctrl-C: stop now
                signal.signal(signal.SIGINT, previous if callable(previous) else signal.default_int_handler)
                raise KeyboardInterrupt
            self.requested = True
            print("\nCtrl-C: finishing this step, then writing a checkpoint (Ctrl-C again: stop now)",
                  file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
