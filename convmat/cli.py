"""The ``convmat`` command: ``demo``, ``inspect`` and ``deblur``.

A leaf of the package (only ``convmat.__main__`` imports it). Every option is checked before
any work is done. A bad option value, an unreadable input, an unwritable output, or arguments
the library refuses (``ValueError`` and ``TypeError`` from the geometry's validation,
:class:`~convmat.ConvMatrixTooLarge` from its memory guard) end the command with exit status
2 and one line on standard error that names the option, the rule and the value. Any other
exception is a bug in convmat and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import (
    ConvMatrixTooLarge,
    ConvOperator,
    conv_geometry,
    conv_matrix,
    conv_transpose_geometry,
    conv_transpose_matrix,
    deconvolve,
)
from .backend import format_bytes
from .data import phantom
from .guard import check_memory
from .metrics import psnr, ssim
from .regularization import RULES, estimate_noise

__all__ = [
    "UsageError",
    "build_parser",
    "main",
    "parse_padding",
    "parse_psf",
    "parse_shape",
    "read_image",
    "write_image",
]

#: Extensions of the images ``deblur -o`` writes.
IMAGE_SUFFIXES = (".png", ".npy")
#: Extensions of the plots ``inspect --plot`` writes (formats matplotlib's Agg writes itself).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
#: Largest ``demo --size``: the phantom, its blur and the solver vectors stay small.
MAX_DEMO_SIZE = 4096
#: Largest ``--dense-limit``: a dense matrix of at most 1024 x 1024 entries is printed.
MAX_DENSE_LIMIT = 1024
#: Largest SIZE of a ``gaussian:`` or ``box:`` PSF.
MAX_PSF_SIZE = 1024
PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


class UsageError(ValueError):
    """A bad option value, an unreadable input or an unwritable output: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def _one_line(message: object) -> str:
    return " ".join(str(message).splitlines())


@contextmanager
def _refused(*errors: type[Exception]) -> Iterator[None]:
    """Turn the library's refusal of the user's values (only ``errors``) into a usage error."""
    try:
        yield
    except errors as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- option values
def _int_option(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an int in ``[low, high]`` (no upper bound when ``high`` is None)."""
    rule = f">= {low}" if high is None else f"between {low} and {high}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int {rule}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an int {rule}, got {value}")
        return value

    return convert


def _nonnegative_float(text: str) -> float:
    """An argparse ``type``: a finite float >= 0 (no NaN, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _weight_option(text: str) -> float | str:
    """An argparse ``type`` for ``--damp`` / ``--lam``: a number >= 0 or ``auto:RULE``."""
    if text.startswith("auto:"):
        rule = text[len("auto:"):]
        if rule not in RULES:
            raise argparse.ArgumentTypeError(
                f"must be a number >= 0 or auto:{'|'.join(RULES)}, got {text!r}")
        return rule
    return _nonnegative_float(text)


def _noise_option(text: str) -> float | str:
    """An argparse ``type`` for ``--noise``: a number >= 0 or ``estimate``."""
    return "estimate" if text == "estimate" else _nonnegative_float(text)


def _bounds_option(text: str) -> tuple[float | None, float | None]:
    """An argparse ``type`` for ``--bounds LO:HI`` (a side left empty is unbounded)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be LO:HI (e.g. 0: or 0:1), got {text!r}")
    out: list[float | None] = []
    for part in parts:
        if not part.strip():
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be LO:HI with numbers (e.g. 0: or 0:1), got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be LO:HI with finite numbers, got {text!r}")
        out.append(value)
    lo, hi = out
    if lo is not None and hi is not None and lo >= hi:
        raise argparse.ArgumentTypeError(f"LO must be < HI, got {text!r}")
    return lo, hi


def _scores(truth: np.ndarray, img: np.ndarray) -> str:
    """``PSNR .. dB, SSIM ..`` of ``img`` against ``truth`` (scikit-image's)."""
    try:
        return f"PSNR {psnr(truth, img):.2f} dB, SSIM {ssim(truth, img):.3f}"
    except ImportError:
        return "PSNR/SSIM need scikit-image (pip install scikit-image)"


def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """Parse a shape written with ``x`` between the sizes.

    Parameters
    ----------
    text : str
        The sizes, e.g. ``'3x64x64'``.
    what : str
        The option's name, for the error message.

    Returns
    -------
    tuple of int

    Raises
    ------
    UsageError
        If a size is not an int, or not positive.

    Examples
    --------
    >>> parse_shape("3x64x64", "--input")
    (3, 64, 64)
    """
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a shape like 3x64x64") from None
    if any(s <= 0 for s in shape):
        raise UsageError(f"{what} {text!r} must have positive sizes")
    return shape


def _ints(text: str, what: str) -> int | tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"{what} {text!r} must be an int or comma-separated ints") from None
    return values[0] if len(values) == 1 else values


def parse_padding(text: str) -> Any:
    """Parse ``--padding``: one int, one per axis, ``lo:hi`` per axis, ``same`` or ``valid``.

    Parameters
    ----------
    text : str
        ``'1'``, ``'1,2'``, ``'1:2,0:1'``, ``'same'`` or ``'valid'``.

    Returns
    -------
    int, tuple of int, tuple of (int, int) or str
        The ``padding`` argument of :func:`convmat.conv_geometry`, which checks the values.

    Raises
    ------
    UsageError
        If the text has none of these forms.

    Examples
    --------
    >>> parse_padding("1:2,0:1"), parse_padding("1,2"), parse_padding("same")
    (((1, 2), (0, 1)), (1, 2), 'same')
    """
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
    """Parse ``--psf``: ``gaussian:SIZE:SIGMA``, ``box:SIZE`` or a ``.npy`` file.

    Parameters
    ----------
    text : str
        The PSF: a ``SIZE x SIZE`` Gaussian of standard deviation ``SIGMA`` pixels, a
        ``SIZE x SIZE`` box, or a file holding a real 2-D array.

    Returns
    -------
    numpy.ndarray
        The 2-D float64 PSF, normalised to sum 1.

    Raises
    ------
    UsageError
        If the text has none of these forms, SIZE is not in ``[1, MAX_PSF_SIZE]``, SIGMA is
        not a finite number > 0, the file cannot be read or does not hold a real, finite 2-D
        array, or the PSF does not have a finite, non-zero sum.

    Examples
    --------
    >>> parse_psf("box:2")
    array([[0.25, 0.25],
           [0.25, 0.25]])
    """
    if text.lower().endswith(".npy"):
        psf = np.asarray(_load_array(Path(text), "--psf"))
        _check_real(psf, "--psf", text)
        if psf.ndim != 2:
            raise UsageError(f"--psf {text}: expected a 2-D array, got shape {psf.shape}")
        psf = psf.astype(np.float64)
        _check_finite(psf, "--psf", text)
    else:
        psf = _psf_formula(text)
    with np.errstate(over="ignore", invalid="ignore"):  # an inf or NaN sum is refused below
        total = float(psf.sum())
    if not math.isfinite(total) or total == 0:
        raise UsageError(f"--psf {text}: the PSF must have a finite, non-zero sum, got {total}")
    return psf / total


def _psf_formula(text: str) -> np.ndarray:
    """The unnormalised PSF of ``gaussian:SIZE:SIGMA`` or ``box:SIZE``."""
    kind, *params = text.split(":")
    known = {"gaussian": 2, "box": 1}.get(kind) == len(params)
    size: int | None = None
    sigma: float | None = None
    try:
        size = int(params[0]) if known else None
        sigma = float(params[1]) if known and kind == "gaussian" else None
    except ValueError:
        size = None
    if size is None:
        raise UsageError(f"--psf {text!r} must be gaussian:SIZE:SIGMA, box:SIZE or a .npy "
                         "file")
    if not 1 <= size <= MAX_PSF_SIZE:
        raise UsageError(f"--psf {text!r}: SIZE must be between 1 and {MAX_PSF_SIZE}, got "
                         f"{size}")
    if sigma is None:
        return np.ones((size, size))
    if not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"--psf {text!r}: SIGMA must be a finite number > 0, got {sigma}")
    with np.errstate(over="ignore"):  # far samples of a narrow Gaussian: exp(-inf) = 0
        g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    return np.outer(g, g)


# --------------------------------------------------------------------------- files
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
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise UsageError(f"{what} {path}: cannot read it ({_one_line(exc)})") from None


def _check_real(array: np.ndarray, what: str, path: object) -> None:
    """Refuse a complex or non-numeric array read from ``path``."""
    if array.dtype.kind == "c":
        raise UsageError(f"{what} {path}: complex values (dtype {array.dtype}); give a real "
                         "array")
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{what} {path}: dtype {array.dtype} is not a real number type")


def _check_finite(array: np.ndarray, what: str, path: object) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise UsageError(f"{what} {path}: contains NaN or inf ({bad} of {array.size} values)")


def read_image(path: Path, what: str = "IMAGE") -> np.ndarray:
    """Read a grayscale image: float64 in ``[0, 1]`` for unsigned ints, else as stored.

    Parameters
    ----------
    path : pathlib.Path
        A ``.npy`` file holding a real 2-D array, or an image matplotlib reads (PNG; other
        formats through Pillow). RGB and RGBA images become their luminance.
    what : str
        The option's name, for the error messages.

    Returns
    -------
    numpy.ndarray
        A 2-D float64 array.

    Raises
    ------
    UsageError
        If the file cannot be read, is complex or not numeric, is a ``.npy`` array that is
        not 2-D, is an image that is neither 2-D nor RGB(A), or contains NaN or inf.
    """
    img = np.asarray(_load_array(path, what))
    _check_real(img, what, path)
    if path.suffix.lower() == ".npy" and img.ndim != 2:
        raise UsageError(f"{what} {path}: a .npy image must be a 2-D array, got shape "
                         f"{img.shape}")
    if img.dtype.kind == "u":
        img = img / np.iinfo(img.dtype).max
    img = img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] in (3, 4):  # RGB(A) -> luminance
        img = img[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    if img.ndim != 2:
        raise UsageError(f"{what} {path}: expected a 2-D grayscale or RGB(A) image, got shape "
                         f"{img.shape}")
    _check_finite(img, what, path)
    return img


def _check_output(path: Path, what: str, suffixes: Sequence[str]) -> None:
    """Refuse, before any work, an output file that could not be written.

    The extension must be one of ``suffixes``, the folder must exist (it is not created),
    and the folder (and the file, if it exists) must be writable.
    """
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{what} {path}: the extension must be one of {', '.join(suffixes)}, "
                         f"got {path.suffix or 'none'!r}")
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist (it is not created)"
        raise UsageError(f"{what} {path}: {folder} {problem}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path}: not writable")


def _check_folder(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder that could be neither created nor written into."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {folder}: {existing} is not writable")


def write_image(path: Path, img: np.ndarray, what: str = "-o") -> Path:
    """Write ``img`` as PNG (clipped to [0, 1]) or NPY; without matplotlib PNG becomes NPY.

    Parameters
    ----------
    path : pathlib.Path
        A ``.npy`` or ``.png`` file in an existing folder.
    img : numpy.ndarray
        The 2-D image.
    what : str
        The option's name, for the error message.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    UsageError
        If the file cannot be written (any ``OSError``).
    """
    try:
        if path.suffix.lower() != ".npy":
            try:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.image as mpimg
            except ImportError:
                path = path.with_suffix(".npy")
            else:
                mpimg.imsave(path, np.clip(img, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
                return path
        np.save(path, img)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write it ({_one_line(exc)})") from None
    return path


# --------------------------------------------------------------------------- commands
def _inspect(args: argparse.Namespace) -> int:
    input_shape = parse_shape(args.input, "--input")
    kernel = parse_shape(args.kernel, "--kernel")
    options = dict(stride=_ints(args.stride, "--stride"), padding=parse_padding(args.padding),
                   dilation=_ints(args.dilation, "--dilation"), groups=args.groups,
                   padding_mode=args.padding_mode)
    if args.transposed:
        options["output_padding"] = _ints(args.output_padding, "--output-padding")
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        _check_output(plot, "--plot", PLOT_SUFFIXES)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(f"--plot {plot}: plotting needs matplotlib (pip install "
                             "matplotlib)") from None
    with _refused(ValueError, TypeError, ConvMatrixTooLarge):
        make = conv_transpose_geometry if args.transposed else conv_geometry
        geometry = make(kernel, input_shape, dtype=args.dtype, **options)
        # only matrices this machine could build are described (the refusal gives the bytes)
        check_memory(geometry, None)
        rows, cols = geometry.shape
        report = [
            geometry.describe(),
            f"output shape: {geometry.output_shape}",
            f"matrix: {rows} x {cols}, nnz={geometry.nnz:,}, density={geometry.density:.4g}, "
            f"dtype={geometry.dtype}, index dtype={geometry.index_dtype}",
            f"bytes: {geometry.nbytes:,} ({format_bytes(geometry.nbytes)}); peak while "
            f"building: {geometry.peak_bytes:,} ({format_bytes(geometry.peak_bytes)})",
        ]
    if args.dense and max(rows, cols) > args.dense_limit:
        raise UsageError(f"--dense: the matrix is {rows} x {cols}, larger than "
                         f"--dense-limit {args.dense_limit}")
    if args.dense or plot is not None:
        with _refused(ConvMatrixTooLarge):
            weight = np.arange(1, math.prod(kernel) + 1, dtype=args.dtype).reshape(kernel)
            make_op = ConvOperator.transposed if args.transposed else ConvOperator
            op = make_op(weight, input_shape, **options)
    print("\n".join(report))
    if args.dense:
        with np.printoptions(linewidth=200, threshold=args.dense_limit**2):
            print("W (weights 1, 2, 3, ... in kernel order):")
            print(op.matrix.toarray())
    if plot is not None:
        _plot_inspect(op, plot)
        print(f"plot written to {plot}")
    return 0


def _agg_pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_inspect(op: ConvOperator, path: Path) -> None:
    plt = _agg_pyplot()

    from . import viz

    fig = plt.figure(figsize=(11, 5.5))
    try:
        panels: Any = fig.subfigures(1, 2, width_ratios=[1.1, 1])
        left, right = panels[0], panels[1]
        viz.spy(op, ax=left.subplots())
        centre = tuple(s // 2 for s in op.output_shape)
        if op.geometry.ndim <= 2:
            viz.footprint(op, output_index=centre, fig=right)
    except BaseException:
        plt.close(fig)
        raise
    _save(fig, path, "--plot")


def _deblur(args: argparse.Namespace) -> int:
    output = Path(args.output)  # the outputs and option values first, then the input files
    _check_output(output, "-o", IMAGE_SUFFIXES)
    blurred_path = output.with_name(f"{output.stem}-blurred.png")
    if args.simulate:
        _check_output(blurred_path, "-o", IMAGE_SUFFIXES)
    psf = parse_psf(args.psf)
    image = read_image(Path(args.image))
    truth = read_image(Path(args.truth), "--truth") if args.truth else None
    if truth is not None and truth.shape != image.shape:
        raise UsageError(f"--truth has shape {truth.shape} but IMAGE has {image.shape}")
    options = dict(padding="same", padding_mode=args.padding_mode)
    with _refused(ValueError, TypeError):
        conv_geometry(psf, image.shape, **options)
    with _refused(ConvMatrixTooLarge):
        op = ConvOperator(psf, image.shape, **options)
    if args.simulate:
        if args.noise == "estimate":
            raise UsageError("--simulate needs --noise SIGMA: the noise it adds")
        truth = image
        rng = np.random.default_rng(args.seed)
        image = op @ truth + args.noise * rng.standard_normal(truth.shape)
        write_image(blurred_path, image)
    if args.lam is not None and args.regularizer == "none":
        raise UsageError("--lam weighs a regularizer: add --regularizer gradient")
    sigma = args.noise
    if sigma == "estimate":
        sigma = estimate_noise(image)
        print(f"noise level estimated from the image: sigma = {sigma:.3g} (wavelet MAD); "
              "--noise SIGMA sets it")
    lam = 1.0 if args.lam is None else args.lam
    regularizer = None if args.regularizer == "none" else args.regularizer
    solve: dict[str, Any] = dict(method=args.method, damp=args.damp, regularizer=regularizer,
                                 lam=lam, maxiter=args.maxiter)
    if args.bounds is not None:
        solve["bounds"] = args.bounds
    if isinstance(args.damp, str) or isinstance(lam, str):  # a rule chooses the weight
        solve.update(noise_level=sigma)
    elif sigma > 0:  # stop on the discrepancy principle: ||W x - y|| ~ 1.05 sigma sqrt(m)
        solve.update(stop="discrepancy", noise_level=sigma, tau=1.05)
    try:
        import tqdm  # noqa: F401

        progress = not args.quiet
    except ImportError:
        progress = False
    res = deconvolve(image, op, progress=progress, **solve)
    out = write_image(output, res.x)
    if res.choice is not None:
        c = res.choice
        print(f"{c.parameter} = {c.value:.4g} by {c.rule} ({c.solves} solves): {c.reason}")
    print(f"{res.method}: {res.iterations} iterations, {res.stop_reason}")
    print(f"residual ||W x - y|| = {res.residual_norm:.4g}; restored image written to {out}")
    if truth is not None:
        print(f"blurred: {_scores(truth, image)} -> restored: {_scores(truth, res.x)}")
    return 0


def _chapter() -> None:
    """Print the chapter's matrices and a multi-channel summary."""
    K = np.array([[0.0, 1.0], [2.0, 3.0]])
    X = np.arange(9.0).reshape(3, 3)

    print("== The transposed-convolution chapter, as sparse matrices ==\n")
    W = conv_matrix(K, (3, 3))
    print("Kernel K:\n", K, sep="")
    print(f"\nW = conv_matrix(K, (3, 3)): {W.shape[0]}x{W.shape[1]} CSR, nnz={W.nnz}")
    print(W.toarray())
    print("\nW @ X.ravel() reshaped (the convolution of X = arange(9).reshape(3, 3)):")
    print((W @ X.ravel()).reshape(2, 2))
    Y = np.array([[0.0, 1.0], [2.0, 3.0]])
    print("\nW.T @ Y.ravel() reshaped: the transposed convolution trans_conv(Y, K):")
    print((W.T @ Y.ravel()).reshape(3, 3))
    Wt = conv_transpose_matrix(K, (2, 2), stride=2)
    print("\nWith stride 2 (conv_transpose_matrix(K, (2, 2), stride=2) @ Y.ravel()):")
    print((Wt @ Y.ravel()).reshape(4, 4))

    print("\n== A multi-channel strided convolution and its transpose ==\n")
    rng = np.random.default_rng(0)
    op = ConvOperator(rng.standard_normal((10, 3, 4, 4)), (3, 64, 64), stride=2, padding=1)
    print(op)
    print(op.T)
    x = rng.uniform(size=op.input_shape)
    y = op @ x
    print(f"x {x.shape} -> W @ x {y.shape} -> W.T @ (W @ x) {(op.T @ y).shape}")


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_folder(out, "--out")
    psf = parse_psf("gaussian:7:1.5")
    with _refused(ConvMatrixTooLarge):
        op = ConvOperator(psf, (args.size, args.size), padding="same", padding_mode="symmetric")
    truth = phantom(args.size)
    with np.printoptions(linewidth=100):
        _chapter()
    print("\n== Deblurring the built-in phantom ==\n")
    rng = np.random.default_rng(0)
    noise = 1e-3
    blurred = op @ truth + noise * rng.standard_normal(truth.shape)
    print(op)
    res = deconvolve(blurred, op, method="lsmr", damp="discrepancy", noise_level=noise,
                     maxiter=500)
    c = res.choice
    print(f"damp = {c.value:.3g} by the discrepancy principle ({c.solves} lsmr solves): "
          f"{c.reason}")
    print(f"lsmr: {res.iterations} iterations at that damp; blurred: {_scores(truth, blurred)}"
          f" -> restored: {_scores(truth, res.x)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it ({_one_line(exc)})") from None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        written = [write_image(out / f"{name}.npy", img, "--out") for name, img in
                   (("phantom", truth), ("blurred", blurred), ("restored", res.x))]
        print("figures need matplotlib (pip install convmat[viz]); arrays written: "
              + ", ".join(str(p) for p in written))
        return 0
    written = [_demo_figure(out / "deblur.png", truth, blurred, res),
               _chapter_figure(out / "chapter.png")]
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _save(fig: Any, path: Path, what: str = "--out") -> Path:
    """Write ``fig`` to ``path`` (a one-line usage error if it cannot), then close it."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write it ({_one_line(exc)})") from None
    finally:
        plt.close(fig)
    return path


def _demo_figure(path: Path, truth: np.ndarray, blurred: np.ndarray, res: Any) -> Path:
    """Blurred | restored | truth, scored in the titles, and the curve the damping came from."""
    plt = _agg_pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.15]})
    for ax, (name, img) in zip(axes, (("blurred", blurred), ("restored", res.x),
                                      ("truth", truth)), strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name if name == "truth" else f"{name}\n{_scores(truth, img)}",
                     fontsize=10)
        ax.axis("off")
    c = res.choice
    ax = axes[3]
    ax.loglog(c.residual_norms, c.penalty_norms, "o-", color="0.5", label="damps tried")
    k = list(c.values).index(c.value)
    ax.loglog(c.residual_norms[k], c.penalty_norms[k], "*", ms=14, color="C3",
              label=f"chosen: damp = {c.value:.2g}")
    ax.axvline(c.noise_level * np.sqrt(truth.size), ls="--", color="C0",
               label="noise level sigma sqrt(m)")
    ax.set(xlabel="residual ||W x - y||", ylabel="||x||",
           title="the discrepancy principle's search")
    ax.legend(fontsize=8)
    fig.suptitle("Deblurring a 7x7 Gaussian blur (noise 1e-3, symmetric boundary) with convmat")
    return _save(fig, path)


def _chapter_figure(path: Path) -> Path:
    """The chapter's matrices as heat maps: W of K on 3x3, and the stride-2 transposed one."""
    plt = _agg_pyplot()

    from . import viz

    K = np.array([[0.0, 1.0], [2.0, 3.0]])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained",
                             gridspec_kw={"width_ratios": [9, 5]})
    viz.heatmap(ConvOperator(K, (3, 3)), ax=axes[0])
    axes[0].set_title("W = conv_matrix(K, (3, 3)): W @ x is the convolution, W.T @ y the "
                      "transposed one", fontsize=9)
    viz.heatmap(ConvOperator.transposed(K, (2, 2), stride=2), ax=axes[1])
    axes[1].set_title("conv_transpose_matrix(K, (2, 2), stride=2)", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``convmat`` command (numeric options checked here)."""
    parser = _Parser(prog="convmat", description="Exact sparse matrices of N-d convolutions.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser,
                                help="what to do (default: demo)")

    demo = sub.add_parser("demo", help="the chapter's matrices and a deblurred phantom")
    demo.add_argument("--out", default="convmat-demo",
                      help="folder for the images, created if missing (default convmat-demo)")
    demo.add_argument("--size", type=_int_option(2, MAX_DEMO_SIZE), default=128,
                      help=f"phantom size, 2 to {MAX_DEMO_SIZE} (default 128)")

    ins = sub.add_parser("inspect", help="geometry, nnz and bytes of a convolution matrix")
    ins.add_argument("--input", required=True, help="input shape, e.g. 3x64x64")
    ins.add_argument("--kernel", required=True, help="weight shape, e.g. 10x3x4x4")
    ins.add_argument("--stride", default="1", help="N or N,M,... per axis (default 1)")
    ins.add_argument("--padding", default="0",
                     help="N | N,M,... per axis | lo:hi,lo:hi,... per axis | same | valid "
                          "(default 0)")
    ins.add_argument("--dilation", default="1", help="N or N,M,... per axis (default 1)")
    ins.add_argument("--groups", type=_int_option(1), default=1,
                     help="blocked connections from input to output channels (default 1)")
    ins.add_argument("--padding-mode", default="zeros", choices=PADDING_MODES,
                     help="how the padded border is filled (default zeros)")
    ins.add_argument("--transposed", action="store_true",
                     help="the transposed convolution (weight C_in x C_out/groups x kernel)")
    ins.add_argument("--output-padding", default="0",
                     help="with --transposed: N or N,M,... per axis (default 0)")
    ins.add_argument("--dtype", default="float64",
                     choices=["float32", "float64", "complex64", "complex128"],
                     help="dtype of the matrix (default float64)")
    ins.add_argument("--dense", action="store_true", help="print the dense matrix")
    ins.add_argument("--dense-limit", type=_int_option(1, MAX_DENSE_LIMIT), default=64,
                     help=f"largest number of rows or columns --dense prints, 1 to "
                          f"{MAX_DENSE_LIMIT} (default 64)")
    ins.add_argument("--plot", metavar="FILE.png",
                     help="save sparsity and footprint plots (.png, .pdf or .svg) into an "
                          "existing folder")

    deb = sub.add_parser("deblur", help="restore a blurred image by least squares")
    deb.add_argument("image", help="blurred image (PNG or a 2-D real NPY)")
    deb.add_argument("--psf", required=True, help="gaussian:SIZE:SIGMA | box:SIZE | FILE.npy")
    deb.add_argument("--noise", type=_noise_option, default="estimate",
                     help="noise std of the image, >= 0, or 'estimate' (default: estimated "
                          "from the image): the solve stops when the residual reaches it, "
                          "or a --damp/--lam rule uses it")
    deb.add_argument("--method", default="lsmr", choices=["lsqr", "lsmr", "cgls"],
                     help="least-squares solver (default lsmr; with --bounds a projected "
                          "Barzilai-Borwein solver runs)")
    deb.add_argument("--damp", type=_weight_option, default=0.0,
                     help="Tikhonov damping, >= 0, or auto:discrepancy|auto:gcv|auto:rgcv|"
                          "auto:lcurve to choose it from the data (default 0)")
    deb.add_argument("--regularizer", default="none", choices=["none", "gradient"],
                     help="penalise lam^2 ||D x||^2, D the image gradient (default none)")
    deb.add_argument("--lam", type=_weight_option, default=None,
                     help="weight of --regularizer, >= 0, or auto:RULE as for --damp "
                          "(default 1)")
    deb.add_argument("--bounds", type=_bounds_option, default=None, metavar="LO:HI",
                     help="box constraint on the pixels, e.g. 0: (non-negative) or 0:1")
    deb.add_argument("--maxiter", type=_int_option(1), default=500,
                     help="most iterations (per solve), >= 1 (default 500)")
    deb.add_argument("--mode", "--padding-mode", dest="padding_mode", default="symmetric",
                     choices=PADDING_MODES,
                     help="the boundary condition of the blur (default symmetric: the scene "
                          "mirrored past the frame, little ringing)")
    source = deb.add_mutually_exclusive_group()
    source.add_argument("--truth", help="ground-truth image: print the PSNR")
    source.add_argument("--simulate", action="store_true",
                        help="IMAGE is sharp (and the truth): blur it with the PSF and --noise "
                             "first, writing OUTPUT-blurred.png")
    deb.add_argument("--seed", type=_int_option(0), default=0,
                     help="seed of the --simulate noise, >= 0 (default 0)")
    deb.add_argument("--quiet", action="store_true", help="no progress bar")
    deb.add_argument("-o", "--output", required=True,
                     help="restored image (.png or .npy) in an existing folder")
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo, "inspect": _inspect, "deblur": _deblur,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convmat`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``); none runs ``demo``.

    Returns
    -------
    int
        The exit status: 0; 2 after one line on standard error for a usage error; 1 when
        standard output is a pipe closed early.

    Raises
    ------
    SystemExit
        With status 2 (after one line on standard error) for options argparse refuses,
        and with status 0 after ``--help``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"])
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"convmat {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout has gone (``convmat inspect ... | head``): stop quietly, with
        # stdout on devnull so that Python's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
