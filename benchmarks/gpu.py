"""The GPU backend on one device: bandwidth, build, SpMV/SpMM, cuDNN, CPU build, LSMR deblur.

Prints Markdown tables and writes them to ``benchmarks/results/gpu.md`` (with the device's
name). Everything is timed on the wall clock with the device synchronised, median of repeats
after a warm-up, so Python and kernel-launch overheads count.

1. Device memory bandwidth: a device-to-device copy of 2 GiB (bytes read + written), and a
   fill (bytes written).
2. Build of ``W`` on the GPU for the cases of ``benchmarks/build.py`` (float64): bytes of the
   finished CSR over the time, against the copy bandwidth (goal >= 0.5), and the CPU build of
   the same matrix on this machine's host (goal: GPU >= 30x faster).
3. ``W @ x`` (SpMV) and ``W @ X`` with 16 columns (SpMM) through cuSPARSE: bytes the product
   must move (the CSR arrays, ``x`` and ``y``) over the time, against the copy bandwidth
   (goal for SpMV >= 0.7).
4. ``conv`` via ``W @ x`` against ``torch.nn.functional.conv{1,2,3}d`` (cuDNN, TF32 off) on
   the same device, float32, batch 1; the padding modes through ``F.pad``.
5. LSMR deblur of a 1024x1024 image (convmat's phantom, 9x9 Gaussian blur, noise 1e-3,
   stopped by the discrepancy principle): GPU against CPU, build included.

Needs CuPy and a GPU (``pip install -e .[gpu]``); PyTorch is optional (row 4 is skipped
without it). ``--device cpu`` runs the same script on NumPy/SciPy (the cuDNN column becomes
PyTorch's CPU convolution), to check the script itself on a machine without a GPU;
``--smoke`` shrinks every size.

Run: ``python benchmarks/gpu.py [--quick] [--smoke] [--device {gpu,cpu}]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import convmat
from convmat import metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import CASES, QUICK  # noqa: E402 - the same cases as the CPU benchmark

RESULTS = Path(__file__).resolve().parent / "results"

SMOKE = [
    ("4->4 ch, 32x32, 3x3", (4, 4, 3, 3), (4, 32, 32), dict(padding=1)),
    ("4->4 ch, 32x32, 3x3, reflect", (4, 4, 3, 3), (4, 32, 32),
     dict(padding=1, padding_mode="reflect")),
    ("1-D 1 ch, 4096 samples, k=9", (1, 1, 9), (1, 4096), dict(padding=4)),
]


class Device:
    """The array module under test and a clock that waits for it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "gpu":
            try:
                import cupy
            except ImportError:
                sys.exit("benchmarks/gpu.py needs CuPy and a GPU (pip install -e .[gpu]); "
                         "--device cpu checks the script on the CPU")
            if not cupy.cuda.is_available():
                sys.exit("CuPy finds no GPU; --device cpu checks the script on the CPU")
            self.xp: Any = cupy
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"]
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.name += f", {props['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}"
        else:
            self.xp = np
            self.name = f"CPU ({platform.processor() or platform.machine()}), NumPy " \
                        f"{np.__version__}"

    def sync(self) -> None:
        if self.kind == "gpu":
            self.xp.cuda.Device().synchronize()

    def time(self, fn: Any, repeats: int) -> float:
        """Median wall time of ``fn()`` with the device synchronised, after one warm-up."""
        out = fn()
        self.sync()
        del out
        times = []
        for _ in range(repeats):
            gc.collect()
            self.sync()
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t)
            del out
        if self.kind == "gpu":  # repeats reuse the pool's blocks; the next case starts clean
            self.xp.get_default_memory_pool().free_all_blocks()
        return statistics.median(times)

    def asarray(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)


def bandwidth(dev: Device, nbytes: int, repeats: int) -> tuple[float, float]:
    """GB/s of a device-to-device copy (read + written) and of a fill (written)."""
    xp = dev.xp
    a = xp.ones(nbytes // 8)
    b = xp.empty_like(a)
    copy = dev.time(functools.partial(xp.copyto, b, a), repeats)
    fill = dev.time(functools.partial(b.fill, 2.0), repeats)
    return 2 * nbytes / copy / 1e9, nbytes / fill / 1e9


def build_table(dev: Device, cases: list, copy_bw: float, repeats: int) -> list[str]:
    lines = [
        "| case | nnz | CSR | build (device) | GB/s | / copy BW | CPU build (host) | "
        "device / CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    host = Device("cpu")
    for name, wshape, ishape, options in cases:
        w = np.random.default_rng(0).standard_normal(wshape)
        g = convmat.conv_geometry(w, ishape, **options)
        wd = dev.asarray(w)
        t = dev.time(lambda: convmat.conv_matrix(wd, ishape, **options), repeats)  # noqa: B023
        t_cpu = host.time(lambda: convmat.conv_matrix(w, ishape, **options),  # noqa: B023
                          max(1, repeats // 2))
        rate = g.nbytes / t / 1e9
        line = (f"| {name} | {g.nnz / 1e6:.1f} M | {g.nbytes / 2**20:.0f} MiB | "
                f"{t * 1e3:.2f} ms | {rate:.0f} | {rate / copy_bw:.2f} | {t_cpu * 1e3:.0f} ms | "
                f"{t_cpu / t:.0f}x |")
        print(line, flush=True)
        lines.append(line)
    return lines


def spmv_table(dev: Device, cases: list, copy_bw: float, repeats: int) -> list[str]:
    lines = [
        "| case | SpMV | GB/s | / copy BW | SpMM (16 columns) | GB/s | / copy BW |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, wshape, ishape, options in cases:
        w = dev.asarray(np.random.default_rng(0).standard_normal(wshape))
        W = convmat.conv_matrix(w, ishape, **options)
        rows, cols = W.shape
        csr = W.data.nbytes + W.indices.nbytes + W.indptr.nbytes
        x = dev.asarray(np.random.default_rng(1).standard_normal(cols))
        X = dev.asarray(np.random.default_rng(2).standard_normal((cols, 16)))
        t1 = dev.time(functools.partial(W.__matmul__, x), repeats)
        tk = dev.time(functools.partial(W.__matmul__, X), repeats)
        moved1 = csr + 8 * (rows + cols)
        movedk = csr + 8 * 16 * (rows + cols)
        r1, rk = moved1 / t1 / 1e9, movedk / tk / 1e9
        line = (f"| {name} | {t1 * 1e3:.3f} ms | {r1:.0f} | {r1 / copy_bw:.2f} | "
                f"{tk * 1e3:.3f} ms | {rk:.0f} | {rk / copy_bw:.2f} |")
        print(line, flush=True)
        lines.append(line)
    return lines


def _torch_conv(torch: Any, dev: Device, w: np.ndarray, x: np.ndarray, options: dict) -> Any:
    """``fn`` running ``x`` through PyTorch's convolution (cuDNN on the GPU), float32."""
    F = torch.nn.functional  # noqa: N806
    where = "cuda" if dev.kind == "gpu" else "cpu"
    tw = torch.as_tensor(w, device=where)
    tx = torch.as_tensor(x[None], device=where)
    nd = w.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    g = convmat.conv_geometry(w, x.shape, **options)
    mode = g.padding_mode
    stride, dilation, groups = g.stride, g.dilation, g.groups
    if mode == "zeros" and all(lo == hi for lo, hi in g.padding):
        pad = tuple(lo for lo, _ in g.padding)

        def run() -> Any:
            return conv(tx, tw, stride=stride, padding=pad, dilation=dilation, groups=groups)
    else:
        flat = tuple(p for lo_hi in reversed(g.padding) for p in lo_hi)
        torch_mode = "constant" if mode == "zeros" else mode

        def run() -> Any:
            return conv(F.pad(tx, flat, mode=torch_mode), tw, stride=stride, dilation=dilation,
                        groups=groups)
    return run


def cudnn_table(dev: Device, cases: list, repeats: int) -> list[str]:
    try:
        import torch
    except ImportError:
        return ["(PyTorch is not installed: no cuDNN comparison)"]
    if dev.kind == "gpu":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    other = "cuDNN (PyTorch)" if dev.kind == "gpu" else "PyTorch CPU"
    lines = [
        f"| case | W @ x (float32) | {other} | W @ x / {other.split()[0]} | max rel. diff |",
        "|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, wshape, ishape, options in cases:
        rng = np.random.default_rng(0)
        w = rng.standard_normal(wshape).astype(np.float32)
        x = rng.standard_normal(ishape).astype(np.float32)
        op = convmat.ConvOperator(dev.asarray(w), ishape, **options)
        xd = dev.asarray(x)
        t_w = dev.time(functools.partial(op.apply, xd), repeats)
        run = _torch_conv(torch, dev, w, x, options)
        if dev.kind == "gpu":
            torch.cuda.synchronize()
        t_t = dev.time(run, repeats)
        ours = convmat.to_cpu(op @ xd)
        theirs = run()[0].cpu().numpy()
        diff = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
        line = (f"| {name} | {t_w * 1e3:.3f} ms | {t_t * 1e3:.3f} ms | {t_w / t_t:.2f} | "
                f"{diff:.1e} |")
        print(line, flush=True)
        lines.append(line)
    return lines


def gaussian(k: int, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(k) - k // 2) / sigma) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def deblur_table(dev: Device, n: int, k: int) -> list[str]:
    truth = convmat.data.phantom(n)
    kernel = gaussian(k, k / 4)
    rng = np.random.default_rng(0)
    clean = convmat.ConvOperator(kernel, (n, n), padding="same") @ truth
    noise = 1e-3 * rng.standard_normal((n, n))
    y = clean + noise
    target = 1.05 * np.linalg.norm(noise) / np.linalg.norm(y)
    lines = [
        f"| {n}x{n}, {k}x{k} blur, LSMR | build | solve | total | iterations | PSNR |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)

    def psnr(x: np.ndarray) -> float:
        return metrics.psnr(truth, x)

    runs = [("CPU (SciPy)", np, kernel, y)]
    if dev.kind == "gpu":
        runs.append((f"GPU ({dev.name.split(',')[0]})", dev.xp, dev.asarray(kernel),
                     dev.asarray(y)))
    for label, xp, kern, obs in runs:
        sync = dev.sync if xp is not np else (lambda: None)
        for _ in range(2):  # the first run warms up (kernels compiled, memory pooled)
            sync()
            t0 = time.perf_counter()
            op = convmat.ConvOperator(kern, (n, n), padding="same")
            sync()
            t1 = time.perf_counter()
            res = convmat.deconvolve(obs, op, method="lsmr", atol=0.0, btol=target,
                                     maxiter=5000)
            sync()
            t2 = time.perf_counter()
        line = (f"| {label} | {(t1 - t0) * 1e3:.1f} ms | {(t2 - t1):.2f} s | {(t2 - t0):.2f} s "
                f"| {res.iterations} | {psnr(convmat.to_cpu(res.x)):.2f} dB |")
        print(line, flush=True)
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--quick", action="store_true", help="three cases, fewer repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the tables (default benchmarks/results/gpu.md; "
                             "nothing is written with --smoke unless given)")
    args = parser.parse_args()
    dev = Device(args.device)
    cases = SMOKE if args.smoke else (QUICK if args.quick else CASES)
    repeats = 3 if (args.quick or args.smoke) else 7
    nbytes = 2**24 if args.smoke else 2**31
    print(f"device: {dev.name}", flush=True)
    copy_bw, fill_bw = bandwidth(dev, nbytes, repeats)
    head = [
        f"Device: **{dev.name}**; host: {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}.",
        "",
        f"Device memory bandwidth: copy {copy_bw:.0f} GB/s (read + written, "
        f"{nbytes / 2**30:.2f} GiB), fill {fill_bw:.0f} GB/s (written).",
        "",
    ]
    print("\n".join(head), flush=True)
    out = head
    out += ["### Build of W (float64)", ""] + build_table(dev, cases, copy_bw, repeats) + [""]
    out += ["### Sparse products (float64)", ""] + spmv_table(dev, cases, copy_bw, repeats)
    out += ["", "### conv via W against the deep-learning library (float32, batch 1)", ""]
    out += cudnn_table(dev, cases, repeats) + [""]
    n, k = (64, 5) if args.smoke else (1024, 9)
    out += ["### Deblurring (LSMR, discrepancy principle, build included)", ""]
    out += deblur_table(dev, n, k)
    target = args.out if args.out is not None else (
        None if args.smoke else RESULTS / "gpu.md")
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("# GPU backend\n\n" + "\n".join(out) + "\n")
        print(f"wrote {target}")
    if not math.isfinite(copy_bw):
        sys.exit(1)


if __name__ == "__main__":
    main()
