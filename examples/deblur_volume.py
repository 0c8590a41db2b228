"""Deblur a 3-D volume across MPI ranks with convmat.petsc (PETSc MPIAIJ + KSPLSQR).

    mpiexec -n 4 python examples/deblur_volume.py --size 128

Nothing is gathered: every rank builds its rows of W, generates its part of the volume
(balls of different brightness) from the formula, and the solve runs on PETSc vectors.
Needs petsc4py (``pip install convmat[mpi]`` or Debian's ``python3-petsc4py``); set
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` for the ranks.
"""

import argparse
import time

import numpy as np
from petsc4py import PETSc

from convmat import petsc

BALLS = [((0.3, 0.4, 0.5), 0.25, 1.0), ((0.7, 0.6, 0.4), 0.18, 0.6),
         ((0.5, 0.5, 0.8), 0.10, 0.8), ((0.4, 0.75, 0.3), 0.08, 0.4)]


def volume_part(start, stop, n):
    """The volume's values at raveled indices [start, stop) of an n^3 grid."""
    z, y, x = np.unravel_index(np.arange(start, stop), (n, n, n))
    coords = np.stack([z, y, x], axis=1) / (n - 1)
    values = np.zeros(stop - start)
    for centre, radius, level in BALLS:
        inside = ((coords - np.array(centre)) ** 2).sum(axis=1) <= radius**2
        values[inside] = level
    return values


def main():
    """Build, blur, solve and report the PSNR (printed by rank 0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--noise", type=float, default=1e-3)
    parser.add_argument("--damp", type=float, default=2e-2)
    parser.add_argument("--maxiter", type=int, default=200)
    args = parser.parse_args()
    comm = PETSc.COMM_WORLD
    n = args.size
    g = np.exp(-0.5 * ((np.arange(5) - 2) / 1.2) ** 2)
    psf = np.einsum("i,j,k->ijk", g, g, g)
    psf /= psf.sum()

    t = time.perf_counter()
    op = petsc.DistributedConvOperator(psf, (n, n, n), padding="same")
    build = time.perf_counter() - t
    truth, blurred = op.create_vecs()
    start, stop = truth.getOwnershipRange()
    truth.array[:] = volume_part(start, stop, n)
    op.mult(truth, blurred)
    rng = np.random.default_rng(1 + comm.getRank())
    blurred.array[:] += args.noise * rng.standard_normal(blurred.getLocalSize())

    t = time.perf_counter()
    res = op.lsqr(blurred, damp=args.damp, rtol=1e-8, maxiter=args.maxiter)
    solve = time.perf_counter() - t
    error = res.x.copy()
    error.axpy(-1.0, truth)
    before = blurred.copy()
    before.axpy(-1.0, truth)
    mse_after = error.norm() ** 2 / n**3
    mse_before = before.norm() ** 2 / n**3
    PETSc.Sys.Print(
        f"{n}^3 volume on {comm.getSize()} rank(s): W {op.shape[0]:,} x {op.shape[1]:,}, "
        f"built in {build:.2f} s; KSPLSQR {res.iterations} iterations in {solve:.2f} s "
        f"({res.stop_reason}); PSNR {10 * np.log10(1 / mse_before):.2f} dB -> "
        f"{10 * np.log10(1 / mse_after):.2f} dB", comm=comm)


if __name__ == "__main__":
    main()
