"""Deconvolution: convmat's solvers against PyLops, and the per-iteration cost of each solver.

Prints two Markdown tables and writes them to ``benchmarks/results/deconvolution.md``.

1. Per-iteration time of ``deconvolve`` (lsqr, lsmr, cgls) over the time of one ``W @ x``
   plus one ``W.T @ y`` on the operator's path (``method='auto'``, shown; target: at most
   1.2x).
2. Deblurring a single-channel photograph (scikit-image's ``camera``, resampled to 256^2 and
   1024^2) blurred by Gaussians of 3x3, 5x5, 9x9 and 15x15 with noise 1e-3: convmat
   (``deconvolve`` with LSQR on a ``ConvOperator`` with ``method='auto'``, the path the
   cost model picks, shown; the operator's making, and the CSR's build when that path is
   csr, included) against PyLops ``Convolve2D`` with ``method="direct"`` and ``"fft"`` solved
   by PyLops' own ``lsqr``. Every run stops on the same relative residual
   ``||W x - y|| / ||y|| <= target`` (``atol = 0``, ``btol = target``: PyLops' and SciPy's
   other tests differ), with the target from the discrepancy principle,
   ``1.05 * ||noise|| / ||y||``. The table shows the residual reached, iterations, time
   (median of three warm runs; one run for an expensive PyLops direct), relative error to
   the true image and PSNR.

Both tables run at 1 thread and at 2 threads, the same for both sides: the process' CPU
affinity is set to n CPUs (``convmat.indices.default_threads()`` reads it: convmat's FFT
workers and CSR row split) and BLAS is held to n threads (``threadpoolctl``; convmat's
solvers hold BLAS to one thread around their vector work themselves); PyLops' FFT
(``scipy.signal.convolve`` -> ``scipy.fft``) runs under ``scipy.fft.set_workers(n)``.
PyLops' direct method (``scipy.signal.convolve``, direct) has no threaded path: it runs on
one thread whatever n.

Needs the ``bench`` extra (``pip install -e .[bench]``). Run:
``python benchmarks/deconvolution.py [--quick]`` (``--quick``: 256^2 only, not written to
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.fft

import convmat
from convmat.metrics import psnr

from timing import available_cpus, median_time, pin_threads

RESULTS = Path(__file__).resolve().parent / "results"
NOISE = 1e-3
MAXITER = 3000
# PyLops' direct method is slow for large kernels and images: skip a run whose estimated
# time exceeds this many seconds (the estimate, from 3 timed iterations, is reported).
DIRECT_BUDGET_S = 120.0


def gaussian(k: int) -> np.ndarray:
    sigma = (k - 1) / 4
    g = np.exp(-0.5 * ((np.arange(k) - k // 2) / sigma) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def photograph(n: int) -> np.ndarray:
    from scipy.ndimage import zoom
    from skimage.data import camera

    img = camera().astype(np.float64) / 255.0
    return np.clip(zoom(img, n / img.shape[0], order=3), 0.0, 1.0)



def timed(fn, repeats: int = 3):
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up (none if 1)."""
    out = fn() if repeats > 1 else None
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def per_iteration_table(cases, threads: int) -> list[str]:
    lines = [
        "| image | kernel | threads | path | W @ x + W.T @ y | lsqr / iter | lsmr / iter | "
        "cgls / iter |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for n, k in cases:
        op = convmat.ConvOperator(gaussian(k), (n, n), padding="same")
        rng = np.random.default_rng(0)
        x = rng.standard_normal(n * n)
        y = rng.standard_normal(n * n)
        # the products deconvolve makes: the operator's path (auto), flat vectors
        pair = (median_time(functools.partial(op.__matmul__, x))
                + median_time(functools.partial(op.T.__matmul__, y)))
        cells = []
        for method in ("lsqr", "lsmr", "cgls"):
            iters = 100
            run = functools.partial(convmat.deconvolve, y.reshape(n, n), op, method=method,
                                    atol=0.0, btol=0.0, maxiter=iters)
            per = median_time(run, 3) / iters
            cells.append(f"{per * 1e3:.2f} ms ({per / pair:.2f}x)")
        line = (f"| {n}x{n} | {k}x{k} | {threads} | {op.method} | {pair * 1e3:.2f} ms | "
                + " | ".join(cells) + " |")
        print(line, flush=True)
        lines.append(line)
    return lines


def pylops_solve(op, y: np.ndarray, target: float):
    from pylops.optimization.basic import lsqr

    out = lsqr(op, y.ravel(), x0=np.zeros(y.size), atol=0.0, btol=target, niter=MAXITER,
               calc_var=False)
    return out[0], int(out[2])


def pylops_solve_on(threads: int, op, y: np.ndarray, target: float):
    """:func:`pylops_solve` with SciPy's FFT (PyLops' ``fft`` method) on ``threads`` workers."""
    with scipy.fft.set_workers(threads):
        return pylops_solve(op, y, target)


def comparison_table(cases, threads: int) -> list[str]:
    import pylops

    lines = [
        "| image | kernel | threads | method | time to solution | iterations | rel. residual | "
        "rel. error | PSNR (blurred -> restored) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for n in sorted({n for n, _ in cases}):
        truth = photograph(n)
        for nn, k in cases:
            if nn != n:
                continue
            K = gaussian(k)
            rng = np.random.default_rng(k)
            clean = convmat.ConvOperator(K, (n, n), padding="same") @ truth
            noise = NOISE * rng.standard_normal((n, n))
            y = clean + noise
            target = 1.05 * np.linalg.norm(noise) / np.linalg.norm(y)
            base = psnr(truth, y)
            rows = []

            def convmat_solve(kernel=K, data=y, target=target, n=n):
                op = convmat.ConvOperator(kernel, (n, n), padding="same")
                res = convmat.deconvolve(data, op, method="lsqr", atol=0.0, btol=target,
                                         maxiter=MAXITER)
                return res.x, res.iterations

            t, (x, iters) = timed(convmat_solve)
            op = convmat.ConvOperator(K, (n, n), padding="same")
            build = ", build included" if op.method == "csr" else ""
            rows.append((f"convmat lsqr ({op.method}{build})", t, x, iters))

            for method in ("fft", "direct"):
                pop = pylops.signalprocessing.Convolve2D((n, n), h=K, offset=(k // 2, k // 2),
                                                         method=method)
                check = (pop @ truth.ravel()).reshape(n, n)
                assert np.abs(check - clean).max() < 1e-10  # the same operator
                solve = functools.partial(pylops_solve_on, threads, pop, y, target)
                repeats = 3
                if method == "direct":
                    pair = functools.partial(lambda o, v: o.rmatvec(o.matvec(v)), pop, y.ravel())
                    with scipy.fft.set_workers(threads):
                        estimate = median_time(pair, 3) * iters * 1.1
                    if estimate > DIRECT_BUDGET_S:
                        rows.append((f"PyLops {method}", None, estimate, None))
                        continue
                    repeats = 1 if estimate > 2.0 else 3
                t, (x, its) = timed(solve, repeats)
                rows.append((f"PyLops {method}", t, x.reshape(n, n), its))

            for name, t, x, iters in rows:
                if t is None:
                    line = (f"| {n}x{n} | {k}x{k} | {threads} | {name} | skipped (est. {x:.0f} s) "
                            "| - | - | - | - |")
                else:
                    resid = np.linalg.norm(op @ x - y) / np.linalg.norm(y)
                    err = np.linalg.norm(x - truth) / np.linalg.norm(truth)
                    line = (f"| {n}x{n} | {k}x{k} | {threads} | {name} | {t * 1e3:,.0f} ms | "
                            f"{iters} | "
                            f"{resid:.2e} | {err:.4f} | {base:.1f} -> {psnr(truth, x):.1f} dB |")
                print(line, flush=True)
                lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256 only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    sizes = (256,) if args.quick else (256, 1024)
    cases = [(n, k) for n in sizes for k in (3, 5, 9, 15)]
    threads = [n for n in (1, 2) if n <= available_cpus()]
    how = pin_threads(max(threads))
    header = [f"Gaussian blurs, noise {NOISE:g}; LSQR stopped on the discrepancy-principle "
              f"relative residual (max {MAXITER} iterations). Threads: both sides run at the "
              f"same n (n = {', '.join(map(str, threads))}): {how}; convmat's solvers hold BLAS "
              "to one thread around their vector work; PyLops' fft method under "
              "scipy.fft.set_workers(n); PyLops' direct method (scipy.signal.convolve) is "
              "single-threaded whatever n.", ""]
    print("\n".join(header))
    per_iter, compare = [], []
    for n in threads:
        pin_threads(n)
        per_iter += per_iteration_table(cases, n)[0 if not per_iter else 2:]
    for n in threads:
        pin_threads(n)
        compare += comparison_table(cases, n)[0 if not compare else 2:]
    lines = header + per_iter + [""] + compare
    lines.append(f"\nWall time of this run: {time.perf_counter() - start:.0f} s.")
    print(lines[-1])
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "deconvolution.md").write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {RESULTS / 'deconvolution.md'}")


if __name__ == "__main__":
    main()
