"""Direct build of a transposed convolution's CSR ``W.T`` against the forward build of ``W``.

Prints a Markdown table and writes it to ``benchmarks/results/transpose_build.md``.

For each transposed convolution whose ``W.T`` is not itself a convolution (stride > 1 or a
padding mode; ``ConvGeometry.adjoint`` is None):

* forward: ``conv_matrix`` of the matching forward convolution (``W``);
* direct: ``conv_transpose_matrix`` (``W.T`` written from the transposed plans);
* old: what ``conv_transpose_matrix`` did before, the forward build then SciPy's
  ``W.T.tocsr()`` (one thread); its result is checked equal to the direct one;
* peak traced memory (tracemalloc) of each, as a multiple of the CSR's bytes.

Run: ``python benchmarks/transpose_build.py [--quick] [--repeats N]``. Timings are medians
over rounds that run the three builds one after another (interleaved, so that they see the
same drift of the machine), default threads (``convmat.indices.default_threads``); this
machine is shared and its page faults are noisy, so read ratios rather than absolute
numbers, and expect a ratio to move by a few tenths between runs.
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import statistics
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's convmat
import convmat  # noqa: E402
from convmat.indices import default_threads  # noqa: E402
from convmat.matrix import assemble  # noqa: E402

from timing import median_time  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

CASES = [
    # name, transposed-conv weight (C_in, C_out/G, *k), its input shape, options
    ("16->16 ch, 256^2 -> 512^2, 3x3, s2 p1 op1", (16, 16, 3, 3), (16, 256, 256),
     dict(stride=2, padding=1, output_padding=1)),
    ("ResNet stem^T 64->3 ch, 112^2 -> 224^2, 7x7, s2 p3 op1", (64, 3, 7, 7), (64, 112, 112),
     dict(stride=2, padding=3, output_padding=1)),
    ("128->64 ch, 28^2 -> 56^2, 3x3, s2 p1 op1", (128, 64, 3, 3), (128, 28, 28),
     dict(stride=2, padding=1, output_padding=1)),
    ("16->16 ch, 128^2 -> 256^2, 3x3, s2 p1 op1, reflect", (16, 16, 3, 3), (16, 128, 128),
     dict(stride=2, padding=1, output_padding=1, padding_mode="reflect")),
    ("16->16 ch, 128^2 -> 256^2, 4x4, s2 p1, circular", (16, 16, 4, 4), (16, 128, 128),
     dict(stride=2, padding=1, padding_mode="circular")),
    ("16->16 ch, 256^2, 3x3, s1 d2 p2, replicate", (16, 16, 3, 3), (16, 256, 256),
     dict(padding=2, dilation=2, padding_mode="replicate")),
    ("3-D 8->8 ch, 32^3 -> 64^3, 3x3x3, s2 p1 op1", (8, 8, 3, 3, 3), (8, 32, 32, 32),
     dict(stride=2, padding=1, output_padding=1)),
    ("16->16 ch, 256^2 -> 512^2, 3x3, s2 p1 op1, channels last", (3, 3, 16, 16),
     (256, 256, 16), dict(stride=2, padding=1, output_padding=1, layout="channels_last")),
]
QUICK = [CASES[2], CASES[3]]


def peak_ratio(fn, final_bytes: int) -> float:
    """Peak traced memory of ``fn()`` over ``final_bytes``."""
    gc.collect()
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak / final_bytes


def old_conversion(forward, weight):
    """The former transposed build: the forward CSR, then SciPy's ``W.T.tocsr()``."""
    w = assemble(forward, weight, np)
    wt = w.T.tocsr()
    del w
    return wt


def run(cases, repeats: int) -> str:
    threads = default_threads()
    root = Path(__file__).resolve().parent.parent
    here = (" (this checkout)" if Path(convmat.__file__).resolve().parent.parent == root
            else f" ({Path(convmat.__file__).parent})")
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {threads} build threads; "
        f"Python {sys.version.split()[0]}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"convmat {convmat.__version__}{here}. float32 weights; medians of {repeats} "
        "interleaved rounds.",
        "",
        "| transposed conv | nnz | CSR | forward W | direct W.T | direct / forward | "
        "old (W, then .T.tocsr()) | old / direct | peak / CSR: forward | direct | old |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, wshape, ishape, opts in cases:
        w = np.random.default_rng(0).standard_normal(wshape).astype(np.float32)
        g = convmat.conv_transpose_geometry(w, ishape, **opts)
        assert g.adjoint is None, name
        forward = g.T
        conv_opts = {k: v for k, v in opts.items() if k != "output_padding"}
        direct = functools.partial(convmat.conv_transpose_matrix, w, ishape, **opts)
        fwd = functools.partial(convmat.conv_matrix, w, forward.conv_input_shape, **conv_opts)
        old = functools.partial(old_conversion, forward, w)
        got, ref = direct(), old()  # the same canonical CSR
        assert all(np.array_equal(getattr(got, a), getattr(ref, a))
                   for a in ("indptr", "indices", "data")), name
        del got, ref
        # interleaved rounds: the machine's state (free pages, other load) drifts, and all
        # three should see the same drift
        rounds = [[median_time(f, 1) for f in (fwd, direct, old)] for _ in range(repeats)]
        t_fwd, t_direct, t_old = (statistics.median(r[i] for r in rounds) for i in range(3))
        peaks = [peak_ratio(f, g.nbytes) for f in (fwd, direct, old)]
        line = (f"| {name} | {g.nnz / 1e6:.1f} M | {g.nbytes / 2**20:,.0f} MiB | "
                f"{t_fwd:.3f} s | {t_direct:.3f} s | {t_direct / t_fwd:.2f} | "
                f"{t_old:.2f} s | {t_old / t_direct:.1f}x | "
                + " | ".join(f"{p:.2f}" for p in peaks) + " |")
        print(line, flush=True)
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small cases, not written")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    table = run(QUICK if args.quick else CASES, args.repeats)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "transpose_build.md").write_text(table)
        print(f"\nwritten to {RESULTS / 'transpose_build.md'}")


if __name__ == "__main__":
    main()
