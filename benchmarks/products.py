"""Per-product time of convmat's paths (csr, direct, fft, auto) against PyTorch, equal threads.

Prints Markdown tables and writes them to ``benchmarks/results/products.md``.

1. ``W @ x`` against ``torch.nn.functional.conv2d`` and ``W^T @ y`` against
   ``conv_transpose2d`` (with the ``output_padding`` that gives back the input's shape), one
   input ``(C, H, W)``, float64 and float32, on 1 and on 2 threads for both sides: ResNet-18's
   convolutions at their true sizes (224^2 input) and one-channel 1024^2 images with 3x3,
   9x9 and 31x31 kernels ("same" padding). convmat's ``auto`` (the cost model's path, shown)
   and each path pinned with ``op.with_method(m)``; every operator is made outside the timed
   call, and the CSR's build is not in its product time. The csr path is skipped where
   ``W`` would exceed :data:`MAX_CSR_BYTES`, a direct or fft timing whose predicted time
   (the cost model) exceeds :data:`MAX_PREDICTED_S`.
2. Batches of 16 for a few layers: ``op @ X`` ``(16, C, H, W)`` on the ``auto`` path
   against PyTorch's batched conv2d and against 16 single products.
3. The cost model (``convmat.structured.estimate_costs``) against the measured times, and
   whether ``choose_method``'s path was the fastest one measured.

Threads: both sides run on the same ``n`` CPUs. The process' CPU affinity is set to ``n``
CPUs (``os.sched_setaffinity`` on every thread of the process), which is what
``convmat.indices.default_threads()`` reads, so ``StructuredConv.threads`` (SciPy's FFT
``workers``), the row split of the CSR product and the cost model all use ``n``; BLAS is
held to ``n`` by ``threadpoolctl.threadpool_limits(n)``; PyTorch gets
``torch.set_num_threads(n)``.

Before timing, every path's output is checked against PyTorch's (against the direct path
without PyTorch): relative error ``||a - b|| / ||b||`` at most 1e-10 (float64) or 1e-4
(float32), else the script stops. Times are the best of several calls after one warm-up
call (:func:`best_time`), since other processes share this machine.

Run: ``python benchmarks/products.py [--quick] [--smoke --out PATH]`` (``--quick``: two
small layers, one repeat; ``--smoke``: tiny sizes, to check the script). PyTorch is
optional (its columns then read "torch not installed").
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy

import convmat
from convmat.structured import METHODS, choose_method, estimate_costs

from timing import available_cpus, median_time, pin_threads

try:
    import torch
except ImportError:  # the torch columns then say so
    torch = None

RESULTS = Path(__file__).resolve().parent / "results"
#: The csr path is skipped where W would take more than this.
MAX_CSR_BYTES = 3 * 2**30
#: A structured timing whose predicted time (cost model) exceeds this is skipped.
MAX_PREDICTED_S = 2.0
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
NO_TORCH = "torch not installed"
BATCH = 16


@dataclass(frozen=True)
class Layer:
    name: str
    c_in: int
    c_out: int
    k: int
    stride: int
    padding: int
    n: int

    @property
    def out(self) -> int:
        return (self.n + 2 * self.padding - self.k) // self.stride + 1

    @property
    def output_padding(self) -> int:
        """``output_padding`` of ``conv_transpose2d`` that gives back ``n``."""
        return self.n - ((self.out - 1) * self.stride - 2 * self.padding + self.k)


LAYERS = [
    Layer("stem 3->64 7x7 s2, 224^2", 3, 64, 7, 2, 3, 224),
    Layer("64->64 3x3, 56^2", 64, 64, 3, 1, 1, 56),
    Layer("64->128 3x3 s2, 56^2", 64, 128, 3, 2, 1, 56),
    Layer("128->128 3x3, 28^2", 128, 128, 3, 1, 1, 28),
    Layer("128->256 3x3 s2, 28^2", 128, 256, 3, 2, 1, 28),
    Layer("256->256 3x3, 14^2", 256, 256, 3, 1, 1, 14),
    Layer("256->512 3x3 s2, 14^2", 256, 512, 3, 2, 1, 14),
    Layer("512->512 3x3, 7^2", 512, 512, 3, 1, 1, 7),
    Layer("64->128 1x1 s2, 56^2", 64, 128, 1, 2, 0, 56),
    Layer("128->256 1x1 s2, 28^2", 128, 256, 1, 2, 0, 28),
    Layer("256->512 1x1 s2, 14^2", 256, 512, 1, 2, 0, 14),
    Layer("1 ch 1024^2, 3x3", 1, 1, 3, 1, 1, 1024),
    Layer("1 ch 1024^2, 9x9", 1, 1, 9, 1, 4, 1024),
    Layer("1 ch 1024^2, 31x31", 1, 1, 31, 1, 15, 1024),
]
BATCHED = ["stem 3->64 7x7 s2, 224^2", "64->64 3x3, 56^2", "256->256 3x3, 14^2",
           "1 ch 1024^2, 9x9"]
QUICK = [Layer("32->32 3x3, 28^2", 32, 32, 3, 1, 1, 28),
         Layer("1 ch 256^2, 9x9", 1, 1, 9, 1, 4, 256)]
QUICK_BATCHED = [QUICK[0].name]
SMOKE = [Layer("4->4 3x3, 16^2", 4, 4, 3, 1, 1, 16),
         Layer("1 ch 32^2, 5x5 s2", 1, 1, 5, 2, 2, 32)]
SMOKE_BATCHED = [SMOKE[0].name]


# --------------------------------------------------------------------------- threads
def use_threads(n: int) -> str:
    """Run convmat, BLAS and PyTorch on ``n`` CPUs (see the module docstring)."""
    how = pin_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return how


# --------------------------------------------------------------------------- timing
def best_time(fn, quick: bool) -> tuple[float, Any]:
    """``(seconds, output of the warm-up call)``: the best of several calls after a warm-up.

    3 to 15 calls (about 0.3 s of them), 2 for a call over 0.3 s, 1 with ``quick``; each
    timed by :func:`timing.median_time` (garbage collected before it). The best rather than
    the median: other processes share the CPUs at times, and a two-thread product whose
    second thread waits for a busy CPU can take many times longer.
    """
    gc.collect()
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    if quick:
        calls = 1
    elif first > 0.3:
        calls = 2
    else:
        calls = max(3, min(15, int(0.3 / max(first, 1e-6))))
    return min(median_time(fn, 1) for _ in range(calls)), out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def check(what: str, out: np.ndarray, ref: np.ndarray, dtype: np.dtype) -> None:
    err = rel_err(out, ref)
    if not err <= TOLERANCE[dtype]:
        raise SystemExit(f"MISMATCH: {what}: relative error {err:.2e} > "
                         f"{TOLERANCE[dtype]:.0e} ({dtype})")


def ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e3:,.2f}"


# --------------------------------------------------------------------------- one layer
@dataclass
class Result:
    layer: Layer
    dtype: np.dtype
    threads: int
    torch_fwd: float | None = None
    torch_adj: float | None = None
    auto: str = ""
    fwd: dict = None  # method -> seconds or a skip note (str)
    adj: dict = None
    predicted: dict = None
    batch: dict = None


def torch_ops(layer: Layer, w: np.ndarray):
    F = torch.nn.functional  # noqa: N806
    tw = torch.from_numpy(w)

    def forward(x):
        with torch.no_grad():
            return F.conv2d(x, tw, stride=layer.stride, padding=layer.padding)

    def adjoint(y):
        with torch.no_grad():
            return F.conv_transpose2d(y, tw, stride=layer.stride, padding=layer.padding,
                                      output_padding=layer.output_padding)

    return forward, adjoint


def run_layer(layer: Layer, dtype: np.dtype, threads: list[int], quick: bool,
              batched: bool) -> list[Result]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((layer.c_out, layer.c_in, layer.k, layer.k)).astype(dtype)
    x = rng.standard_normal((layer.c_in, layer.n, layer.n)).astype(dtype)
    y = rng.standard_normal((layer.c_out, layer.out, layer.out)).astype(dtype)
    xb = rng.standard_normal((BATCH, *x.shape)).astype(dtype) if batched else None
    base = convmat.ConvOperator(w, x.shape, stride=layer.stride, padding=layer.padding)
    assert base.output_shape == y.shape and base.dtype == dtype
    csr_bytes = base.geometry.nbytes
    csr_skip = None
    use_threads(max(threads))  # the build is not timed: give it every CPU
    if csr_bytes > MAX_CSR_BYTES:
        csr_skip = f"skipped (W {csr_bytes / 2**30:.1f} GiB)"
    else:
        base = base.with_method("csr")  # builds W once; shared by the ops made below
    results = []
    for n in threads:
        use_threads(n)
        r = Result(layer, np.dtype(dtype), n, fwd={}, adj={})
        r.predicted = estimate_costs(base.geometry, 1, threads=n, dtype=dtype)
        ref_fwd = ref_adj = None
        if torch is not None:
            t_fwd, t_adj = torch_ops(layer, w)
            tx, ty = torch.from_numpy(x[None]), torch.from_numpy(y[None])
            r.torch_fwd, out = best_time(functools.partial(t_fwd, tx), quick)
            ref_fwd = out.numpy()[0]
            r.torch_adj, out = best_time(functools.partial(t_adj, ty), quick)
            ref_adj = out.numpy()[0]
        ops = {}
        for m in METHODS:
            if m == "csr" and csr_skip:
                r.fwd[m] = r.adj[m] = csr_skip
            elif m != "csr" and r.predicted[m] > MAX_PREDICTED_S:
                r.fwd[m] = r.adj[m] = f"skipped (model {r.predicted[m]:.1f} s)"
            else:
                ops[m] = base.with_method(m)  # a fresh core: plan and row split on n threads
        auto = base.with_method("auto")
        r.auto = auto.method
        fresh = choose_method(base.geometry, 1)  # an operator without W (no memory test lift)
        if fresh != r.auto:
            r.auto += f"; without W: {fresh}"
        if "direct" in ops and ref_fwd is None:  # no PyTorch: check against the direct path
            ref_fwd, ref_adj = ops["direct"] @ x, ops["direct"].T @ y
        for m, op in [*ops.items(), ("auto", auto)]:
            opT = op.T
            r.fwd[m], out = best_time(lambda op=op: op @ x, quick)
            if ref_fwd is not None:
                check(f"{layer.name} {dtype} W @ x via {m}", out, ref_fwd, np.dtype(dtype))
            r.adj[m], out = best_time(lambda opT=opT: opT @ y, quick)
            if ref_adj is not None:
                check(f"{layer.name} {dtype} W^T @ y via {m}", out, ref_adj, np.dtype(dtype))
            del out
        if batched:
            r.batch = batch_times(layer, w, xb, base, r, quick)
        results.append(r)
        print(f"  {layer.name} {np.dtype(dtype)} {n} thread(s) done", flush=True)
    del base
    gc.collect()
    return results


def batch_times(layer: Layer, w: np.ndarray, xb: np.ndarray, base, r: Result,
                quick: bool) -> dict:
    auto = base.with_method("auto")
    out: dict[str, Any] = {"path": auto.method_for(BATCH)}
    out["convmat"], res = best_time(lambda: auto @ xb, quick)
    ref = None
    if torch is not None:
        t_fwd, _ = torch_ops(layer, w)
        txb = torch.from_numpy(xb)
        out["torch"], ref = best_time(lambda: t_fwd(txb), quick)
        ref = ref.numpy()
    elif r.fwd.get("direct") is not None and not isinstance(r.fwd["direct"], str):
        ref = base.with_method("direct") @ xb
    if ref is not None:
        check(f"{layer.name} {r.dtype} batch of {BATCH}", res, ref, r.dtype)
    out["single"] = r.fwd["auto"]
    return out


# --------------------------------------------------------------------------- tables
def cell(v) -> str:
    return v if isinstance(v, str) else ms(v)


def product_table(results: list[Result], adjoint: bool) -> list[str]:
    what = "adj" if adjoint else "fwd"
    ref = "conv_transpose2d" if adjoint else "conv2d"
    lines = [
        f"| layer | dtype | threads | torch {ref} ms | convmat auto ms (path) | csr ms | "
        "direct ms | fft ms | auto / torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        times = getattr(r, what)
        t_torch = r.torch_adj if adjoint else r.torch_fwd
        ratio = "-" if t_torch is None else f"{times['auto'] / t_torch:.2f}"
        lines.append(
            f"| {r.layer.name} | {r.dtype} | {r.threads} | "
            f"{NO_TORCH if torch is None else ms(t_torch)} | {ms(times['auto'])} ({r.auto}) | "
            + " | ".join(cell(times[m]) for m in METHODS) + f" | {ratio} |")
    return lines


def batch_table(results: list[Result]) -> list[str]:
    lines = [
        f"| layer | dtype | threads | torch conv2d, batch {BATCH} ms | convmat auto, batch "
        f"{BATCH} ms (path) | {BATCH} x single auto ms | convmat / torch | batch / "
        f"{BATCH} singles |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.batch is None:
            continue
        b = r.batch
        singles = BATCH * b["single"]
        t_torch = b.get("torch")
        lines.append(
            f"| {r.layer.name} | {r.dtype} | {r.threads} | "
            f"{NO_TORCH if t_torch is None else ms(t_torch)} | {ms(b['convmat'])} "
            f"({b['path']}) | {ms(singles)} | "
            f"{'-' if t_torch is None else format(b['convmat'] / t_torch, '.2f')} | "
            f"{b['convmat'] / singles:.2f} |")
    return lines


def model_table(results: list[Result]) -> list[str]:
    lines = [
        "| layer | dtype | threads | predicted csr / direct / fft ms | measured csr / direct "
        "/ fft ms (W @ x) | chosen | fastest measured (W @ x) | chosen / fastest | fastest "
        "(W^T @ y) |",
        "|---|---|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        meas = {m: v for m, v in r.fwd.items() if m in METHODS and not isinstance(v, str)}
        meas_adj = {m: v for m, v in r.adj.items() if m in METHODS and not isinstance(v, str)}
        best = min(meas, key=meas.get)
        best_adj = min(meas_adj, key=meas_adj.get)
        path = r.auto.split(";")[0]
        chosen = meas.get(path)
        ratio = "-" if chosen is None else f"{chosen / meas[best]:.2f}"
        mark = "yes" if path == best else "**no**"
        lines.append(
            f"| {r.layer.name} | {r.dtype} | {r.threads} | "
            + " / ".join(ms(r.predicted[m]) for m in METHODS) + " | "
            + " / ".join(cell(r.fwd[m]) if not isinstance(r.fwd[m], str) else "skip"
                         for m in METHODS)
            + f" | {r.auto} | {best} ({mark}) | {ratio} | {best_adj} |")
    return lines


def summary_table(results: list[Result], threads: list[int]) -> list[str]:
    """``auto / torch`` ranges per group of layers, dtype and threads (what README quotes)."""
    groups = {"multi-channel": lambda r: r.layer.c_in > 1 or r.layer.c_out > 1,
              "one channel": lambda r: r.layer.c_in == 1 and r.layer.c_out == 1}
    cols = [(d, n) for d in ("float64", "float32") for n in threads]
    lines = ["| layers | product | " + " | ".join(f"{d}, {n} thread{'s' * (n > 1)}"
                                                 for d, n in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for name, member in groups.items():
        for adjoint in (False, True):
            row = []
            for d, n in cols:
                ratios = []
                for r in results:
                    t_torch = r.torch_adj if adjoint else r.torch_fwd
                    if member(r) and r.dtype == d and r.threads == n and t_torch:
                        ratios.append((r.adj if adjoint else r.fwd)["auto"] / t_torch)
                row.append(f"{min(ratios):.2f}-{max(ratios):.2f} (median "
                           f"{sorted(ratios)[len(ratios) // 2]:.2f})" if ratios else "-")
            what = "W^T @ y" if adjoint else "W @ x"
            lines.append(f"| {name} | {what} | " + " | ".join(row) + " |")
    return lines


def run(layers: list[Layer], batched: list[str], threads: list[int], quick: bool) -> str:
    info = (f"Machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs "
            f"available; Python {sys.version.split()[0]}, NumPy {np.__version__}, SciPy "
            f"{scipy.__version__}, PyTorch {torch.__version__ if torch else '(not installed)'}"
            f", convmat {convmat.__version__}.")
    threading_note = (
        f"Threads (both sides on the same n CPUs, n = {', '.join(map(str, threads))}): "
        + pin_threads(max(threads))
        + "; PyTorch: torch.set_num_threads(n) under the same affinity.")
    timing_note = (
        "Times: the best of 3 to 15 calls (about 0.3 s of them; 2 calls for products over "
        "0.3 s) after one warm-up call"
        + (" (here --quick/--smoke: one call after the warm-up)" if quick else "")
        + "; every operator made outside the timed call (each path pinned with "
        "op.with_method(m)); the CSR's build is NOT in the csr product time. One input "
        f"(C, H, W); csr skipped where W exceeds {MAX_CSR_BYTES / 2**30:.0f} GiB, direct/fft "
        f"where the cost model predicts over {MAX_PREDICTED_S:.0f} s. Every path's output "
        "agrees with PyTorch's (relative error <= 1e-10 float64, 1e-4 float32; the direct "
        "path is the reference without PyTorch).")
    print(info, threading_note, timing_note, sep="\n\n", flush=True)
    # PyTorch's import leaves ~10^6 objects: without this, each gc.collect() of the timing
    # helper (one per call) would take ~0.2 s
    gc.freeze()
    load = os.getloadavg()
    results: list[Result] = []
    for layer in layers:
        for dtype in (np.float64, np.float32):
            results += run_layer(layer, np.dtype(dtype), threads, quick, layer.name in batched)
    use_threads(max(threads))
    load_note = (f"Load average (1 min) at the start {load[0]:.2f}, at the end "
                 f"{os.getloadavg()[0]:.2f}: other processes shared the CPUs at times.")
    lines = [
        info, "", threading_note, "", timing_note, "", load_note, "",
        "### Summary: convmat auto / torch per product (lower is better)", "",
        *(summary_table(results, threads) if torch is not None else [NO_TORCH]), "",
        "### Forward products W @ x (torch.nn.functional.conv2d)", "",
        *product_table(results, adjoint=False), "",
        "### Adjoint products W^T @ y (torch.nn.functional.conv_transpose2d, output_padding "
        "matching the input's shape)", "",
        *product_table(results, adjoint=True), "",
        f"### Batched forward products (N = {BATCH})", "",
        f"op @ X with X of shape ({BATCH}, C, H, W) on the auto path for a batch of {BATCH} "
        f"(method_for({BATCH})), against PyTorch's conv2d of the same batch and against "
        f"{BATCH} times the single auto product above.", "",
        *batch_table(results), "",
        "### Cost model vs measured", "",
        "Predicted: convmat.structured.estimate_costs(op.geometry, 1, threads=n, dtype=...) "
        "with the reference constants (COSTS); chosen: choose_method (the auto path).", "",
        *model_table(results),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small layers, one repeat")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the tables here (default benchmarks/results/products.md; "
                             "nothing is written with --quick or --smoke unless given)")
    args = parser.parse_args()
    if args.smoke:
        layers, batched = SMOKE, SMOKE_BATCHED
    elif args.quick:
        layers, batched = QUICK, QUICK_BATCHED
    else:
        layers, batched = LAYERS, BATCHED
    threads = [n for n in (1, 2) if n <= available_cpus()]
    start = time.perf_counter()
    text = run(layers, batched, threads, args.quick or args.smoke)
    text += f"\nWall time of this run: {time.perf_counter() - start:.0f} s.\n"
    print()
    print(text)
    out = args.out
    if out is None and not (args.quick or args.smoke):
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "products.md"
    if out is not None:
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
