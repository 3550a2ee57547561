"""Progress of a running calibration, for whoever shows it (the CLI's bar or log lines).

``with on_progress(fn): njetify.convert(..., calibration_data=...)`` calls ``fn(done, total)``
after every layer (or tied head) the engine has fitted, from the thread that fitted it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_lock = threading.Lock()
_listeners: list[Callable[[int, int], None]] = []


@contextlib.contextmanager
def on_progress(fn: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``fn(done, total)`` after each fitted layer while the block runs."""
    with _lock:
        _listeners.append(fn)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(fn)


def report_progress(done: int, total: int) -> None:
    """Tell every listener that ``done`` of ``total`` layers are fitted."""
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(done, total)
