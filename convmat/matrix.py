"""Convolution and transposed-convolution matrices: geometry + indices + weight -> CSR."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .backend import array_namespace, csr_container, refuse_masked, same_backend
from .geometry import ConvGeometry, conv_geometry, conv_transpose_geometry
from .guard import check_memory
from .indices import build_csr_arrays

__all__ = [
    "adjoint_weight",
    "assemble",
    "check_finite",
    "conv",
    "conv_matrix",
    "conv_transpose",
    "conv_transpose_matrix",
    "conv_weight",
    "from_arrays",
    "prepare_conv",
    "prepare_conv_transpose",
]


def _as_weight(weight: Any) -> tuple[Any, ModuleType]:
    xp = array_namespace(weight)
    if xp is np:
        weight = np.asarray(weight)
    return weight, xp


def check_finite(weight: Any, xp: ModuleType) -> None:
    """Refuse a weight holding NaN or inf (``ValueError`` with their count)."""
    if weight.dtype.kind in "fc":
        bad = int(xp.count_nonzero(~xp.isfinite(weight)))
        if bad:
            raise ValueError(
                f"weight contains {bad} NaN or inf value(s); W would propagate them to every "
                "output they touch"
            )


def conv_weight(geometry: ConvGeometry, weight: Any) -> Any:
    """The weight as ``(C_out, C_in/G, *kernel)`` of the forward convolution."""
    if geometry.shorthand:
        return weight.reshape((1, 1, *weight.shape))
    return weight


def _prepare(weight: Any, make_geometry: Any) -> tuple[Any, ModuleType, ConvGeometry]:
    """Validate ``weight`` (shape, dtype, values) through ``make_geometry(weight)``."""
    weight, xp = _as_weight(weight)
    geometry = make_geometry(weight)
    check_finite(weight, xp)
    return weight, xp, geometry


def prepare_conv(weight: Any, input_shape: Any, **options: Any
                 ) -> tuple[Any, ModuleType, ConvGeometry]:
    """``(weight, xp, geometry)`` of a convolution, everything validated (no allocation)."""
    return _prepare(weight, lambda w: conv_geometry(w, input_shape, **options))


def prepare_conv_transpose(weight: Any, input_shape: Any, **options: Any
                           ) -> tuple[Any, ModuleType, ConvGeometry]:
    """``(weight, xp, geometry)`` of a transposed convolution, everything validated."""
    return _prepare(weight, lambda w: conv_transpose_geometry(w, input_shape, **options))


def assemble(geometry: ConvGeometry, weight: Any, xp: ModuleType,
             threads: int | None = None) -> Any:
    """The CSR matrix of ``geometry`` (forward, or transposed when ``geometry.transposed``)."""
    forward = geometry.T if geometry.transposed else geometry
    weight = conv_weight(forward, weight)
    if geometry.transposed:
        adjoint = forward.adjoint
        if adjoint is not None:  # W.T is itself a convolution: write it directly
            flipped = adjoint_weight(forward, weight, xp)
            data, indices, indptr = build_csr_arrays(adjoint, flipped, xp, threads=threads)
            return from_arrays(adjoint, data, indices, indptr, xp, transposed=False)
    data, indices, indptr = build_csr_arrays(forward, weight, xp, threads=threads)
    return from_arrays(forward, data, indices, indptr, xp, transposed=geometry.transposed)


def adjoint_weight(forward: ConvGeometry, weight: Any, xp: ModuleType) -> Any:
    """Weight of ``forward.adjoint``: channels swapped per group, kernel flipped."""
    g = forward
    groups, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    k = g.kernel_size
    w = weight.reshape(groups, cout_g, cin_g, *k)
    w = xp.swapaxes(w, 1, 2).reshape(g.in_channels, cout_g, *k)
    w = xp.flip(w, axis=tuple(range(2, 2 + len(k))))
    return xp.ascontiguousarray(w)


def from_arrays(forward: ConvGeometry, data: Any, indices: Any, indptr: Any, xp: ModuleType,
                *, transposed: bool) -> Any:
    """Wrap CSR arrays of the forward matrix; transpose to CSR when asked."""
    container = csr_container(xp)
    w = container((data, indices, indptr), shape=forward.conv_shape, copy=False)
    w.has_sorted_indices = True
    w.has_canonical_format = True
    if not transposed:
        return w
    wt = w.T.tocsr()
    del w
    if wt.indices.dtype != forward.index_dtype:  # only when tests lower INDEX_LIMIT
        wt = container(
            (wt.data, wt.indices.astype(forward.index_dtype),
             wt.indptr.astype(forward.index_dtype)),
            shape=wt.shape, copy=False,
        )
    wt.has_sorted_indices = True
    wt.has_canonical_format = True
    return wt


def conv_matrix(
    weight: Any,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    max_bytes: int | None = None,
) -> Any:
    """Sparse CSR matrix ``W`` of an N-d convolution, so that ``conv(x) == W @ x.ravel()``.

    Parameters
    ----------
    weight : array_like
        ``(C_out, C_in // groups, *kernel)``, or a kernel with as many axes as
        ``input_shape`` (one-channel shorthand). Its dtype (float32, float64, complex64 or
        complex128) is ``W``'s; a NumPy weight gives a ``scipy.sparse.csr_array``, a CuPy
        weight a ``cupyx.scipy.sparse.csr_array`` built on the device.
    input_shape : tuple of int
        ``(C_in, *spatial)``, or the spatial shape for the one-channel shorthand.
    stride, dilation : int or tuple of int
        Per-axis stride and dilation (>= 1).
    padding : int, tuple of int, tuple of (lo, hi), 'valid' or 'same'
        Padding of each spatial axis; ``'same'`` (stride 1) puts an odd extra element at
        the end, as PyTorch.
    groups : int
        Blocked connections: input and output channels split into ``groups`` groups.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}
        How the padding is filled (PyTorch's ``padding_mode``): pad, then convolve.
    max_bytes : int, optional
        Refuse to build when the peak memory would exceed this many bytes (default: half
        of the available memory; on the GPU, of the device's free memory plus the CuPy
        memory pool's free bytes, within the pool's limit).

    Returns
    -------
    scipy.sparse.csr_array or cupyx.scipy.sparse.csr_array
        Shape ``(C_out * prod(out), C_in * prod(in))``, canonical (sorted indices, no
        duplicates: taps that padding folds onto one input pixel are summed), int32
        indices when ``max(rows, cols, nnz) < 2**31``, else int64.

    Raises
    ------
    TypeError
        Unsupported weight dtype, or a non-int where an int is expected.
    ValueError
        Inconsistent geometry, or NaN/inf in the weight (the message names the argument);
        on CuPy < 14.1, a matrix that needs int64 indices.
    ConvMatrixTooLarge
        The build would need more than ``max_bytes``.

    Notes
    -----
    Convolution is cross-correlation (no kernel flip)::

        y[o, p] = sum_{c, t} w[o, c, t] * xpad[g(o)*C_in/G + c, stride*p + dilation*t]

    with ``out = (n + lo + hi - dilation*(k - 1) - 1) // stride + 1`` per axis, and ``x``,
    ``y`` raveled in C order (channel-major).

    Examples
    --------
    The chapter's 2x2 kernel on a 3x3 input:

    >>> import numpy as np
    >>> W = conv_matrix(np.array([[0., 1.], [2., 3.]]), (3, 3))
    >>> W.toarray()
    array([[0., 1., 0., 2., 3., 0., 0., 0., 0.],
           [0., 0., 1., 0., 2., 3., 0., 0., 0.],
           [0., 0., 0., 0., 1., 0., 2., 3., 0.],
           [0., 0., 0., 0., 0., 1., 0., 2., 3.]])
    >>> (W @ np.arange(9.0)).reshape(2, 2)
    array([[19., 25.],
           [37., 43.]])

    (The explicit zeros of the kernel are stored: the pattern depends on the geometry
    only, so ``W.nnz`` is 16 here.)
    """
    weight, xp, geometry = prepare_conv(
        weight, input_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode,
    )
    check_memory(geometry, max_bytes, xp=xp)
    return assemble(geometry, weight, xp)


def conv_transpose_matrix(
    weight: Any,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    max_bytes: int | None = None,
) -> Any:
    """Sparse CSR matrix of an N-d transposed convolution: ``W.T`` of the matching conv.

    Parameters
    ----------
    weight : array_like
        ``(C_in, C_out // groups, *kernel)`` (PyTorch/MXNet layout), or a one-channel kernel.
    input_shape : tuple of int
        ``(C_in, *spatial)`` of the transposed convolution's input.
    output_padding : int or tuple of int
        Extra size added to one side of each output axis, ``0 <= output_padding <
        max(stride, dilation)``.
    output_size : tuple of int, optional
        Requested output size (spatial, optionally preceded by channel/batch sizes); picks
        ``output_padding`` as PyTorch's ``ConvTranspose*d.forward(output_size=...)``.
    stride, padding, dilation, groups, padding_mode, max_bytes
        As in :func:`conv_matrix`; ``padding_mode`` other than ``'zeros'`` gives the exact
        adjoint of the padded convolution (which PyTorch does not provide).

    Returns
    -------
    scipy.sparse.csr_array or cupyx.scipy.sparse.csr_array
        Shape ``(C_out * prod(out), C_in * prod(in))``, equal to
        ``conv_matrix(weight, (C_out, *out), ...).T`` (plain transpose, no conjugation).

    Raises
    ------
    TypeError, ValueError, ConvMatrixTooLarge
        As :func:`conv_matrix`; also an ``output_size`` outside the valid range.

    Notes
    -----
    ``out = (in - 1)*stride - pad_lo - pad_hi + dilation*(k - 1) + output_padding + 1``.
    Each input value is scattered through the kernel: ``y[stride*p + dilation*t - lo] +=
    x[p] * w[t]``, with padded positions dropped (``zeros``) or folded back.

    Examples
    --------
    The chapter's ``trans_conv`` of a 2x2 input with a 2x2 kernel:

    >>> import numpy as np
    >>> K = np.array([[0., 1.], [2., 3.]])
    >>> (conv_transpose_matrix(K, (2, 2)) @ K.ravel()).reshape(3, 3)
    array([[ 0.,  0.,  1.],
           [ 0.,  4.,  6.],
           [ 4., 12.,  9.]])
    """
    weight, xp, geometry = prepare_conv_transpose(
        weight, input_shape, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, output_size=output_size, padding_mode=padding_mode,
    )
    check_memory(geometry, max_bytes, xp=xp)
    return assemble(geometry, weight, xp)


def _split_batch(x: Any, ndim: int, name: str) -> tuple[Any, bool]:
    """``x`` as ``(N, C, *spatial)`` and whether it was unbatched (PyTorch's rule)."""
    if x.ndim == ndim + 1:
        return x[None], True
    if x.ndim == ndim + 2:
        return x, False
    raise ValueError(
        f"{name}.ndim={x.ndim} (shape {tuple(x.shape)}) does not fit a weight with {ndim} "
        f"spatial axes: expected (C, *spatial) with ndim {ndim + 1} or (N, C, *spatial) with "
        f"ndim {ndim + 2}"
    )


def _apply(x: Any, weight: Any, name: str, transposed: bool, options: dict[str, Any]) -> Any:
    refuse_masked(name, x, "the convolution")
    weight, xp = _as_weight(weight)
    same_backend(name, x, xp, "the weight")
    x = np.asarray(x) if xp is np else x
    if x.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if weight.ndim < 3:
        raise ValueError(
            f"weight.ndim={weight.ndim}: the functional form takes PyTorch's layout "
            "(out, in // groups, *kernel) with at least one spatial axis; for a bare kernel "
            "use conv_matrix / ConvOperator with the one-channel shorthand"
        )
    xb, unbatched = _split_batch(x, weight.ndim - 2, name)
    options = dict(options)
    max_bytes = options.pop("max_bytes", None)
    make = prepare_conv_transpose if transposed else prepare_conv
    weight, xp, geometry = make(weight, tuple(xb.shape[1:]), **options)
    # One product: a transposed conv uses the forward CSR's transposed view (no conversion).
    forward = geometry.T if transposed else geometry
    check_memory(forward, max_bytes, xp=xp)
    w = assemble(forward, weight, xp)
    w = w.T if transposed else w
    flat = xb.reshape(xb.shape[0], w.shape[1])  # explicit: -1 cannot be inferred for N=0
    y = (w @ flat.T).T.reshape((xb.shape[0], *geometry.output_shape))
    return y[0] if unbatched else y


def conv(x: Any, weight: Any, **options: Any) -> Any:
    """Convolution of ``x`` (``(N, C, *spatial)`` or ``(C, *spatial)``) through ``W @ x``.

    ``weight`` is ``(C_out, C_in // groups, *kernel)`` and ``options`` are those of
    :func:`conv_matrix`. ``x`` and ``weight`` are both NumPy or both CuPy arrays (the
    result follows them; mixing them is a ``TypeError``). Matches
    ``torch.nn.functional.conv{1,2,3}d`` (with ``padding_mode`` as the ``Conv*d`` modules)
    and generalises it to any number of spatial axes.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    >>> conv(x, np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    array([[[[348., 393.],
             [528., 573.]]]])
    """
    return _apply(x, weight, "x", False, options)


def conv_transpose(y: Any, weight: Any, **options: Any) -> Any:
    """Transposed convolution of ``y`` (``(N, C, *spatial)`` or ``(C, *spatial)``): ``W.T @ y``.

    ``weight`` is ``(C_in, C_out // groups, *kernel)`` and ``options`` are those of
    :func:`conv_transpose_matrix` (including ``output_padding`` and ``output_size``).

    Examples
    --------
    >>> import numpy as np
    >>> K = np.array([[[[0., 1.], [2., 3.]]]])
    >>> conv_transpose(K, K, stride=2)[0, 0]
    array([[0., 0., 0., 1.],
           [0., 0., 2., 3.],
           [0., 2., 0., 3.],
           [4., 6., 6., 9.]])
    """
    return _apply(y, weight, "y", True, options)
