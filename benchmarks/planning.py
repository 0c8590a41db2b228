"""Planning cost and long kernels: what a geometry costs before the build, and long 1-D builds.

Prints Markdown tables and writes them to ``benchmarks/results/planning.md``.

* Planning: time and peak traced memory (tracemalloc) of ``conv_geometry(...).nnz`` for long
  1-D kernels (k = n, ``padding='same'``), every padding mode; the number of runs the plan
  holds.
* Refusal: time from the call to ``ConvMatrixTooLarge`` for huge paddings.
* Long-kernel build rate: ``conv_matrix`` entries per second for k = n 'same' (zeros and
  reflect) against a one-channel 2-D 5x5 case with about the same nnz, both with the
  default build threads; the ratio is time per entry, long kernel over 2-D.

Run: ``python benchmarks/planning.py [--quick]``. Timings are medians over repeats (each on
a fresh geometry, so planning is included in the build); this machine is shared, so read
ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse  # noqa: F401 - imported before anything is traced

import convmat
from convmat.axes import axis_plan
from convmat.indices import default_threads

from timing import median_time

RESULTS = Path(__file__).resolve().parent / "results"



def planning_rows(sizes, modes, repeats):
    rows = []
    for k in sizes:
        for mode in modes:
            def plan(k=k, mode=mode):
                axis_plan.cache_clear()  # time the plan, not the cache
                return convmat.conv_geometry(np.ones(k), (k,), padding="same",
                                             padding_mode=mode)
            seconds = median_time(lambda plan=plan: plan().nnz, repeats)
            axis_plan.cache_clear()
            tracemalloc.start()
            g = plan()
            nnz = g.nnz
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append((f"k = n = {k}, 'same', {mode}", nnz, len(g.axis_plans[0].runs),
                         seconds, peak, g.nbytes))
    return rows


def refusal_rows(repeats):
    rows = []
    for padding, max_bytes in ((10**7, 10**6), (10**18, None)):
        def refuse(padding=padding, max_bytes=max_bytes):
            axis_plan.cache_clear()
            try:
                convmat.conv_matrix(np.ones(3), (10,), padding=padding, max_bytes=max_bytes)
            except convmat.ConvMatrixTooLarge:
                return
            raise AssertionError("not refused")
        seconds = median_time(refuse, repeats)
        tracemalloc.start()
        refuse()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append((f"padding={padding:.0e}, max_bytes={max_bytes}", seconds, peak))
    return rows


def rate_rows(sizes, repeats):
    rows = []
    for k in sizes:
        for mode in ("zeros", "reflect"):
            w = np.ones(k)
            nnz = convmat.conv_geometry(w, (k,), padding="same", padding_mode=mode).nnz

            def long_build(w=w, k=k, mode=mode):
                axis_plan.cache_clear()
                convmat.conv_matrix(w, (k,), padding="same", padding_mode=mode)
            t1 = median_time(long_build, repeats)
            n2 = max(5, round(math.sqrt(nnz / 25)))
            w2 = np.ones((5, 5))
            nnz2 = convmat.conv_geometry(w2, (n2, n2), padding=2).nnz

            def square_build(w2=w2, n2=n2):
                axis_plan.cache_clear()
                convmat.conv_matrix(w2, (n2, n2), padding=2)
            t2 = median_time(square_build, repeats)
            rows.append((f"k = n = {k} 'same', {mode}", nnz, t1, f"{n2}x{n2}, 5x5", nnz2, t2,
                         (t1 / nnz) / (t2 / nnz2)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--no-write", action="store_true",
                        help=f"print only; do not write {RESULTS / 'planning.md'}")
    args = parser.parse_args(argv)
    sizes = (201, 801) if args.quick else (2001, 8001)
    repeats = 3 if args.quick else 7

    lines = [
        f"Machine: {platform.machine()}, {default_threads()} build threads; Python "
        f"{platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"convmat {convmat.__version__}. Medians of {repeats} runs.",
        "",
        "| planning (`conv_geometry(...).nnz`) | nnz | runs | time | peak traced memory "
        "| CSR it plans |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    modes = ("zeros", "reflect", "replicate", "circular")
    for name, nnz, runs, seconds, peak, csr in planning_rows(sizes, modes, repeats):
        lines.append(f"| {name} | {nnz:,} | {runs:,} | {seconds * 1e3:.1f} ms "
                     f"| {peak / 2**20:.2f} MiB | {csr / 2**20:,.0f} MiB |")
    lines += ["", "| refusal (`ConvMatrixTooLarge`) | time | peak traced memory |",
              "|---|---:|---:|"]
    for name, seconds, peak in refusal_rows(repeats):
        lines.append(f"| {name} | {seconds * 1e3:.2f} ms | {peak / 2**10:.0f} KiB |")
    lines += ["", "| long kernel | nnz | build | 2-D case | nnz | build "
              "| time per entry, long / 2-D |", "|---|---:|---:|---|---:|---:|---:|"]
    for name, nnz, t1, name2, nnz2, t2, ratio in rate_rows(sizes, repeats):
        lines.append(f"| {name} | {nnz / 1e6:.1f} M | {t1 * 1e3:.1f} ms | {name2} "
                     f"| {nnz2 / 1e6:.1f} M | {t2 * 1e3:.1f} ms | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "planning.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
