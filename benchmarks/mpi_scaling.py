"""Strong scaling of convmat.petsc on 1 and 2 MPI ranks against SciPy serial.

``python benchmarks/mpi_scaling.py`` runs each problem serially (SciPy CSR, convmat's
``deconvolve``) and under ``mpiexec -n 1`` and ``-n 2`` (``--worker``; needs a Python with
petsc4py: this one, ``$CONVMAT_MPI_PYTHON`` or Debian's ``/usr/bin/python3``), then prints a
Markdown table and writes it to ``benchmarks/results/mpi_scaling.md``. Per rank: build time
of its share of ``W``, the share's CSR bytes and the resident-memory high-water mark of the
build above the process baseline; MatMult and LSQR (KSPLSQR) time per call / iteration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROBLEMS = {
    "1024^2 image, 5x5 blur": ((1, 1, 5, 5), (1, 1024, 1024), {"padding": "same"}),
    "96^3 volume, 2->2 ch, 3x3x3": ((2, 2, 3, 3, 3), (2, 96, 96, 96), {"padding": 1}),
}
ITERATIONS = 30


def weight_for(shape):
    w = np.random.default_rng(0).uniform(size=shape)
    return w / w.sum()


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _per_iteration(solve) -> float:
    """(t(N) - t(1)) / (N - 1): the iteration cost without the per-call setup."""
    solve(1)
    t = time.perf_counter()
    solve(1)
    one = time.perf_counter() - t
    t = time.perf_counter()
    solve(ITERATIONS)
    return (time.perf_counter() - t - one) / (ITERATIONS - 1)


def worker(name: str) -> None:
    from petsc4py import PETSc

    from convmat import petsc
    from convmat.geometry import conv_geometry
    from convmat.indices import build_csr_arrays

    comm = PETSc.COMM_WORLD
    wshape, ishape, opts = PROBLEMS[name]
    w = weight_for(wshape)
    # the PETSc build first, its memory high-water mark above the process baseline
    _reset_peak()
    baseline = _status_kib("VmRSS")
    comm.barrier()
    t = time.perf_counter()
    op = petsc.DistributedConvOperator(w, ishape, **opts)
    comm.barrier()
    build = time.perf_counter() - t
    peak = (_status_kib("VmHWM") - baseline) / 1024
    # then convmat's part alone: this rank's share of W, built by the generator
    g = conv_geometry(w, ishape, **opts)
    planes = petsc.plane_ranges(g, comm.getSize())[comm.getRank()]
    comm.barrier()
    t = time.perf_counter()
    share_arrays = build_csr_arrays(g, w, np, planes=planes)
    own = time.perf_counter() - t
    del share_arrays
    info = op.matrix.getInfo(PETSc.Mat.InfoType.LOCAL)
    share = int(info["nz_used"]) * 12 + (op.matrix.getLocalSize()[0] + 1) * 4
    x, y = op.create_vecs()
    x.set(1.0)
    times = []
    for _ in range(20):
        comm.barrier()
        t = time.perf_counter()
        op.mult(x, y)
        comm.barrier()
        times.append(time.perf_counter() - t)
    mult = statistics.median(times)
    b = op.apply(np.ones(op.input_shape))

    def solve(k):
        comm.barrier()
        op.lsqr(b, damp=1e-2, rtol=0.0, maxiter=k)
        comm.barrier()

    lsqr = _per_iteration(solve)
    report = json.dumps({"rank": comm.getRank(), "size": comm.getSize(), "build": build,
                         "own": own, "share": share, "rss_mib": peak, "mult": mult,
                         "lsqr": lsqr})
    PETSc.Sys.syncPrint(report, comm=comm)  # every rank's line, in rank order, via rank 0
    PETSc.Sys.syncFlush(comm=comm)


def serial(name: str) -> dict:
    import convmat

    wshape, ishape, opts = PROBLEMS[name]
    w = weight_for(wshape)
    convmat.ConvOperator(w, ishape, **opts)  # warm-up
    t = time.perf_counter()
    op = convmat.ConvOperator(w, ishape, **opts)
    build = time.perf_counter() - t
    x = np.ones(op.shape[1])
    times = []
    for _ in range(20):
        t = time.perf_counter()
        op.matrix @ x
        times.append(time.perf_counter() - t)
    b = op @ np.ones(op.input_shape)
    lsqr = _per_iteration(lambda k: convmat.deconvolve(b, op, damp=1e-2, atol=0, btol=0,
                                                       maxiter=k))
    return {"build": build, "own": build, "share": op.nbytes,
            "mult": statistics.median(times), "lsqr": lsqr, "nnz": op.nnz}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    from test_mpi import PYTHON, WHY, _mpi_env

    if PYTHON is None:
        raise SystemExit(f"cannot run the MPI benchmark: {WHY}")
    lines = [
        f"LSQR: {ITERATIONS} iterations, damp 1e-2 (KSPLSQR on [W; damp I] for PETSc, convmat's "
        "deconvolve for SciPy); one BLAS/OpenMP thread per rank.", "",
        "| problem | nnz | run | build (convmat's share) | build + PETSc assembly | "
        "CSR per rank | build's peak memory per rank | W @ x (MatMult) | LSQR / iteration |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in PROBLEMS:
        s = serial(name)
        rows = [("SciPy serial (convmat: 2 threads in build and solver, 1 in W @ x)",
                 s["own"], None, s["share"] / 2**20, None, s["mult"], s["lsqr"])]
        for ranks in (1, 2):
            out = subprocess.run(["mpiexec", "-n", str(ranks), PYTHON, __file__, "--worker", name],
                                 capture_output=True, text=True, env=_mpi_env(), timeout=1200)
            if out.returncode != 0:
                raise SystemExit(out.stdout + out.stderr)
            reports = [json.loads(line) for line in out.stdout.splitlines()
                       if line.startswith("{")]
            rows.append((f"PETSc, {ranks} rank{'s' if ranks > 1 else ''}",
                         max(r["own"] for r in reports), max(r["build"] for r in reports),
                         max(r["share"] for r in reports) / 2**20,
                         max(r["rss_mib"] for r in reports),
                         max(r["mult"] for r in reports), max(r["lsqr"] for r in reports)))
        for run, own, build, share, rss, mult, lsqr in rows:
            total = "-" if build is None else f"{build * 1e3:,.0f} ms"
            line = (f"| {name} | {s['nnz'] / 1e6:.1f} M | {run} | {own * 1e3:,.0f} ms | {total} | "
                    f"{share:,.0f} MiB | {'-' if rss is None else f'{rss:,.0f} MiB'} | "
                    f"{mult * 1e3:.1f} ms | {lsqr * 1e3:.1f} ms |")
            print(line, flush=True)
            lines.append(line)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "mpi_scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
