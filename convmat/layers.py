"""The linear layers around convolutions, as exact operators with PyTorch's semantics.

Every constructor takes ``input_shape = (C, *spatial)`` (any number of spatial axes) and
returns a :class:`~convmat.MatrixOperator` whose ``input_shape`` and ``output_shape`` are
set, so ``op @ x`` applies it to one input ``(C, *spatial)`` or a batch
``(N, C, *spatial)``, ``op.T`` is its adjoint and ``op.matrix`` its canonical CSR.

Two generators write the matrices:

* the **convolution generator** (:func:`convmat.conv_matrix`,
  :func:`convmat.conv_transpose_matrix`) for the layers that are convolutions: average and
  sum pooling (a ones kernel, ``groups=C``, then a row scaling by the divisor), padding (a
  1x1 ones kernel with ``padding_mode``, so every padding mode of the registry is reused)
  and nearest upsampling by integer factors (a transposed convolution with a ones kernel);
* the **separable generator** (:mod:`convmat.separable`) for the layers that act on each
  axis independently but are not convolutions: adaptive pooling (variable windows),
  interpolation (per-position weights), crops (selections).

Pixel (un)shuffle are permutations and channel affine maps (eval-mode batch norm) diagonal
matrices, each written directly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .algebra import MatrixOperator
from .axes import PADDING_MODES as PADDING_REGISTRY
from .backend import array_namespace, csr_container, memory_limit
from .csr import check_bytes, csr_bytes, guarded_product
from .geometry import PADDING_MODES
from .matrix import conv_matrix, conv_transpose_matrix
from .separable import kron_bytes, kron_canonical, operator_dtype

__all__ = [
    "INTERPOLATE_MODES",
    "PAD_MODES",
    "adaptive_avg_pool_operator",
    "avg_pool_operator",
    "batch_norm_operator",
    "channel_affine_operator",
    "crop_operator",
    "pad_operator",
    "pixel_shuffle_operator",
    "pixel_unshuffle_operator",
    "sum_pool_operator",
    "upsample_operator",
]

#: ``F.pad`` modes and the ``padding_mode`` of the convolution that implements each (the
#: convolution's registry: a mode it gains is a mode ``pad_operator`` gains).
PAD_MODES: dict[str, str] = {"constant": "zeros",
                             **{m: m for m in PADDING_MODES if m != "zeros"}}
#: ``F.interpolate`` modes and the number of spatial axes each needs (None: any).
INTERPOLATE_MODES: dict[str, int | None] = {
    "nearest": None, "nearest-exact": None, "linear": 1, "bilinear": 2, "trilinear": 3}
#: PyTorch's CPU kernel for 2-D nearest modes switches to ``nearest_idx`` (float32 scale,
#: exact copies for output == input and output == 2*input) when the output's two sizes sum
#: to at most this (``_use_vectorized_kernel_cond_2d`` in ``UpSampleKernel.cpp``).
TORCH_NEAREST_2D_SMALL = 128
#: Rows of the pooling matrix scaled per step (bounds the temporaries of the scaling).
SCALE_BLOCK = 1 << 18
#: Bytes per output position of the per-axis tables (indices and weights) of the separable
#: layers, counted by the memory guard before they are built.
TABLE_BYTES_PER_ROW = 96


# --------------------------------------------------------------------------- arguments
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _check_input_shape(input_shape: Any, min_spatial: int = 1) -> tuple[int, tuple[int, ...]]:
    """``(C, spatial)`` of ``input_shape = (C, *spatial)``, positive ints."""
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise TypeError(f"input_shape must be a tuple of ints (C, *spatial), got "
                        f"{input_shape!r} ({type(input_shape).__name__})")
    for i, s in enumerate(input_shape):
        if not _is_int(s):
            raise TypeError(f"input_shape[{i}] must be an int, got {s!r} ({type(s).__name__})")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 1 + min_spatial:
        raise ValueError(f"input_shape={shape} must be (C, *spatial) with {min_spatial} or "
                         "more spatial axes")
    for i, s in enumerate(shape):
        if s < 1:
            raise ValueError(f"input_shape={shape} has a size {s} < 1 at position {i}")
    return shape[0], shape[1:]


def _per_axis(name: str, value: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    """An int, or one int per spatial axis, each ``>= minimum``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(f"{name}={tuple(value)!r} has {len(value)} entries but input_shape "
                             f"has {ndim} spatial axes")
        items = list(value)
    elif _is_int(value):
        items = [value] * ndim
    else:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r} "
                        f"({type(value).__name__})")
    for d, v in enumerate(items):
        if not _is_int(v):
            raise TypeError(f"{name}[{d}] must be an int, got {v!r} ({type(v).__name__})")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} on every axis; axis {d} has "
                             f"{name}={int(v)}")
    return tuple(int(v) for v in items)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def _check_max_bytes(max_bytes: Any) -> None:
    if max_bytes is not None:
        memory_limit(max_bytes)  # TypeError / ValueError naming max_bytes


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------- pooling
def pool_output_size(n: int, k: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size ``(n + 2p - k [+ s - 1]) // s + 1``.

    With ``ceil_mode`` the size rounds up, less one when the last window would start past
    the input and its left padding (``(out - 1) * s >= n + p``).

    Examples
    --------
    >>> pool_output_size(5, 2, 2, 0, False), pool_output_size(5, 2, 2, 0, True)
    (2, 3)
    >>> pool_output_size(4, 3, 3, 1, True)  # the window at 3*2 - 1 = 5 would start past 4 + 1
    2
    """
    out = (n + 2 * padding - k + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def _pool_plan(input_shape: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: Any
               ) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...],
                          tuple[int, ...], tuple[int, ...]]:
    """Validated ``(C, n, k, s, p, out)`` of a pooling layer."""
    c, n = _check_input_shape(input_shape)
    d = len(n)
    k = _per_axis("kernel_size", kernel_size, d, 1)
    s = k if stride is None else _per_axis("stride", stride, d, 1)
    p = _per_axis("padding", padding, d, 0)
    ceil = _flag("ceil_mode", ceil_mode)
    for ax in range(d):
        if p[ax] > k[ax] // 2:
            raise ValueError(f"padding must be at most half of kernel_size (PyTorch's rule); "
                             f"axis {ax} has padding={p[ax]} > kernel_size // 2 = {k[ax] // 2}")
    out = tuple(pool_output_size(*a, ceil) for a in zip(n, k, s, p, strict=True))
    for ax, o in enumerate(out):
        if o < 1:
            raise ValueError(f"axis {ax}: pooling output size {o} < 1 for input size {n[ax]}, "
                             f"kernel_size={k[ax]}, stride={s[ax]}, padding={p[ax]}; the "
                             "kernel must fit the padded input")
    return c, n, k, s, p, out


def _window_sums(c: int, n: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...],
                 p: tuple[int, ...], out: tuple[int, ...], dtype: np.dtype,
                 max_bytes: int | None) -> Any:
    """The sum-pooling matrix: a depthwise convolution with a ones kernel.

    Padding ``(p, hi)`` per axis, ``hi = (out - 1)*s + k - n - p`` (at least 0) so that the
    convolution has the pooling's output size (``ceil_mode`` windows may pass the padding).
    """
    hi = [max(0, (o - 1) * st + kk - nn - pp) for nn, kk, st, pp, o in zip(n, k, s, p, out,
                                                                           strict=True)]
    weight = np.ones((c, 1, *k), dtype=dtype)
    return conv_matrix(weight, (c, *n), stride=s, padding=tuple(zip(p, hi, strict=True)),
                       groups=c, max_bytes=max_bytes)


def _scale_rows(m: Any, scale: np.ndarray) -> None:
    """``m.data *= scale[row % len(scale)]`` in place, block by block of rows."""
    indptr, rows, period = m.indptr, m.shape[0], len(scale)
    r0 = 0
    while r0 < rows:
        r1 = min(rows, r0 + SCALE_BLOCK)
        counts = np.diff(indptr[r0:r1 + 1])
        factor = scale[np.arange(r0, r1) % period]
        m.data[indptr[r0]:indptr[r1]] *= np.repeat(factor, counts)
        r0 = r1


def _divisors(n: int, k: int, s: int, p: int, out: int, include_pad: bool) -> np.ndarray:
    """Per-axis window sizes: clipped to the padded input, or to the input."""
    start = np.arange(out, dtype=np.int64) * s - p
    end = np.minimum(start + k, n + p)
    if include_pad:
        return end - start
    return np.minimum(end, n) - np.maximum(start, 0)


def avg_pool_operator(input_shape: Sequence[int], kernel_size: int | Sequence[int],
                      stride: int | Sequence[int] | None = None,
                      padding: int | Sequence[int] = 0, ceil_mode: bool = False,
                      count_include_pad: bool = True, divisor_override: int | None = None,
                      max_bytes: int | None = None, *, dtype: Any = np.float64
                      ) -> MatrixOperator:
    """Average pooling, ``torch.nn.functional.avg_pool{1,2,3}d``, on any number of axes.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, at least one spatial axis.
    kernel_size : int or tuple of int
        Window size per axis (>= 1).
    stride : int or tuple of int, optional
        Window step per axis (default: ``kernel_size``).
    padding : int or tuple of int
        Implicit zero padding on both sides, at most ``kernel_size // 2`` (PyTorch's rule).
    ceil_mode : bool
        Round the output size up; the last window must start inside the input or its left
        padding.
    count_include_pad : bool
        Divide by the window clipped to the padded input (True) or to the input (False).
    divisor_override : int, optional
        Divide every window by this nonzero int instead.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes (default:
        half of the available memory).
    dtype : dtype
        float32, float64 (default), complex64 or complex128.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *out)``, named ``avg_pool{d}d``.

    Raises
    ------
    TypeError
        A non-int size, a non-bool flag, or an unsupported ``dtype``.
    ValueError
        A size below 1, a negative padding or one above ``kernel_size // 2``, an empty output,
        or ``divisor_override=0``.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    Built by the convolution generator: a depthwise convolution (``groups=C``) with a ones
    kernel and zero padding ``(p, hi)``, ``hi`` chosen so its output size is the pooling's,
    then each row scaled by ``1 / divisor``. Per axis, window ``o`` spans
    ``[o*s - p, min(o*s - p + k, n + p))``; ``out = (n + 2p - k) // s + 1`` (rounded up with
    ``ceil_mode``). The divisor is the product over axes of the window's length, clipped to
    ``[0, n)`` when ``count_include_pad=False``, or ``divisor_override``. Matches PyTorch up
    to rounding (PyTorch divides the window's sum; the matrix holds ``1/divisor``).

    Examples
    --------
    >>> import numpy as np
    >>> op = avg_pool_operator((1, 4), 2, padding=1, count_include_pad=False)
    >>> op
    <avg_pool1d: (1, 4) -> (1, 3); shape=(3, 4), dtype=float64>
    >>> op @ np.array([[1., 2., 3., 4.]])
    array([[1. , 2.5, 4. ]])
    """
    c, n, k, s, p, out = _pool_plan(input_shape, kernel_size, stride, padding, ceil_mode)
    include = _flag("count_include_pad", count_include_pad)
    if divisor_override is not None:
        if not _is_int(divisor_override):
            raise TypeError(f"divisor_override must be an int or None, got "
                            f"{divisor_override!r} ({type(divisor_override).__name__})")
        if divisor_override == 0:
            raise ValueError("divisor_override=0: the divisor must be nonzero")
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    m = _window_sums(c, n, k, s, p, out, out_dtype, max_bytes)
    if divisor_override is not None:
        scale = np.full(1, 1.0 / int(divisor_override))
    else:
        div = np.ones(1, dtype=np.int64)
        for args in zip(n, k, s, p, out, strict=True):
            div = np.multiply.outer(div, _divisors(*args, include)).ravel()
        scale = 1.0 / div
    _scale_rows(m, scale)
    return MatrixOperator._wrap(m, (c, *n), (c, *out), f"avg_pool{len(n)}d")


def sum_pool_operator(input_shape: Sequence[int], kernel_size: int | Sequence[int],
                      stride: int | Sequence[int] | None = None,
                      padding: int | Sequence[int] = 0, ceil_mode: bool = False,
                      max_bytes: int | None = None, *, dtype: Any = np.float64
                      ) -> MatrixOperator:
    """Sum pooling: the windows of :func:`avg_pool_operator`, summed without division.

    Equal to ``avg_pool{1,2,3}d`` with ``divisor_override=1`` (and to ``lp_pool`` with
    ``p=1`` where that has no padding). Arguments as :func:`avg_pool_operator`.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *out)``, named ``sum_pool{d}d``.

    Raises
    ------
    TypeError, ValueError, ConvMatrixTooLarge
        As :func:`avg_pool_operator`.

    Notes
    -----
    The convolution generator's depthwise ones-kernel convolution (see
    :func:`avg_pool_operator`), unscaled.

    Examples
    --------
    >>> import numpy as np
    >>> op = sum_pool_operator((1, 3, 3), 2, stride=1)
    >>> op @ np.arange(9.0).reshape(1, 3, 3)
    array([[[ 8., 12.],
            [20., 24.]]])
    """
    c, n, k, s, p, out = _pool_plan(input_shape, kernel_size, stride, padding, ceil_mode)
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    m = _window_sums(c, n, k, s, p, out, out_dtype, max_bytes)
    return MatrixOperator._wrap(m, (c, *n), (c, *out), f"sum_pool{len(n)}d")


# --------------------------------------------------------------------------- separable layers
def _axis_factor(out: int, n: int, cols: np.ndarray, vals: np.ndarray, per_row: int) -> Any:
    """A canonical CSR ``(out, n)`` with ``per_row`` (column, value) pairs per row.

    Duplicated columns are summed and zeros dropped.
    """
    import scipy.sparse as sp

    rows = np.repeat(np.arange(out, dtype=np.int64), per_row)
    m = sp.coo_array((vals.ravel(), (rows, cols.ravel())), shape=(out, n)).tocsr()
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _guard_tables(out: Sequence[int], max_bytes: int | None, what: str) -> None:
    """Refuse per-axis tables (a few numbers per output position) over the limit."""
    check_bytes(TABLE_BYTES_PER_ROW * sum(out), max_bytes, np, f"the per-axis tables of {what}")


def _separable(factors: list[Any], c: int, n: tuple[int, ...], dtype: np.dtype,
               max_bytes: int | None, name: str) -> MatrixOperator:
    """``I_C (x) factors``, guarded, as an operator ``(C, *n) -> (C, *out)``."""
    factors = [f.astype(dtype) for f in factors]
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in factors]
    nnzs = [int(f.nnz) for f in factors]
    out = tuple(s[0] for s in shapes)
    rows, cols = c * math.prod(out), c * math.prod(n)
    check_bytes(kron_bytes(shapes, nnzs, c, dtype), max_bytes, np,
                f"{name} of shape ({rows:,}, {cols:,}) with {c * math.prod(nnzs):,} entries")
    m = kron_canonical(factors, c, dtype)
    return MatrixOperator._wrap(m, (c, *n), (c, *out), name)


def adaptive_avg_pool_operator(input_shape: Sequence[int],
                               output_size: int | None | Sequence[int | None],
                               max_bytes: int | None = None, *, dtype: Any = np.float64
                               ) -> MatrixOperator:
    """Adaptive average pooling, ``torch.nn.functional.adaptive_avg_pool{1,2,3}d``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, at least one spatial axis.
    output_size : int, None or tuple of int or None
        Output size per axis (>= 1); None keeps that axis' input size.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.
    dtype : dtype
        float32, float64 (default), complex64 or complex128.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *output_size)``, named ``adaptive_avg_pool{d}d``.

    Raises
    ------
    TypeError
        A non-int size or an unsupported ``dtype``.
    ValueError
        A size below 1, or ``output_size`` with another number of axes.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    Not a convolution (window starts and lengths vary): built by the separable generator
    from one averaging matrix per axis. Window ``i`` of an axis of size ``n`` pooled to
    ``out`` spans ``[floor(i*n/out), ceil((i+1)*n/out))``; each entry of the matrix is the
    product over axes of ``1 / window length``. Matches PyTorch up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> op = adaptive_avg_pool_operator((1, 5), 2)
    >>> op.matrix.toarray()
    array([[0.33333333, 0.33333333, 0.33333333, 0.        , 0.        ],
           [0.        , 0.        , 0.33333333, 0.33333333, 0.33333333]])
    """
    c, n = _check_input_shape(input_shape)
    d = len(n)
    if output_size is None or _is_int(output_size):
        sizes: list[Any] = [output_size] * d
    elif isinstance(output_size, Sequence) and not isinstance(output_size, str):
        if len(output_size) != d:
            raise ValueError(f"output_size={tuple(output_size)!r} has {len(output_size)} "
                             f"entries but input_shape has {d} spatial axes")
        sizes = list(output_size)
    else:
        raise TypeError(f"output_size must be an int, None or a tuple of them, got "
                        f"{output_size!r} ({type(output_size).__name__})")
    out = []
    for ax, o in enumerate(sizes):
        if o is None:
            out.append(n[ax])
            continue
        if not _is_int(o):
            raise TypeError(f"output_size[{ax}] must be an int or None, got {o!r} "
                            f"({type(o).__name__})")
        if o < 1:
            raise ValueError(f"output_size must be >= 1 on every axis; axis {ax} has "
                             f"output_size={int(o)}")
        out.append(int(o))
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    name = f"adaptive_avg_pool{d}d"
    _guard_tables([nn + o for nn, o in zip(n, out, strict=True)], max_bytes, name)
    factors = []
    for nn, o in zip(n, out, strict=True):
        i = np.arange(o, dtype=np.int64)
        start = (i * nn) // o
        end = -((-(i + 1) * nn) // o)
        length = end - start
        indptr = np.concatenate([[0], np.cumsum(length)])
        cols = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - start, length)
        vals = np.repeat(1.0 / length, length)
        factors.append(csr_container(np)((vals, cols, indptr), shape=(o, nn)))
    return _separable(factors, c, n, out_dtype, max_bytes, name)


# --------------------------------------------------------------------------- interpolation
def _source_scale(n: int, out: int, align_corners: bool, scale_factor: float | None,
                  opmath: type) -> Any:
    """PyTorch's ``area_pixel_compute_scale``, in ``opmath`` (float64 or float32).

    ``(n-1)/(out-1)`` aligned (0 for one output), else ``1/scale_factor`` or ``n/out``.
    """
    if align_corners:
        return opmath(n - 1) / opmath(out - 1) if out > 1 else opmath(0)
    if scale_factor is not None and scale_factor > 0:
        return opmath(1.0 / scale_factor)
    return opmath(n) / opmath(out)


def _centre_source(scale: Any, i: np.ndarray, opmath: type) -> np.ndarray:
    """``scale * (i + 0.5) - 0.5`` in ``opmath``, fused as in PyTorch's build.

    PyTorch's compiled kernels contract it into one fused multiply-add. In float32 that is
    reproduced exactly: the product of two float32 numbers and the subtraction of 0.5 are
    exact in float64 (for the positions that are not clamped to 0), then rounded once. In
    float64 it rounds twice (at most one ulp apart).
    """
    if opmath is np.float32:
        return (np.float64(scale) * (i.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
    return scale * (i.astype(np.float64) + 0.5) - 0.5


def _floorf(x: np.ndarray) -> np.ndarray:
    """C's ``floorf`` of a double: rounded to float32 first, then floored (as int64)."""
    return np.floor(x.astype(np.float32)).astype(np.int64)


def nearest_source_indices(n: int, out: int, scale_factor: float | None, exact: bool,
                           small: bool, opmath: type = np.float64) -> np.ndarray:
    """Input index read by each output position of PyTorch's nearest modes (CPU).

    ``small`` selects the rule of ``nearest_idx`` / ``nearest_exact_idx`` (PyTorch's 2-D
    kernel for outputs whose sizes sum to at most 128): a float32 scale, and for 'nearest'
    exact copies when ``out == n`` and ``i // 2`` when ``out == 2n``. Otherwise the separable
    kernel's rule (``HelperInterpNearest``): the scale in ``opmath``. Both floor through
    float32 (``floorf``) and clamp to ``n - 1``.

    Examples
    --------
    >>> nearest_source_indices(3, 7, None, False, False).tolist()
    [0, 0, 0, 1, 1, 2, 2]
    >>> nearest_source_indices(3, 7, None, True, False).tolist()
    [0, 0, 1, 1, 1, 2, 2]
    """
    i = np.arange(out, dtype=np.int64)
    if small:
        if not exact and out == n:
            return i
        if not exact and out == 2 * n:
            return i >> 1
        scale = _source_scale(n, out, False, scale_factor, np.float32)
        if exact:  # floorf((i + 0.5) * scale): a double product
            src = (i + 0.5) * np.float64(scale)
        else:  # floorf(i * scale) in float
            src = i.astype(np.float32) * scale
        return np.minimum(_floorf(src), n - 1)
    scale = _source_scale(n, out, False, scale_factor, opmath)
    if exact:
        real = _centre_source(scale, i, opmath)
        real = np.where(real < 0, opmath(0), real)
        return np.minimum(_floorf(real.astype(np.float64) + 0.5), n - 1)
    return np.minimum(_floorf(scale * i.astype(opmath)), n - 1)


def linear_source_weights(n: int, out: int, align_corners: bool, scale_factor: float | None,
                          opmath: type = np.float64
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, w0, i1, w1)`` of PyTorch's linear interpolation along one axis (CPU).

    ``compute_source_index_and_lambda``: an exact copy when ``out == n``; else the source
    position ``scale*i`` (aligned) or ``scale*(i + 0.5) - 0.5`` clamped at 0, ``i0`` its
    ``floorf`` (at most ``n - 1``), ``i1 = i0 + 1`` (``i0`` at the last sample),
    ``w1 = clip(src - i0, 0, 1)``, ``w0 = 1 - w1``, all in ``opmath``.

    Examples
    --------
    >>> i0, w0, i1, w1 = linear_source_weights(2, 4, False, None)
    >>> i0.tolist(), w0.tolist(), i1.tolist(), w1.tolist()
    ([0, 0, 0, 1], [1.0, 0.75, 0.25, 0.75], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.25])
    """
    i = np.arange(out, dtype=np.int64)
    if out == n:
        return i, np.ones(out, dtype=opmath), i, np.zeros(out, dtype=opmath)
    scale = _source_scale(n, out, align_corners, scale_factor, opmath)
    fi: np.ndarray = i.astype(opmath)
    if align_corners:
        real = scale * fi
    else:
        real = _centre_source(scale, i, opmath)
        real = np.where(real < 0, opmath(0), real)
    i0 = np.minimum(_floorf(real), n - 1)
    w1 = np.minimum(np.maximum(real - i0.astype(opmath), opmath(0)), opmath(1)).astype(opmath)
    w0 = (opmath(1) - w1).astype(opmath)
    i1 = i0 + (i0 < n - 1)
    return i0, w0, i1, w1


def _interp_sizes(n: tuple[int, ...], size: Any, scale_factor: Any,
                  recompute_scale_factor: Any) -> tuple[tuple[int, ...], list[float | None]]:
    """Output sizes and the scale factors PyTorch passes on (None where it uses n/out)."""
    d = len(n)
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor (PyTorch's rule), got "
                         f"size={size!r}, scale_factor={scale_factor!r}")
    if recompute_scale_factor is not None:
        recompute = _flag("recompute_scale_factor", recompute_scale_factor)
        if recompute and size is not None:
            raise ValueError("recompute_scale_factor=True is not meaningful with an explicit "
                             f"size={size!r}")
    else:
        recompute = False
    if size is not None:
        return _per_axis("size", size, d, 1), [None] * d
    if isinstance(scale_factor, Sequence) and not isinstance(scale_factor, str):
        if len(scale_factor) != d:
            raise ValueError(f"scale_factor={tuple(scale_factor)!r} has {len(scale_factor)} "
                             f"entries but input_shape has {d} spatial axes")
        factors = list(scale_factor)
    else:
        factors = [scale_factor] * d
    scales = []
    for ax, f in enumerate(factors):
        if isinstance(f, bool | np.bool_) or not isinstance(f, numbers.Real):
            raise TypeError(f"scale_factor must be a float or a tuple of floats; axis {ax} has "
                            f"{f!r} ({type(f).__name__})")
        if not (math.isfinite(float(f)) and float(f) > 0):
            raise ValueError(f"scale_factor must be finite and > 0; axis {ax} has "
                             f"scale_factor={f!r}")
        scales.append(float(f))
    out = tuple(math.floor(float(nn) * f) for nn, f in zip(n, scales, strict=True))
    for ax, o in enumerate(out):
        if o < 1:
            raise ValueError(f"axis {ax}: scale_factor={scales[ax]!r} gives an output size "
                             f"floor({n[ax]} * {scales[ax]!r}) = {o} < 1")
    return out, ([None] * d if recompute else list(scales))


def upsample_operator(input_shape: Sequence[int], size: int | Sequence[int] | None = None,
                      scale_factor: float | Sequence[float] | None = None,
                      mode: str = "nearest", align_corners: bool | None = None,
                      max_bytes: int | None = None, *,
                      recompute_scale_factor: bool | None = None,
                      dtype: Any = np.float64) -> MatrixOperator:
    """Interpolation, ``torch.nn.functional.interpolate``, as an exact operator.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, at least one spatial axis.
    size : int or tuple of int, optional
        Output spatial size (give ``size`` or ``scale_factor``).
    scale_factor : float or tuple of float, optional
        Multiplier of each spatial size: ``out = floor(n * scale_factor)``. Unless
        ``recompute_scale_factor``, the source positions use ``1 / scale_factor`` (not
        ``n / out``), as PyTorch.
    mode : {'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear'}
        Nearest modes on any number of axes; 'linear', 'bilinear', 'trilinear' need 1, 2
        and 3 spatial axes.
    align_corners : bool, optional
        Linear modes only (None means False): map corner samples onto corner samples.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.
    recompute_scale_factor : bool, optional
        True: use ``n / out`` for the source positions (with ``scale_factor`` only).
    dtype : dtype
        float32, float64 (default), complex64 or complex128. The source positions are
        computed in float64, or in float32 for float32 and complex64 (PyTorch's ``opmath``).

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *out)``, named as PyTorch's kernel (``upsample_nearest2d``,
        ``upsample_bilinear2d``, ...).

    Raises
    ------
    TypeError
        A non-int size, a non-number scale factor, a non-bool flag, an unsupported dtype.
    ValueError
        Both or neither of ``size`` and ``scale_factor``; sizes below 1; an unknown mode or
        one that needs another number of axes; ``align_corners`` with a nearest mode.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    Formulas of PyTorch's CPU kernels (``aten/src/ATen/native/UpSample.h``); ``floorf``
    rounds to float32 before flooring, and every index is clamped to ``n - 1``:

    * ``nearest``: ``src = floorf(scale * i)``;
    * ``nearest-exact``: ``src = floorf(max(scale*(i + 0.5) - 0.5, 0) + 0.5)``;
    * linear: ``src = scale*i`` (aligned) or ``max(scale*(i + 0.5) - 0.5, 0)``, the weights
      ``1 - l`` and ``l = src - floorf(src)`` on ``floorf(src)`` and the next sample; an axis
      whose size is unchanged is copied;

    with ``scale = (n-1)/(out-1)`` (aligned), else ``1/scale_factor`` or ``n/out``, and
    ``scale*(i + 0.5) - 0.5`` rounded once (PyTorch's kernels compile it to a fused
    multiply-add; reproduced exactly in float32, within one ulp in float64). For 2
    spatial axes whose output sizes sum to at most 128, PyTorch's nearest modes use
    ``nearest_idx``: a float32 scale, and for 'nearest' copies when ``out == n`` and
    ``i // 2`` when ``out == 2n``; this operator follows the same rule, so it equals
    ``F.interpolate`` on contiguous CPU tensors.

    Nearest upsampling by an integer factor ``r`` on every axis (``out = r*n`` and the
    indices ``i // r``) is a transposed convolution with a ones kernel (stride ``r``,
    ``groups=C``), built by the convolution generator. The other cases are separable: one
    1-D interpolation matrix per axis, combined by the separable generator. Multilinear
    weights are products of the per-axis weights, so they match PyTorch up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> op = upsample_operator((1, 2), scale_factor=2, mode="linear")
    >>> op
    <upsample_linear1d: (1, 2) -> (1, 4); shape=(4, 2), dtype=float64>
    >>> op @ np.array([[0., 4.]])
    array([[0., 1., 3., 4.]])
    >>> upsample_operator((3, 8, 8), scale_factor=2).nnz  # a transposed convolution
    768
    """
    c, n = _check_input_shape(input_shape)
    d = len(n)
    if not isinstance(mode, str) or mode not in INTERPOLATE_MODES:
        raise ValueError(f"mode={mode!r} is not one of "
                         f"{', '.join(map(repr, INTERPOLATE_MODES))}")
    need = INTERPOLATE_MODES[mode]
    if need is not None and need != d:
        raise ValueError(f"mode={mode!r} needs {need} spatial axes, but input_shape={(c, *n)} "
                         f"has {d}")
    nearest = need is None
    if nearest and align_corners is not None:
        raise ValueError(f"align_corners={align_corners!r} can only be set with the linear "
                         f"modes (PyTorch's rule), not mode={mode!r}")
    aligned = False if align_corners is None else _flag("align_corners", align_corners)
    out, scales = _interp_sizes(n, size, scale_factor, recompute_scale_factor)
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    opmath = np.float32 if out_dtype.name in ("float32", "complex64") else np.float64
    kind = {"nearest": "nearest", "nearest-exact": "nearest_exact"}.get(mode, mode)
    name = f"upsample_{kind}{d}d"
    _guard_tables([*out, *n], max_bytes, name)
    if nearest:
        small = d == 2 and sum(out) <= TORCH_NEAREST_2D_SMALL
        idx = [nearest_source_indices(nn, o, f, mode == "nearest-exact", small, opmath)
               for nn, o, f in zip(n, out, scales, strict=True)]
        if all(o % nn == 0 and np.array_equal(ix, np.arange(o) // (o // nn))
               for nn, o, ix in zip(n, out, idx, strict=True)):
            r = tuple(o // nn for nn, o in zip(n, out, strict=True))
            m = conv_transpose_matrix(np.ones((c, 1, *r), dtype=out_dtype), (c, *n), stride=r,
                                      groups=c, max_bytes=max_bytes)
            return MatrixOperator._wrap(m, (c, *n), (c, *out), name)
        factors = [_axis_factor(o, nn, ix, np.ones(o), 1)
                   for nn, o, ix in zip(n, out, idx, strict=True)]
    else:
        factors = []
        for nn, o, f in zip(n, out, scales, strict=True):
            i0, w0, i1, w1 = linear_source_weights(nn, o, aligned, f, opmath)
            factors.append(_axis_factor(o, nn, np.stack([i0, i1], axis=1),
                                        np.stack([w0, w1], axis=1), 2))
    return _separable(factors, c, n, out_dtype, max_bytes, name)


# --------------------------------------------------------------------------- permutations
def _shuffle_operator(input_shape: Any, factor: Any, name: str, dtype: Any,
                      max_bytes: Any, inverse: bool) -> MatrixOperator:
    c_in, n = _check_input_shape(input_shape)
    d = len(n)
    argname = "downscale_factor" if inverse else "upscale_factor"
    if not _is_int(factor):
        raise TypeError(f"{argname} must be an int, got {factor!r} ({type(factor).__name__})")
    r = int(factor)
    if r < 1:
        raise ValueError(f"{argname} must be >= 1, got {argname}={r}")
    if inverse:
        for ax, nn in enumerate(n):
            if nn % r:
                raise ValueError(f"{argname}={r} must divide every spatial size; axis {ax} "
                                 f"of input_shape={(c_in, *n)} has size {nn}")
        c, h = c_in, tuple(nn // r for nn in n)
        outs = (c * r**d, *h)
    else:
        if c_in % r**d:
            raise ValueError(f"input_shape[0]={c_in} channels must be divisible by "
                             f"{argname}**{d} = {r**d} ({d} spatial axes)")
        c, h = c_in // r**d, n
        outs = (c, *(hh * r for hh in h))
    out_dtype = operator_dtype(dtype)
    total = c_in * math.prod(n)
    check_bytes(csr_bytes(total, total, total, out_dtype) + 16 * total, max_bytes, np,
                f"the {name} permutation of {total:,} entries")
    if inverse:  # out (c, i_1..i_d, h_1..h_d) reads in (c, h_1*r + i_1, ...)
        grid = np.arange(total, dtype=np.int64).reshape(c, *[v for hh in h for v in (hh, r)])
        order = (0, *range(2, 2 * d + 1, 2), *range(1, 2 * d, 2))
    else:  # out (c, h_1*r + i_1, ...) reads in (c*r^d + (i_1..i_d), h_1..h_d)
        grid = np.arange(total, dtype=np.int64).reshape(c, *([r] * d), *h)
        order = (0, *[v for ax in range(d) for v in (d + 1 + ax, 1 + ax)])
    idx = np.int32 if total < 2**31 else np.int64
    indices = grid.transpose(order).ravel().astype(idx)
    del grid
    m = csr_container(np)((np.ones(total, dtype=out_dtype), indices,
                           np.arange(total + 1, dtype=idx)), shape=(total, total), copy=False)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return MatrixOperator._wrap(m, (c_in, *n), outs, name)


def pixel_shuffle_operator(input_shape: Sequence[int], upscale_factor: int, *,
                           dtype: Any = np.float64, max_bytes: int | None = None
                           ) -> MatrixOperator:
    """Pixel shuffle, ``torch.nn.functional.pixel_shuffle``, on any number of spatial axes.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C * r**d, *spatial)`` with ``d >= 1`` spatial axes.
    upscale_factor : int
        ``r >= 1``.
    dtype : dtype
        float32, float64 (default), complex64 or complex128.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.

    Returns
    -------
    MatrixOperator
        ``(C * r**d, *spatial) -> (C, *(r * spatial))``, a permutation matrix, named
        ``pixel_shuffle``.

    Raises
    ------
    TypeError
        A non-int factor or an unsupported ``dtype``.
    ValueError
        ``r < 1``, or channels not divisible by ``r**d``.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    ``y[c, h_1*r + i_1, ..., h_d*r + i_d] = x[c*r**d + (i_1, ..., i_d), h_1, ..., h_d]``,
    the offsets ``(i_1, ..., i_d)`` raveled in C order (PyTorch's layout for ``d = 2``).
    It is written as a permutation, not a convolution: as a (transposed) convolution with
    stride ``r`` its one-hot kernel would store ``r**d`` entries per row, all but one zero.

    Examples
    --------
    >>> import numpy as np
    >>> op = pixel_shuffle_operator((4, 1, 1), 2)
    >>> op @ np.arange(4.0).reshape(4, 1, 1)
    array([[[0., 1.],
            [2., 3.]]])
    """
    return _shuffle_operator(input_shape, upscale_factor, "pixel_shuffle", dtype, max_bytes,
                             inverse=False)


def pixel_unshuffle_operator(input_shape: Sequence[int], downscale_factor: int, *,
                             dtype: Any = np.float64, max_bytes: int | None = None
                             ) -> MatrixOperator:
    """Pixel unshuffle, ``torch.nn.functional.pixel_unshuffle``: the inverse of the shuffle.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, every spatial size divisible by ``r``.
    downscale_factor : int
        ``r >= 1``.
    dtype, max_bytes
        As :func:`pixel_shuffle_operator`.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C * r**d, *(spatial // r))``, the transpose of
        ``pixel_shuffle_operator((C * r**d, *(spatial // r)), r)``'s matrix, named
        ``pixel_unshuffle``.

    Raises
    ------
    TypeError
        A non-int factor or an unsupported ``dtype``.
    ValueError
        ``r < 1``, or a spatial size not divisible by ``r``.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    ``y[c*r**d + (i_1, ..., i_d), h_1, ..., h_d] = x[c, h_1*r + i_1, ..., h_d*r + i_d]``: a
    permutation (see :func:`pixel_shuffle_operator` for why not a convolution).

    Examples
    --------
    >>> import numpy as np
    >>> op = pixel_unshuffle_operator((1, 2, 2), 2)
    >>> (op @ np.arange(4.0).reshape(1, 2, 2)).ravel()
    array([0., 1., 2., 3.])
    >>> op.output_shape
    (4, 1, 1)
    """
    return _shuffle_operator(input_shape, downscale_factor, "pixel_unshuffle", dtype,
                             max_bytes, inverse=True)


# --------------------------------------------------------------------------- pad and crop
def _crop_factors(n: tuple[int, ...], start: tuple[int, ...], stop: tuple[int, ...]
                  ) -> list[Any]:
    factors = []
    for nn, a, b in zip(n, start, stop, strict=True):
        m = b - a
        factors.append(csr_container(np)(
            (np.ones(m), np.arange(a, b, dtype=np.int64), np.arange(m + 1, dtype=np.int64)),
            shape=(m, nn)))
    return factors


def crop_operator(input_shape: Sequence[int], start: int | Sequence[int],
                  stop: int | Sequence[int], *, dtype: Any = np.float64,
                  max_bytes: int | None = None) -> MatrixOperator:
    """Crop: ``x[:, start_1:stop_1, ..., start_d:stop_d]`` as a selection matrix.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, at least one spatial axis.
    start, stop : int or tuple of int
        Per spatial axis (an int applies to every axis), ``0 <= start < stop <= size``.
    dtype : dtype
        float32, float64 (default), complex64 or complex128.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *(stop - start))``, one entry per row, named ``crop{d}d``;
        its transpose embeds a crop back into zeros.

    Raises
    ------
    TypeError
        A non-int bound or an unsupported ``dtype``.
    ValueError
        Bounds outside ``0 <= start < stop <= size``, or another number of axes.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    Built by the separable generator: ``I_C`` times one selection matrix per axis.

    Examples
    --------
    >>> import numpy as np
    >>> op = crop_operator((1, 3, 4), (1, 1), (3, 3))
    >>> op @ np.arange(12.0).reshape(1, 3, 4)
    array([[[ 5.,  6.],
            [ 9., 10.]]])
    """
    c, n = _check_input_shape(input_shape)
    d = len(n)
    a = _per_axis("start", start, d, 0)
    b = _per_axis("stop", stop, d, 1)
    for ax in range(d):
        if not a[ax] < b[ax] <= n[ax]:
            raise ValueError(f"crop bounds must satisfy 0 <= start < stop <= size; axis {ax} "
                             f"has start={a[ax]}, stop={b[ax]}, size={n[ax]}")
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    name = f"crop{d}d"
    _guard_tables(n, max_bytes, name)
    return _separable(_crop_factors(n, a, b), c, n, out_dtype, max_bytes, name)


def _pad_pairs(pad: Any, d: int) -> list[tuple[int, int]]:
    """``F.pad``'s flat ``pad`` (last axis first) as ``(lo, hi)`` per spatial axis."""
    if not isinstance(pad, Sequence) or isinstance(pad, str):
        raise TypeError(f"pad must be a tuple of ints, got {pad!r} ({type(pad).__name__})")
    for i, v in enumerate(pad):
        if not _is_int(v):
            raise TypeError(f"pad[{i}] must be an int, got {v!r} ({type(v).__name__})")
    if len(pad) == 0 or len(pad) % 2:
        raise ValueError(f"pad={tuple(pad)!r} must have an even, nonzero length (lo, hi pairs, "
                         "last axis first)")
    if len(pad) > 2 * d:
        raise ValueError(f"pad={tuple(pad)!r} pads {len(pad) // 2} axes but input_shape has "
                         f"{d} spatial axes (the channel axis is not padded)")
    pairs = [(0, 0)] * d
    for j in range(len(pad) // 2):
        pairs[d - 1 - j] = (int(pad[2 * j]), int(pad[2 * j + 1]))
    return pairs


def pad_operator(input_shape: Sequence[int], pad: Sequence[int], mode: str = "constant",
                 value: Any = 0.0, max_bytes: int | None = None, *,
                 dtype: Any = np.float64) -> MatrixOperator:
    """Padding, ``torch.nn.functional.pad``, as an exact (affine) operator.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``, at least one spatial axis.
    pad : tuple of int
        ``(lo, hi)`` pairs, last spatial axis first (``(left, right, top, bottom, ...)``), as
        ``F.pad``; it may cover fewer axes than there are. Negative values crop.
    mode : {'constant', 'reflect', 'replicate', 'circular', 'symmetric'}
        As ``F.pad``; any further ``padding_mode`` of :func:`convmat.conv_matrix` (such as
        'symmetric', NumPy's, which PyTorch lacks) is accepted too.
    value : number
        The fill value of 'constant' (must be 0 for the other modes, as PyTorch). A nonzero
        value makes the operator affine: ``op(x) = op @ x + offset`` with ``offset`` equal to
        ``value`` at the padded positions.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.
    dtype : dtype
        float32, float64 (default), complex64 or complex128.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *(spatial + lo + hi))``, named ``{mode}_pad{d}d``.

    Raises
    ------
    TypeError
        ``pad`` not a tuple of ints, a non-number ``value`` (or a complex one with a real
        ``dtype``), an unsupported ``dtype``.
    ValueError
        An odd or too long ``pad``; an unknown mode; a nonzero ``value`` with another mode;
        an empty output; padding beyond what the mode allows (the convolution's fits rule:
        'reflect' below the input size, 'circular' at most the input size after cropping).
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    Non-negative padding with any mode is a 1x1 depthwise convolution with a ones kernel,
    ``padding=((lo, hi), ...)`` and the mode's ``padding_mode``: built by the convolution
    generator, so the padding-mode registry is shared. Negative pads compose it with
    :func:`crop_operator`: output ``j`` of an axis reads padded position ``j - lo`` of the
    input (pad, then crop), except 'circular', which PyTorch crops first and then wraps
    within what is left.

    Examples
    --------
    >>> import numpy as np
    >>> op = pad_operator((1, 3), (1, 2), mode="reflect")
    >>> op @ np.array([[1., 2., 3.]])
    array([[2., 1., 2., 3., 2., 1.]])
    >>> pad_operator((1, 2), (1, -1), value=9.0)(np.array([[1., 2.]]))
    array([[9., 1.]])
    """
    c, n = _check_input_shape(input_shape)
    d = len(n)
    pairs = _pad_pairs(pad, d)
    if not isinstance(mode, str) or mode not in PAD_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(map(repr, PAD_MODES))}")
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Number):
        raise TypeError(f"value must be a number, got {value!r} ({type(value).__name__})")
    if mode != "constant" and value != 0:
        raise ValueError(f"mode={mode!r} takes no fill value, got value={value!r}")
    out_dtype = operator_dtype(dtype)
    if isinstance(value, complex) and value.imag != 0 and out_dtype.kind != "c":
        raise TypeError(f"value={value!r} is complex but dtype={out_dtype.name} is real")
    _check_max_bytes(max_bytes)
    out = tuple(nn + lo + hi for nn, (lo, hi) in zip(n, pairs, strict=True))
    for ax, o in enumerate(out):
        if o < 1:
            raise ValueError(f"axis {ax}: pad {pairs[ax]} leaves an output size "
                             f"{n[ax]} + {pairs[ax][0]} + {pairs[ax][1]} = {o} < 1")
    grow = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pairs)
    cut = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pairs]
    crop_first = mode == "circular"
    inner = tuple(nn - a - b for nn, (a, b) in zip(n, cut, strict=True)) if crop_first else n
    fits = PADDING_REGISTRY[PAD_MODES[mode]]  # the convolution's fits rule for the mode
    for ax, (nn, (lo, hi)) in enumerate(zip(inner, grow, strict=True)):
        if fits.limit is not None and max(lo, hi) > fits.limit(nn):
            after = " after cropping" if crop_first else ""
            raise ValueError(f"mode={mode!r} needs {fits.rule}{after}; axis {ax} has pad "
                             f"{pairs[ax]} for input size {nn}")
    name = f"{mode}_pad{d}d"

    def grown(shape: tuple[int, ...]) -> Any:
        weight = np.ones((c, 1, *([1] * d)), dtype=out_dtype)
        return conv_matrix(weight, (c, *shape), padding=grow, groups=c,
                           padding_mode=PAD_MODES[mode], max_bytes=max_bytes)

    if not any(a or b for a, b in cut):
        m = grown(n)
    else:
        padded = tuple(nn + lo + hi for nn, (lo, hi) in zip(n, grow, strict=True))
        source = n if crop_first else padded
        crop = crop_operator((c, *source), tuple(a for a, _ in cut),
                             tuple(s - b for s, (_, b) in zip(source, cut, strict=True)),
                             dtype=out_dtype, max_bytes=max_bytes)
        if not any(lo or hi for lo, hi in grow):
            m = crop.matrix
        elif crop_first:
            m = guarded_product(grown(inner), crop.matrix, max_bytes, what=name)
        else:
            m = guarded_product(crop.matrix, grown(n), max_bytes, what=name)
    offset = None
    if mode == "constant" and value != 0 and any(lo > 0 or hi > 0 for lo, hi in grow):
        empty = np.diff(m.indptr) == 0  # padded positions read no input
        fill = np.zeros(empty.shape, dtype=out_dtype)
        fill[empty] = value
        offset = _readonly(fill.reshape((c, *out)))
    return MatrixOperator._wrap(m, (c, *n), (c, *out), name, offset)


# --------------------------------------------------------------------------- channel maps
def _channel_vector(name: str, value: Any, c: int) -> np.ndarray:
    """A per-channel vector (or a scalar broadcast to ``c`` channels), finite numbers."""
    if array_namespace(value) is not np:
        raise TypeError(f"{name} is a CuPy array; build on the CPU and move the operator with "
                        ".to_gpu()")
    a = np.asarray(value)
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(c, a)
    if a.shape != (c,):
        raise ValueError(f"{name} of shape {a.shape} must have one entry per channel: shape "
                         f"({c},)")
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains {int(np.count_nonzero(~np.isfinite(a)))} NaN or "
                         "inf value(s)")
    return a


def _diagonal(c: int, n: tuple[int, ...], scale: np.ndarray, shift: np.ndarray | None,
              dtype: np.dtype, max_bytes: int | None, name: str) -> MatrixOperator:
    per = math.prod(n)
    total = c * per
    check_bytes(csr_bytes(total, total, total, dtype) + total * dtype.itemsize, max_bytes, np,
                f"the {name} diagonal of {total:,} entries")
    idx = np.int32 if total + 1 < 2**31 else np.int64
    m = csr_container(np)((np.repeat(scale.astype(dtype), per), np.arange(total, dtype=idx),
                           np.arange(total + 1, dtype=idx)), shape=(total, total), copy=False)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    offset = None
    if shift is not None:
        offset = _readonly(np.repeat(shift.astype(dtype), per).reshape((c, *n)))
    return MatrixOperator._wrap(m, (c, *n), (c, *n), name, offset)


def _real_or_fits(name: str, a: np.ndarray, dtype: np.dtype) -> None:
    if a.dtype.kind == "c" and dtype.kind != "c":
        raise TypeError(f"{name} is complex but dtype={dtype.name} is real; pass a complex "
                        "dtype")


def channel_affine_operator(input_shape: Sequence[int], scale: Any, shift: Any = None, *,
                            dtype: Any = np.float64, max_bytes: int | None = None
                            ) -> MatrixOperator:
    """Per-channel affine map ``y[c] = scale[c] * x[c] + shift[c]``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``; here any number of spatial axes, none included.
    scale : array_like
        ``(C,)`` (or a scalar for every channel), finite.
    shift : array_like, optional
        ``(C,)`` (or a scalar), finite: the affine offset (None: a linear map).
    dtype : dtype
        float32, float64 (default), complex64 or complex128.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.

    Returns
    -------
    MatrixOperator
        ``(C, *spatial) -> (C, *spatial)``, a diagonal matrix (every diagonal entry stored,
        zeros included) with ``offset = shift`` broadcast over the spatial axes, named
        ``channel_affine``.

    Raises
    ------
    TypeError
        A non-numeric or CuPy vector, a complex one with a real ``dtype``, an unsupported
        ``dtype``.
    ValueError
        A vector not of shape ``(C,)``, or one with NaN or inf.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Examples
    --------
    >>> import numpy as np
    >>> op = channel_affine_operator((2, 2), [1., 10.], shift=[0., 1.])
    >>> op(np.ones((2, 2)))
    array([[ 1.,  1.],
           [11., 11.]])
    """
    c, n = _check_input_shape(input_shape, min_spatial=0)
    out_dtype = operator_dtype(dtype)
    s = _channel_vector("scale", scale, c)
    _real_or_fits("scale", s, out_dtype)
    b = None if shift is None else _channel_vector("shift", shift, c)
    if b is not None:
        _real_or_fits("shift", b, out_dtype)
    _check_max_bytes(max_bytes)
    return _diagonal(c, n, s, b, out_dtype, max_bytes, "channel_affine")


def batch_norm_operator(input_shape: Sequence[int], running_mean: Any, running_var: Any,
                        weight: Any = None, bias: Any = None, eps: float = 1e-5, *,
                        dtype: Any = np.float64, max_bytes: int | None = None
                        ) -> MatrixOperator:
    """Batch normalisation in eval mode (``torch.nn.BatchNorm{1,2,3}d.eval()``).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, *spatial)``; any number of spatial axes, none included (``BatchNorm1d`` on
        ``(N, C)``).
    running_mean, running_var : array_like
        ``(C,)`` running statistics, real and finite; ``running_var >= 0``.
    weight, bias : array_like, optional
        ``(C,)`` affine parameters (default 1 and 0), real and finite.
    eps : float
        ``>= 0``, added to the variance; ``running_var + eps`` must be positive.
    dtype : dtype
        float32, float64 (default), complex64 or complex128.
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) a build over this many bytes.

    Returns
    -------
    MatrixOperator
        The channel affine map (see :func:`channel_affine_operator`), named ``batch_norm``.

    Raises
    ------
    TypeError
        A non-numeric, complex or CuPy vector, a non-number ``eps``, an unsupported dtype.
    ValueError
        A vector not of shape ``(C,)`` or not finite, a negative variance or ``eps``, or
        ``running_var + eps == 0``.
    ConvMatrixTooLarge
        The matrix needs more than ``max_bytes``.

    Notes
    -----
    As PyTorch's CPU kernel: ``alpha = weight / sqrt(running_var + eps)`` (as ``weight *
    (1 / sqrt(...))``), ``beta = bias - running_mean * alpha``, ``y = alpha * x + beta`` per
    channel, computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> op = batch_norm_operator((1, 2), running_mean=[1.], running_var=[4.], eps=0.0)
    >>> op(np.array([[1., 5.]]))
    array([[0., 2.]])
    """
    c, n = _check_input_shape(input_shape, min_spatial=0)
    vectors = {}
    for name, v, default in (("running_mean", running_mean, None),
                             ("running_var", running_var, None),
                             ("weight", weight, 1.0), ("bias", bias, 0.0)):
        a = _channel_vector(name, default if v is None else v, c)
        if a.dtype.kind == "c":
            raise TypeError(f"{name} must be real, got dtype {a.dtype}")
        vectors[name] = a.astype(np.float64)
    if isinstance(eps, bool | np.bool_) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r} ({type(eps).__name__})")
    if not (math.isfinite(float(eps)) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got eps={eps!r}")
    var = vectors["running_var"]
    if np.any(var < 0):
        raise ValueError(f"running_var must be >= 0; channel {int(np.argmax(var < 0))} has "
                         f"{float(var[np.argmax(var < 0)])!r}")
    if np.any(var + float(eps) <= 0):
        raise ValueError(f"running_var + eps must be > 0; channel "
                         f"{int(np.argmax(var + float(eps) <= 0))} has running_var=0 and eps=0")
    out_dtype = operator_dtype(dtype)
    _check_max_bytes(max_bytes)
    invstd = 1.0 / np.sqrt(var + float(eps))
    alpha = invstd * vectors["weight"]
    beta = vectors["bias"] - vectors["running_mean"] * alpha
    return _diagonal(c, n, alpha, beta, out_dtype, max_bytes, "batch_norm")
