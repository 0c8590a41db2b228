"""Choosing the damping by itself: discrepancy, GCV and L-curve against the oracle.

Table 1. Four scikit-image photographs the tests never use (``astronaut`` in grey,
``coins``, ``moon``, ``text``; resized to ``--size``), blurred by a 5x5 Gaussian (sigma 1), a
15x15 Gaussian (sigma 3) and a 9-pixel diagonal motion blur, with white noise of 1e-3 and
1e-2, the symmetric boundary. Each is restored by LSMR with Tikhonov damping chosen by:

* the discrepancy principle with the known noise level (``damp="discrepancy"``);
* generalised cross-validation (``damp="gcv"``, one Hutchinson probe);
* robust GCV (``damp="rgcv"``, Lukas 2006, gamma 0.1);
* the L-curve (``damp="lcurve"``);
* the oracle: the best PSNR against the truth, by golden-section search in ``log damp``
  to 0.02 over a decade grid (``damp`` a fixed number each time; a user never has it).

PSNR by :func:`convmat.metrics.psnr` (scikit-image's, the truth's range as the peak).

Table 2. Non-negative deblurring of the 512^2 ``astronaut`` (7x7 Gaussian, sigma 1.5;
noise 1e-2 and 1e-3): the time to the discrepancy residual ``||W x - y|| <= sigma sqrt(m)``
of LSQR without bounds and of the projected Barzilai-Borwein solver (``spg``) with
``bounds=(0, None)``, median of 5 runs; ``lsq_linear`` (the exact small-scale path) on a
64^2 crop for scale. All on the same threads (``--threads``: process affinity, SciPy FFT
workers and BLAS through threadpoolctl).

Prints Markdown and writes it to ``benchmarks/results/regularization.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convmat  # noqa: E402
from convmat.metrics import psnr  # noqa: E402

from timing import available_cpus, pin_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("discrepancy", "gcv", "rgcv", "lcurve")


def images(size: int) -> dict[str, np.ndarray]:
    from skimage import color, data, transform

    raw = {"astronaut": color.rgb2gray(data.astronaut()), "coins": data.coins(),
           "moon": data.moon(), "text": data.text()}
    out = {}
    for name, img in raw.items():
        img = img.astype(float)
        img = (img - img.min()) / (img.max() - img.min())
        side = min(img.shape)
        out[name] = transform.resize(img[:side, :side], (size, size), anti_aliasing=True)
    return out


def gaussian(size: int, sigma: float) -> np.ndarray:
    u = np.arange(size) - (size - 1) / 2
    g = np.exp(-u ** 2 / (2 * sigma ** 2))
    k = np.outer(g, g)
    return k / k.sum()


def motion(length: int) -> np.ndarray:
    k = np.eye(length)  # a diagonal streak
    return k / k.sum()


PSFS = {"gaussian 5x5 s1": gaussian(5, 1.0), "gaussian 15x15 s3": gaussian(15, 3.0),
        "motion 9 diagonal": motion(9)}


def oracle(y: np.ndarray, op, truth: np.ndarray, maxiter: int) -> tuple[float, float, int]:
    """The damping of best PSNR: a decade grid, then golden section in log10 to 0.02."""
    cache: dict[float, float] = {}

    def score(t: float) -> float:
        t = round(t, 4)
        if t not in cache:
            x = convmat.deconvolve(y, op, method="lsmr", damp=10.0 ** t, maxiter=maxiter).x
            cache[t] = psnr(truth, x)
        return cache[t]

    grid = [0.0, -1.0, -2.0, -3.0, -4.0]
    vals = [score(t) for t in grid]
    i = int(np.argmax(vals))
    a, b = grid[min(i + 1, len(grid) - 1)], grid[max(i - 1, 0)]
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    while b - a > 0.02:
        if score(c) > score(d):
            b, d = d, c
            c = b - r * (b - a)
        else:
            a, c = c, d
            d = a + r * (b - a)
    best = max(cache, key=cache.get)
    return 10.0 ** best, cache[best], len(cache)


def choice_table(size: int, maxiter: int, smoke: bool) -> list[str]:
    lines = ["| image | PSF | noise | blurred | oracle (damp, PSNR) | discrepancy | gcv | "
             "rgcv | lcurve | solves (disc/gcv/rgcv/lc) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rng = np.random.default_rng(0)
    imgs = images(size)
    if smoke:
        imgs = {"astronaut": imgs["astronaut"]}
    psfs = {k: v for k, v in PSFS.items() if not smoke or k.startswith("gaussian 5")}
    gaps: dict[str, list[float]] = {rule: [] for rule in RULES}
    for name, truth in imgs.items():
        for psf_name, psf in psfs.items():
            op = convmat.ConvOperator(psf, truth.shape, padding="same",
                                      padding_mode="symmetric")
            for noise in ((1e-2,) if smoke else (1e-3, 1e-2)):
                y = op @ truth + noise * rng.standard_normal(truth.shape)
                d_best, p_best, _ = oracle(y, op, truth, maxiter)
                cells, solves = [], []
                for rule in RULES:
                    try:
                        res = convmat.deconvolve(y, op, method="lsmr", damp=rule,
                                                 noise_level=noise, maxiter=maxiter)
                    except RuntimeError as exc:  # the L-curve without 5 converged solves
                        cells.append(f"failed ({str(exc)[:40]})")
                        solves.append("-")
                        continue
                    p = psnr(truth, res.x)
                    gaps[rule].append(p_best - p)
                    cells.append(f"{res.choice.value:.2e}, {p:.2f} ({p - p_best:+.2f})")
                    solves.append(str(res.choice.solves))
                line = (f"| {name} | {psf_name} | {noise:g} | {psnr(truth, y):.2f} | "
                        f"{d_best:.2e}, {p_best:.2f} | " + " | ".join(cells) + " | "
                        + "/".join(solves) + " |")
                lines.append(line)
                print(line, flush=True)
    lines.append("")
    for rule, g in gaps.items():
        if g:
            within = sum(v <= 0.5 for v in g)
            lines.append(f"- {rule}: within 0.5 dB of the oracle on {within} of {len(g)}; "
                         f"median gap {statistics.median(g):.2f} dB, worst {max(g):.2f} dB.")
    print("\n".join(lines[-len(gaps):]), flush=True)
    return lines


def bounds_table(smoke: bool) -> list[str]:
    from skimage import color, data, transform

    n = 64 if smoke else 512
    truth = transform.resize(color.rgb2gray(data.astronaut()), (n, n), anti_aliasing=True)
    op = convmat.ConvOperator(gaussian(7, 1.5), (n, n), padding="same",
                              padding_mode="symmetric")
    rng = np.random.default_rng(1)
    lines = ["| image | noise | LSQR to the discrepancy | spg, x >= 0, to the discrepancy | "
             "ratio | PSNR (LSQR / spg) |", "|---|---:|---:|---:|---:|---:|"]
    for noise in (1e-2, 1e-3):
        y = op @ truth + noise * rng.standard_normal(truth.shape)
        runs = {}
        for name, kw in (("lsqr", {}), ("spg", {"bounds": (0, None)})):
            times, res = [], None
            for _ in range(5):
                t = time.perf_counter()
                res = convmat.deconvolve(y, op, stop="discrepancy", noise_level=noise,
                                         maxiter=5000, **kw)
                times.append(time.perf_counter() - t)
            runs[name] = (statistics.median(times), res)
        (t0, r0), (t1, r1) = runs["lsqr"], runs["spg"]
        lines.append(f"| astronaut {n}^2 | {noise:g} | {t0:.2f} s ({r0.iterations} it) | "
                     f"{t1:.2f} s ({r1.iterations} it) | {t1 / t0:.2f} | "
                     f"{psnr(truth, r0.x):.2f} / {psnr(truth, r1.x):.2f} |")
        print(lines[-1], flush=True)
    crop = truth[:64, :64] if not smoke else truth[:16, :16]
    small = convmat.ConvOperator(gaussian(7, 1.5), crop.shape, padding="same",
                                 padding_mode="symmetric")
    y = small @ crop + 1e-2 * rng.standard_normal(crop.shape)
    t = time.perf_counter()
    res = convmat.deconvolve(y, small, method="lsq_linear", bounds=(0, None), maxiter=100)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    fast = convmat.deconvolve(y, small, bounds=(0, None), stop="discrepancy", noise_level=1e-2)
    t_fast = time.perf_counter() - t
    assert fast.converged and fast.x.min() >= 0
    lines.append("")
    lines.append(f"`lsq_linear` (exact, trust-region reflective) on a {crop.shape[0]}^2 crop: "
                 f"{t_exact:.2f} s ({res.iterations} iterations, {res.stop_reason}); spg to "
                 f"the discrepancy there: {t_fast:.3f} s.")
    print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--maxiter", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="one small case (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS / "regularization.md")
    args = parser.parse_args()
    how = pin_threads(args.threads)
    size = 48 if args.smoke else args.size
    head = [f"Machine: {platform.machine()}, {available_cpus()} CPUs available; Python "
            f"{platform.python_version()}, NumPy {np.__version__}, convmat "
            f"{convmat.__version__}.", "", f"Threads: {args.threads} ({how}).", "",
            f"Table 1: {size}^2 images, LSMR at most {args.maxiter} iterations per solve; "
            "each cell: the damping chosen, the PSNR in dB and its gap to the oracle.", ""]
    print("\n".join(head), flush=True)
    lines = head + choice_table(size, args.maxiter, args.smoke)
    lines += ["", "Table 2: non-negativity at the speed of the unconstrained solve.", ""]
    lines += bounds_table(args.smoke)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
