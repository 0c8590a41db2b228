"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import gc
import os
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


_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def available_cpus() -> int:
    """CPUs this process could run on when it started (before :func:`pin_threads`)."""
    return len(_CPUS) or (os.cpu_count() or 1)


def pin_threads(n: int) -> str:
    """Run this process on ``n`` CPUs: its affinity (every thread) and BLAS' threads.

    The affinity is what ``convmat.indices.default_threads()`` reads, so convmat's
    threaded builds, its split CSR products, its SciPy FFT ``workers`` and its cost model
    use ``n`` threads on operators made afterwards; BLAS is held to ``n`` threads by
    ``threadpoolctl`` (if installed). Returns a note of how, for a table's caption.
    """
    from convmat.indices import default_threads

    if _CPUS:
        mask = set(_CPUS[:n])
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), mask)
            except OSError:  # a thread that ended meanwhile
                pass
        os.sched_setaffinity(0, mask)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        blas = "BLAS not limited (threadpoolctl not installed)"
    else:
        threadpool_limits(limits=n)
        blas = "BLAS held to n threads by threadpoolctl.threadpool_limits(n)"
    if _CPUS:
        assert default_threads() == min(n, 8), (default_threads(), n)
    return ("the process' CPU affinity set to n CPUs on every thread (os.sched_setaffinity), "
            "so convmat.indices.default_threads() = n, which sets StructuredConv.threads "
            "(SciPy FFT workers), the CSR row split and the cost model's threads; " + blas)
