"""The ``convmat`` command: ``demo``, ``inspect`` and ``deblur``.

A leaf of the package (nothing imports it). Bad option values and unreadable files end the
command with exit status 2 and one line on standard error saying what is wrong.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import ConvOperator, conv_geometry, conv_transpose_geometry
from .geometry import _format_bytes

__all__ = ["main", "parse_padding", "parse_psf", "parse_shape"]


class UsageError(Exception):
    """A bad option value or an unreadable file: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


# --------------------------------------------------------------------------- parsing
def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """``'3x64x64'`` -> ``(3, 64, 64)``."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a shape like 3x64x64") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"{what} {text!r} must have positive sizes")
    return shape


def _ints(text: str, what: str) -> int | tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"{what} {text!r} must be an int or comma-separated ints") from None
    return values[0] if len(values) == 1 else values


def parse_padding(text: str) -> Any:
    """``'1'``, ``'1,2'``, ``'1:2,0:1'`` (lo:hi per axis), ``'same'`` or ``'valid'``."""
    if text in ("same", "valid"):
        return text
    if ":" not in text:
        return _ints(text, "--padding")
    try:
        pairs = tuple(tuple(int(v) for v in item.split(":")) for item in text.split(","))
    except ValueError:
        raise UsageError(f"--padding {text!r} must look like 1, 1,2, 1:2,0:1, same or "
                         "valid") from None
    if any(len(p) != 2 for p in pairs):
        raise UsageError(f"--padding {text!r}: give lo:hi for every axis")
    return pairs


def parse_psf(text: str) -> np.ndarray:
    """``gaussian:SIZE:SIGMA``, ``box:SIZE`` or a ``.npy`` file: a normalised 2-D PSF."""
    parts = text.split(":")
    try:
        if parts[0] == "gaussian" and len(parts) == 3:
            size, sigma = int(parts[1]), float(parts[2])
            if size <= 0 or sigma <= 0:
                raise ValueError
            g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
            psf = np.outer(g, g)
        elif parts[0] == "box" and len(parts) == 2:
            size = int(parts[1])
            if size <= 0:
                raise ValueError
            psf = np.ones((size, size))
        elif text.endswith(".npy"):
            psf = np.asarray(_load_array(Path(text), "--psf"), dtype=np.float64)
            if psf.ndim != 2:
                raise UsageError(f"--psf {text}: expected a 2-D array, got shape {psf.shape}")
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--psf {text!r} must be gaussian:SIZE:SIGMA, box:SIZE or a .npy "
                         "file") from None
    total = psf.sum()
    if not np.isfinite(total) or total == 0:
        raise UsageError(f"--psf {text}: the PSF must have a finite, non-zero sum")
    return psf / total


# --------------------------------------------------------------------------- images
def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import matplotlib.image as mpimg

        return mpimg.imread(path)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except ImportError:
        raise UsageError(f"{what} {path}: reading images needs matplotlib (pip install "
                         "matplotlib), or give a .npy file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc})") from None


def read_image(path: Path, what: str = "IMAGE") -> np.ndarray:
    """A grayscale float64 image in ``[0, 1]`` from a PNG (or other format) or an NPY file."""
    img = np.asarray(_load_array(path, what))
    if img.dtype.kind == "u":
        img = img / np.iinfo(img.dtype).max
    img = img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] in (3, 4):  # RGB(A) -> luminance
        img = img[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    if img.ndim != 2:
        raise UsageError(f"{what} {path}: expected a 2-D grayscale or RGB image, got shape "
                         f"{img.shape}")
    if not np.all(np.isfinite(img)):
        raise UsageError(f"{what} {path}: contains NaN or inf")
    return img


def write_image(path: Path, img: np.ndarray) -> Path:
    """Write ``img`` as PNG (clipped to [0, 1]) or NPY; without matplotlib PNG becomes NPY."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".npy":
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.image as mpimg

            mpimg.imsave(path, np.clip(img, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            return path
        except ImportError:
            path = path.with_suffix(".npy")
    np.save(path, img)
    return path


def psnr(truth: np.ndarray, img: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images in ``[0, 1]``."""
    mse = float(np.mean((truth - img) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------- commands
def _inspect(args: argparse.Namespace) -> int:
    input_shape = parse_shape(args.input, "--input")
    kernel = parse_shape(args.kernel, "--kernel")
    options = dict(stride=_ints(args.stride, "--stride"), padding=parse_padding(args.padding),
                   dilation=_ints(args.dilation, "--dilation"), groups=args.groups,
                   padding_mode=args.padding_mode)
    if args.transposed:
        options["output_padding"] = _ints(args.output_padding, "--output-padding")
        geometry = conv_transpose_geometry(kernel, input_shape, dtype=args.dtype, **options)
    else:
        geometry = conv_geometry(kernel, input_shape, dtype=args.dtype, **options)
    print(geometry.describe())
    print(f"output shape: {geometry.output_shape}")
    rows, cols = geometry.shape
    print(f"matrix: {rows} x {cols}, nnz={geometry.nnz:,}, density={geometry.density:.4g}, "
          f"dtype={geometry.dtype}, index dtype={geometry.index_dtype}")
    print(f"bytes: {geometry.nbytes:,} ({_format_bytes(geometry.nbytes)}); peak while "
          f"building: {geometry.peak_bytes:,} ({_format_bytes(geometry.peak_bytes)})")
    if not (args.dense or args.plot):
        return 0
    weight = np.arange(1, math.prod(kernel) + 1, dtype=args.dtype).reshape(kernel)
    make = ConvOperator.transposed if args.transposed else ConvOperator
    op = make(weight, input_shape, **options)
    if args.dense:
        if max(op.shape) > args.dense_limit:
            raise UsageError(f"--dense: the matrix is {rows} x {cols}, larger than "
                             f"--dense-limit {args.dense_limit}")
        np.set_printoptions(linewidth=200, threshold=args.dense_limit**2)
        print("W (weights 1, 2, 3, ... in kernel order):")
        print(op.matrix.toarray())
    if args.plot:
        _plot_inspect(op, Path(args.plot))
        print(f"plot written to {args.plot}")
    return 0


def _plot_inspect(op: ConvOperator, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import viz

    fig = plt.figure(figsize=(11, 5.5))
    panels: Any = fig.subfigures(1, 2, width_ratios=[1.1, 1])
    left, right = panels[0], panels[1]
    viz.spy(op, ax=left.subplots())
    nd = op.geometry.ndim
    centre = tuple(s // 2 for s in op.output_shape)
    if nd <= 2:
        viz.footprint(op, output_index=centre, fig=right)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--plot {path}: cannot write it ({exc})") from None
    plt.close(fig)


def _deblur(args: argparse.Namespace) -> int:
    from . import deconvolve

    psf = parse_psf(args.psf)  # option values first, then files
    image = read_image(Path(args.image))
    op = ConvOperator(psf, image.shape, padding="same", padding_mode=args.padding_mode)
    truth = read_image(Path(args.truth), "--truth") if args.truth else None
    if args.simulate:
        truth = image
        rng = np.random.default_rng(args.seed)
        image = op @ truth + args.noise * rng.standard_normal(truth.shape)
        write_image(Path(args.output).with_name(Path(args.output).stem + "-blurred.png"), image)
    if truth is not None and truth.shape != image.shape:
        raise UsageError(f"--truth has shape {truth.shape} but IMAGE has {image.shape}")
    # With a known noise level, stop on the discrepancy principle: ||W x - y|| ~ noise.
    btol = 1e-6
    if args.noise > 0:
        btol = 1.05 * args.noise * math.sqrt(image.size) / float(np.linalg.norm(image))
    try:
        import tqdm  # noqa: F401

        progress = not args.quiet
    except ImportError:
        progress = False
    res = deconvolve(image, op, method=args.method, damp=args.damp, atol=0.0 if args.noise
                     else 1e-6, btol=btol, maxiter=args.maxiter, progress=progress)
    out = write_image(Path(args.output), res.x)
    print(f"{res.method}: {res.iterations} iterations, {res.stop_reason}")
    print(f"residual ||W x - y|| = {res.residual_norm:.4g}; restored image written to {out}")
    if truth is not None:
        print(f"PSNR: blurred {psnr(truth, image):.2f} dB -> restored "
              f"{psnr(truth, res.x):.2f} dB")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import deconvolve
    from .__main__ import demo as chapter
    from .data import phantom

    chapter()
    print("\n== Deblurring the built-in phantom ==\n")
    truth = phantom(args.size)
    psf = parse_psf("gaussian:7:1.5")
    op = ConvOperator(psf, truth.shape, padding="same", padding_mode="replicate")
    rng = np.random.default_rng(0)
    noise = 1e-3
    blurred = op @ truth + noise * rng.standard_normal(truth.shape)
    print(op)
    btol = 1.05 * noise * math.sqrt(truth.size) / float(np.linalg.norm(blurred))
    res = deconvolve(blurred, op, method="lsmr", atol=0.0, btol=btol, maxiter=500)
    print(f"lsmr: {res.iterations} iterations ({res.stop_reason}); PSNR blurred "
          f"{psnr(truth, blurred):.2f} dB -> restored {psnr(truth, res.x):.2f} dB")
    out = Path(args.out)
    written = [write_image(out / f"{name}.png", img) for name, img in
               (("phantom", truth), ("blurred", blurred), ("restored", res.x))]
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``convmat`` command."""
    parser = _Parser(prog="convmat", description="Exact sparse matrices of N-d convolutions.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    demo = sub.add_parser("demo", help="the chapter's matrices and a deblurred phantom")
    demo.add_argument("--out", default="convmat-demo", help="folder for the images")
    demo.add_argument("--size", type=int, default=128, help="phantom size (default 128)")

    ins = sub.add_parser("inspect", help="geometry, nnz and bytes of a convolution matrix")
    ins.add_argument("--input", required=True, help="input shape, e.g. 3x64x64")
    ins.add_argument("--kernel", required=True, help="weight shape, e.g. 10x3x4x4")
    ins.add_argument("--stride", default="1")
    ins.add_argument("--padding", default="0", help="1 | 1,2 | 1:2,0:1 | same | valid")
    ins.add_argument("--dilation", default="1")
    ins.add_argument("--groups", type=int, default=1)
    ins.add_argument("--padding-mode", default="zeros",
                     choices=["zeros", "reflect", "replicate", "circular"])
    ins.add_argument("--transposed", action="store_true",
                     help="the transposed convolution (weight C_in x C_out/groups x kernel)")
    ins.add_argument("--output-padding", default="0")
    ins.add_argument("--dtype", default="float64",
                     choices=["float32", "float64", "complex64", "complex128"])
    ins.add_argument("--dense", action="store_true", help="print the dense matrix")
    ins.add_argument("--dense-limit", type=int, default=64)
    ins.add_argument("--plot", metavar="FILE.png", help="save sparsity and footprint plots")

    deb = sub.add_parser("deblur", help="restore a blurred image by least squares")
    deb.add_argument("image", help="blurred image (PNG or NPY)")
    deb.add_argument("--psf", required=True, help="gaussian:SIZE:SIGMA | box:SIZE | FILE.npy")
    deb.add_argument("--noise", type=float, default=0.0,
                     help="noise std of the image: stop when the residual reaches it")
    deb.add_argument("--method", default="lsmr", choices=["lsqr", "lsmr", "cgls"])
    deb.add_argument("--damp", type=float, default=0.0)
    deb.add_argument("--maxiter", type=int, default=500)
    deb.add_argument("--padding-mode", default="replicate",
                     choices=["zeros", "reflect", "replicate", "circular"])
    deb.add_argument("--truth", help="ground-truth image: print the PSNR")
    deb.add_argument("--simulate", action="store_true",
                     help="IMAGE is sharp: blur it with the PSF and --noise first")
    deb.add_argument("--seed", type=int, default=0)
    deb.add_argument("--quiet", action="store_true", help="no progress bar")
    deb.add_argument("-o", "--output", required=True, help="restored image (PNG or NPY)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``convmat`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "demo"
    if args.command is None:
        args.out, args.size = "convmat-demo", 128
    try:
        return {"demo": _demo, "inspect": _inspect, "deblur": _deblur}[command](args)
    except (UsageError, ValueError, TypeError, MemoryError) as exc:
        print(f"convmat {command}: error: {exc}", file=sys.stderr)
        return 2
