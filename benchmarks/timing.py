"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int = 20) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds).

    Garbage is collected before each call (outside the timing) and each result is dropped
    before the next call, so large outputs do not pile up between runs.
    """
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
    return statistics.median(times)
