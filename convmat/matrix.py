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
from .structured import (
    StructuredConv,
    adjoint_weight,
    check_method,
    check_structured,
    choose_method,
)
from .transposed import build_transposed_csr_arrays

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
    """The weight the builder reads: ``(C_out, C_in/G, *kernel)`` of the forward correlation.

    The one-channel shorthand gains its channel axes, a channels-last weight
    ``(*kernel, C_in/G, C_out)`` is transposed, and with ``geometry.flip`` every spatial
    axis is reversed (views, no copy).
    """
    xp = array_namespace(weight)
    if geometry.shorthand:
        weight = weight.reshape((1, 1, *weight.shape))
    elif geometry.channels_last:
        nd = geometry.ndim
        weight = weight.transpose((nd + 1, nd, *range(nd)))
    if geometry.flip:
        weight = xp.flip(weight, axis=tuple(range(2, 2 + geometry.ndim)))
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
            return from_arrays(adjoint, data, indices, indptr, xp)
        # otherwise from the per-axis transposed plans, straight into W.T's CSR
        data, indices, indptr = build_transposed_csr_arrays(forward, weight, xp,
                                                            threads=threads)
        return from_arrays(forward, data, indices, indptr, xp, transposed=True)
    data, indices, indptr = build_csr_arrays(forward, weight, xp, threads=threads)
    return from_arrays(forward, data, indices, indptr, xp)


def from_arrays(forward: ConvGeometry, data: Any, indices: Any, indptr: Any, xp: ModuleType,
                *, transposed: bool = False) -> Any:
    """Wrap canonical CSR arrays of the forward matrix (``transposed``: of its transpose).

    No conversion: the arrays are the matrix's own (sorted within rows, no duplicates).
    """
    shape = forward.conv_shape[::-1] if transposed else forward.conv_shape
    w = csr_container(xp)((data, indices, indptr), shape=shape, copy=False)
    w.has_sorted_indices = True
    w.has_canonical_format = True
    return w


def conv_matrix(
    weight: Any,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    flip: bool = False,
    origin: int | Sequence[int] | None = None,
    layout: str = "channels_first",
    max_bytes: int | None = None,
) -> Any:
    """Sparse CSR matrix ``W`` of an N-d convolution, so that ``conv(x) == W @ x.ravel()``.

    Parameters
    ----------
    weight : array_like
        ``(C_out, C_in // groups, *kernel)`` (channels last: ``(*kernel, C_in // groups,
        C_out)``, Keras' ``Conv*D`` kernel), or a kernel with as many axes as
        ``input_shape`` (one-channel shorthand, either layout). Its dtype (float32,
        float64, complex64 or complex128) is ``W``'s; a NumPy weight gives a
        ``scipy.sparse.csr_array``, a CuPy weight a ``cupyx.scipy.sparse.csr_array`` built
        on the device.
    input_shape : tuple of int
        ``(C_in, *spatial)`` (channels last: ``(*spatial, C_in)``), or the spatial shape
        for the one-channel shorthand.
    stride, dilation : int or tuple of int
        Per-axis stride and dilation (>= 1).
    padding : int, tuple of int, tuple of (lo, hi), 'valid', 'same' or 'full'
        Padding of each spatial axis. ``'same'`` (stride 1) pads ``dilation*(k-1)`` in
        all, an odd extra element at the end as PyTorch (unless ``origin`` is given);
        ``'full'`` pads ``dilation*(k-1)`` on both sides (every partial overlap, any
        stride).
    groups : int
        Blocked connections: input and output channels split into ``groups`` groups.
    padding_mode : str
        How the padding is filled (PyTorch's ``padding_mode``): pad, then convolve; one of
        ``convmat.geometry.PADDING_MODES``.
    flip : bool
        ``True``: a true convolution, the kernel reversed on every spatial axis (SciPy's
        ``signal.convolve`` and ``ndimage.convolve``, MATLAB's ``conv2``); ``False``:
        cross-correlation, as deep-learning libraries.
    origin : int or tuple of int, optional
        Only with ``padding='same'``: SciPy ndimage's centring. The centre tap is
        ``c = k//2 + origin`` per axis (``-(k//2) <= origin <= (k-1)//2``), so that
        ``conv_matrix(w, shape, padding='same', origin=o)`` is ``ndimage.correlate(x, w,
        origin=o)`` and with ``flip=True`` ``ndimage.convolve(x, w, origin=o)``. ``None``
        keeps PyTorch's split.
    layout : {'channels_first', 'channels_last'}
        ``'channels_last'``: inputs ``(*spatial, C_in)``, outputs ``(*spatial, C_out)``
        and a Keras weight; rows and columns of ``W`` follow ``x.ravel()`` of those
        shapes. The one-channel shorthand has no channel axis and is the same in both.
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
    ``y`` raveled in C order (channel-major). ``xpad[i] = x[i - lo]`` inside the input,
    and the padding mode's value outside it.

    ``flip=True`` reads ``w[o, c, k-1-t]`` for ``w[o, c, t]`` (every spatial axis): the
    true convolution ``y[p] = sum_t w[t] xpad[stride*p + dilation*(k-1-t)]``.

    Padding per axis: ``'valid'`` ``lo = hi = 0``; ``'full'`` ``lo = hi = dilation*(k-1)``
    (``out = n + dilation*(k-1)`` at stride 1); ``'same'`` ``lo + hi = dilation*(k-1)``
    with ``lo = dilation*(k-1) // 2`` (``origin=None``), else with ``c = k//2 + origin``
    ``lo = dilation*c`` (``flip=False``) or ``lo = dilation*(k-1-c)`` (``flip=True``).
    ``scipy.signal.correlate(x, w, 'same')`` is ``origin=0``; ``scipy.signal.convolve(x, w,
    'same')`` is ``flip=True, origin=(k-1)//2 - k//2`` (0 odd, -1 even); MATLAB's
    ``conv(u, v, 'same')`` is ``flip=True, origin=None``.

    Channels last, an input or output index ``(c, p)`` (``p`` the flat spatial position)
    is ``p*C + c``: ``W_last = P_out W P_in^T`` for the permutations ``P`` that take
    ``(C, *spatial)`` to ``(*spatial, C)``. It is built channels first in pieces of whole
    output planes, each scattered to its final place (the entries of a row keep their
    values; their order is a fixed transposition, no sort), so the build holds one piece
    beside the result (``ConvGeometry.layout_bytes``).

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

    A true convolution with full padding is ``scipy.signal.convolve``'s default:

    >>> conv_matrix(np.array([1., 2., 3.]), (4,), padding="full", flip=True) @ np.ones(4)
    array([1., 3., 6., 6., 5., 3.])

    ``origin`` places the centre of an even kernel as ``scipy.ndimage``: PyTorch's
    ``'same'`` pads ``lo = 3 // 2 = 1`` before a kernel of 4, ndimage's centre tap
    ``4//2 + origin`` gives ``lo = 2`` for ``origin=0`` and ``lo = 1`` for ``origin=-1``:

    >>> x = np.arange(6.0)
    >>> conv_matrix(np.ones(4), (6,), padding="same") @ x
    array([ 3.,  6., 10., 14., 12.,  9.])
    >>> conv_matrix(np.ones(4), (6,), padding="same", origin=0) @ x
    array([ 1.,  3.,  6., 10., 14., 12.])

    Channels last (Keras): the same matrix with rows and columns permuted:

    >>> w = np.arange(8.0).reshape(2, 2, 1, 2)           # (kh, kw, C_in, C_out)
    >>> W_last = conv_matrix(w, (3, 3, 1), layout="channels_last")
    >>> W_first = conv_matrix(w.transpose(3, 2, 0, 1), (1, 3, 3))
    >>> y = W_last @ np.arange(9.0)                      # x of shape (3, 3, 1)
    >>> np.array_equal(y.reshape(2, 2, 2), (W_first @ np.arange(9.0)).reshape(2, 2, 2)
    ...                .transpose(1, 2, 0))
    True
    """
    weight, xp, geometry = prepare_conv(
        weight, input_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, flip=flip, origin=origin, layout=layout,
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
    flip: bool = False,
    origin: int | Sequence[int] | None = None,
    layout: str = "channels_first",
    max_bytes: int | None = None,
) -> Any:
    """Sparse CSR matrix of an N-d transposed convolution: ``W.T`` of the matching conv.

    Parameters
    ----------
    weight : array_like
        ``(C_in, C_out // groups, *kernel)`` (PyTorch/MXNet layout; channels last
        ``(*kernel, C_out // groups, C_in)``, Keras' ``Conv*DTranspose`` kernel), or a
        one-channel kernel.
    input_shape : tuple of int
        ``(C_in, *spatial)`` of the transposed convolution's input (channels last
        ``(*spatial, C_in)``).
    output_padding : int or tuple of int
        Extra size added to one side of each output axis, ``0 <= output_padding <
        max(stride, dilation)``.
    output_size : tuple of int, optional
        Requested output size (spatial, optionally with the channel and batch sizes in the
        layout's places); picks ``output_padding`` as PyTorch's
        ``ConvTranspose*d.forward(output_size=...)``.
    stride, padding, dilation, groups, padding_mode, flip, origin, layout, max_bytes
        As in :func:`conv_matrix`; ``padding_mode`` other than ``'zeros'`` gives the exact
        adjoint of the padded convolution (which PyTorch does not provide), ``flip=True``
        the transpose of the flipped convolution.

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

    With ``flip=True`` it scatters the reversed kernel (the transpose of the true
    convolution), so here it is the full correlation of ``K`` with itself:

    >>> (conv_transpose_matrix(K, (2, 2), flip=True) @ K.ravel()).reshape(3, 3)
    array([[ 0.,  3.,  2.],
           [ 6., 14.,  6.],
           [ 2.,  3.,  0.]])
    """
    weight, xp, geometry = prepare_conv_transpose(
        weight, input_shape, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, output_size=output_size, padding_mode=padding_mode,
        flip=flip, origin=origin, layout=layout,
    )
    check_memory(geometry, max_bytes, xp=xp)
    return assemble(geometry, weight, xp)


def _split_batch(x: Any, ndim: int, name: str, last: bool) -> tuple[Any, bool]:
    """``x`` as a batch ``(N, *input_shape)`` and whether it was unbatched (PyTorch's rule)."""
    if x.ndim == ndim + 1:
        return x[None], True
    if x.ndim == ndim + 2:
        return x, False
    one, batch = (("(*spatial, C)", "(N, *spatial, C)") if last
                  else ("(C, *spatial)", "(N, C, *spatial)"))
    raise ValueError(
        f"{name}.ndim={x.ndim} (shape {tuple(x.shape)}) does not fit a weight with {ndim} "
        f"spatial axes: expected {one} with ndim {ndim + 1} or {batch} with ndim {ndim + 2}"
    )


def _apply(x: Any, weight: Any, name: str, transposed: bool, options: dict[str, Any]) -> Any:
    refuse_masked(name, x, "the convolution")
    weight, xp = _as_weight(weight)
    same_backend(name, x, xp, "the weight")
    x = np.asarray(x) if xp is np else x
    if x.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    last = options.get("layout") == "channels_last"
    if weight.ndim < 3:
        expected = ("Keras' layout (*kernel, in // groups, out)" if last
                    else "PyTorch's layout (out, in // groups, *kernel)")
        raise ValueError(
            f"weight.ndim={weight.ndim}: the functional form takes {expected} with at least "
            "one spatial axis; for a bare kernel use conv_matrix / ConvOperator with the "
            "one-channel shorthand"
        )
    xb, unbatched = _split_batch(x, weight.ndim - 2, name, last)
    options = dict(options)
    max_bytes = options.pop("max_bytes", None)
    method = check_method(options.pop("method", "auto"))
    make = prepare_conv_transpose if transposed else prepare_conv
    weight, xp, geometry = make(weight, tuple(xb.shape[1:]), **options)
    forward = geometry.T if transposed else geometry
    batch = int(xb.shape[0])
    if method == "auto":
        method = choose_method(forward, batch, xp=xp, max_bytes=max_bytes)
    if method != "csr":  # the kernel alone: no W
        check_structured(forward, method, batch, np.result_type(weight.dtype, xb.dtype),
                         max_bytes, xp)
        plan = StructuredConv(forward, conv_weight(forward, weight), xp)
        y = plan.apply(xb, method, adjoint=transposed)
        return y[0] if unbatched else y
    # One product: a transposed conv uses the forward CSR's transposed view (no conversion).
    check_memory(forward, max_bytes, xp=xp)
    w = assemble(forward, weight, xp)
    w = w.T if transposed else w
    flat = xb.reshape(xb.shape[0], w.shape[1])  # explicit: -1 cannot be inferred for N=0
    y = (w @ flat.T).T.reshape((xb.shape[0], *geometry.output_shape))
    return y[0] if unbatched else y


def conv(x: Any, weight: Any, **options: Any) -> Any:
    """Convolution of ``x`` (``(N, C, *spatial)`` or ``(C, *spatial)``) through ``W @ x``.

    ``weight`` is ``(C_out, C_in // groups, *kernel)`` and ``options`` are those of
    :func:`conv_matrix` (``flip``, ``origin``, ``layout`` included: with
    ``layout='channels_last'``, ``x`` is ``(N, *spatial, C)`` or ``(*spatial, C)`` and the
    weight Keras' ``(*kernel, C_in // groups, C_out)``). ``x`` and ``weight`` are both
    NumPy or both CuPy arrays (the result follows them; mixing them is a ``TypeError``).
    ``method`` (``'auto'``, ``'csr'``, ``'direct'``, ``'fft'``) picks the product's path as
    for :class:`ConvOperator`; ``'auto'`` asks the cost model
    (:func:`convmat.structured.choose_method`), and only ``'csr'`` builds ``W``.
    Matches ``torch.nn.functional.conv{1,2,3}d`` (with ``padding_mode`` as the ``Conv*d``
    modules) and generalises it to any number of spatial axes.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    >>> conv(x, np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    array([[[[348., 393.],
             [528., 573.]]]])

    Channels last (NHWC data, a Keras ``(kh, kw, C_in, C_out)`` kernel), the same numbers:

    >>> conv(x.reshape(1, 4, 4, 1), np.arange(1.0, 10.0).reshape(3, 3, 1, 1),
    ...      layout="channels_last")[0, :, :, 0]
    array([[348., 393.],
           [528., 573.]])
    """
    return _apply(x, weight, "x", False, options)


def conv_transpose(y: Any, weight: Any, **options: Any) -> Any:
    """Transposed convolution of ``y`` (``(N, C, *spatial)`` or ``(C, *spatial)``): ``W.T @ y``.

    ``weight`` is ``(C_in, C_out // groups, *kernel)`` and ``options`` are those of
    :func:`conv_transpose_matrix` (including ``output_padding`` and ``output_size``; with
    ``layout='channels_last'``, ``y`` is ``(N, *spatial, C)`` or ``(*spatial, C)`` and the
    weight Keras' ``(*kernel, C_out // groups, C_in)``), and ``method`` as :func:`conv`.

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
