"""Peak resident memory of a block of code, sampled from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import os
import threading
import time


def rss_mib() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Context manager sampling RSS every 2 ms: ``.peak`` = highest RSS seen minus the RSS at entry (MiB)."""

    def __enter__(self):
        self.base = self.peak_abs = rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak_abs = max(self.peak_abs, rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_abs = max(self.peak_abs, rss_mib())
        self.peak = self.peak_abs - self.base
