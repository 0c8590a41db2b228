"""Build throughput of convmat's CSR builder against memory bandwidth and a COO builder.

Prints a Markdown table and writes it to ``benchmarks/results/build.md``.

* Memory-write bandwidth: filling 1 GiB that is already mapped, and allocating + filling
  fresh memory (page faults included) with one and with two threads. A builder has to
  produce fresh memory, so "fresh" is its floor.
* For each case: convmat's build (default threads), the same on one thread, a
  straightforward COO-then-CSR builder (per channel pair and tap, vectorised over output
  positions, then ``coo_array(...).tocsr()``), and peak traced memory / final CSR bytes.

Run: ``python benchmarks/build.py [--quick]``. Timings are medians over repeats; this
machine is shared, so read ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import platform
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp

import convmat
from convmat.axes import padded_index as _padded_index
from convmat.indices import build_csr_arrays, default_threads

from timing import median_time

RESULTS = Path(__file__).resolve().parent / "results"

CASES = [
    # name, weight shape, input shape, options
    ("16->16 ch, 256x256, 3x3", (16, 16, 3, 3), (16, 256, 256), dict(padding=1)),
    ("64->64 ch, 128x128, 3x3, stride 2", (64, 64, 3, 3), (64, 128, 128),
     dict(padding=1, stride=2)),
    ("16->16 ch, 256x256, 3x3, reflect", (16, 16, 3, 3), (16, 256, 256),
     dict(padding=1, padding_mode="reflect")),
    ("1 ch, 1024x1024, 9x9 blur", (1, 1, 9, 9), (1, 1024, 1024), dict(padding=4)),
    ("1 ch, 2048x2048, 3x3", (1, 1, 3, 3), (1, 2048, 2048), dict(padding=1)),
    ("depthwise 32 ch, 256x256, 5x5", (32, 1, 5, 5), (32, 256, 256),
     dict(padding=2, groups=32)),
    ("3-D 4->4 ch, 64^3, 3x3x3", (4, 4, 3, 3, 3), (4, 64, 64, 64), dict(padding=1)),
    ("1-D 1 ch, 2^24 samples, k=9", (1, 1, 9), (1, 2**24), dict(padding=4)),
]
QUICK = [CASES[0], CASES[3], CASES[7]]


def write_bandwidth(nbytes: int, repeats: int) -> dict[str, float]:
    """GB/s of filling ``nbytes``: pre-touched, fresh on 1 thread, fresh on 2 threads."""
    n = nbytes // 8

    def pretouched() -> float:
        a = np.empty(n)
        a.fill(1.0)
        return median_time(lambda: a.fill(2.0), repeats)

    pre = pretouched()

    def fresh1():
        b = np.empty(n)
        b.fill(1.0)
        return b

    def fresh2():
        b = np.empty(n)
        half = n // 2
        th = [threading.Thread(target=b[i * half:(i + 1) * half if i else half].fill,
                               args=(1.0,)) for i in range(2)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        b[2 * half:].fill(1.0)
        return b

    return {
        "pre-touched fill, 1 thread": nbytes / pre / 1e9,
        "fresh alloc + fill, 1 thread": nbytes / median_time(fresh1, repeats) / 1e9,
        "fresh alloc + fill, 2 threads": nbytes / median_time(fresh2, repeats) / 1e9,
    }


def coo_builder(w: np.ndarray, input_shape, stride, padding, dilation, groups, mode):
    """The straightforward builder: (row, col, value) per channel pair and tap, then tocsr."""
    c_out, cin_g = w.shape[:2]
    k = w.shape[2:]
    n = input_shape[1:]
    D = len(n)
    out = [(n[d] + sum(padding[d]) - dilation[d] * (k[d] - 1) - 1) // stride[d] + 1
           for d in range(D)]
    pos = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
    n_out, n_in = math.prod(out), math.prod(n)
    rows, cols, vals = [], [], []
    for co in range(c_out):
        g = co // (c_out // groups)
        for cl in range(cin_g):
            ci = g * cin_g + cl
            for t in itertools.product(*[range(kk) for kk in k]):
                valid = np.ones(out, dtype=bool)
                col = np.full(out, ci * n_in, dtype=np.int64)
                for d in range(D):
                    q = _padded_index(stride[d] * pos[d] + dilation[d] * t[d] - padding[d][0],
                                      n[d], mode)
                    valid &= q >= 0
                    col += q * math.prod(n[d + 1:])
                r = co * n_out + np.flatnonzero(valid)
                rows.append(r)
                cols.append(col[valid])
                vals.append(np.full(r.size, w[(co, cl) + t]))
    coo = sp.coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(c_out * n_out, input_shape[0] * n_in))
    return coo.tocsr()


def peak_ratio(fn, final_bytes: int) -> float:
    gc.collect()
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak / final_bytes


def run(cases, repeats: int, coo: bool) -> str:
    threads = default_threads()
    bw = write_bandwidth(1 << 30, repeats)
    fresh = bw[f"fresh alloc + fill, {min(threads, 2)} thread{'s' if threads > 1 else ''}"]
    touched = bw["pre-touched fill, 1 thread"]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {threads} build threads; "
        f"Python {sys.version.split()[0]}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"convmat {convmat.__version__}.",
        "",
        "| memory write bandwidth (1 GiB, median) | GB/s |",
        "|---|---:|",
        *[f"| {name} | {v:.1f} |" for name, v in bw.items()],
        "",
        "| case | nnz | CSR | build | GB/s | / fresh fill | / pre-touched fill | 1 thread | "
        "COO->CSR | speedup vs COO | peak / CSR | COO peak / CSR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, wshape, ishape, opts in cases:
        w = np.random.default_rng(0).standard_normal(wshape)
        g = convmat.conv_geometry(w, ishape, **opts)
        build = functools.partial(convmat.conv_matrix, w, ishape, **opts)
        t_build = median_time(build, repeats)
        t_one = median_time(functools.partial(build_csr_arrays, g, w, np, threads=1), repeats)
        rate = g.nbytes / t_build / 1e9
        peak = peak_ratio(build, g.nbytes)
        if coo:
            args = (w, ishape, g.stride, g.padding, g.dilation, g.groups, g.padding_mode)
            check = coo_builder(*args)
            # same matrix; folded taps may be summed in another order (rounding only)
            diff = abs(check - build()).max() if check.nnz else 0.0
            assert diff <= 8 * np.finfo(w.dtype).eps * np.abs(w).sum(), diff
            del check
            baseline = functools.partial(coo_builder, *args)
            t_coo = median_time(baseline, 1)
            coo_peak = peak_ratio(baseline, g.nbytes)
            coo_cols = f"{t_coo:.2f} s | {t_coo / t_build:.1f}x | {peak:.2f} | {coo_peak:.2f}"
        else:
            coo_cols = f"- | - | {peak:.2f} | -"
        line = (f"| {name} | {g.nnz / 1e6:.1f} M | {g.nbytes / 2**20:,.0f} MiB | "
                f"{t_build * 1e3:.0f} ms | {rate:.1f} | {rate / fresh:.2f} | "
                f"{rate / touched:.2f} | "
                f"{g.nbytes / t_one / 1e9:.1f} GB/s | {coo_cols} |")
        print(line, flush=True)
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three cases, no COO baseline")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = run(QUICK if args.quick else CASES, args.repeats, coo=not args.quick)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "build.md").write_text(table)
        print(f"\nwritten to {RESULTS / 'build.md'}")


if __name__ == "__main__":
    main()
