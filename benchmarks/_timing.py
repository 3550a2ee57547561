"""Wall times of a call, for the benchmarks (one warm-up call first)."""

from __future__ import annotations

import time


def run_times(fn, reps: int) -> list[float]:
    """Seconds of each of ``reps`` timed calls of ``fn()``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn, reps: int) -> float:
    """Median of ``reps`` timed calls of ``fn()`` in ms, after one untimed warm-up call."""
    times = sorted(run_times(fn, reps))
    return times[len(times) // 2] * 1e3
