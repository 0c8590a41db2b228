"""``ConvOperator``: a convolution matrix that knows its geometry and reshapes for you."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .algebra import MatrixOperator
from .arguments import check_dtype
from .backend import (
    array_namespace,
    format_bytes,
    linear_operator_class,
    refuse_masked,
    same_backend,
    to_cpu,
    to_gpu,
)
from .geometry import ConvGeometry
from .guard import check_memory
from .indices import build_csr_arrays
from .matrix import (
    adjoint_weight,
    assemble,
    check_finite,
    conv_weight,
    from_arrays,
    prepare_conv,
    prepare_conv_transpose,
)
from .transposed import build_transposed_csr_arrays

__all__ = ["ConvOperator", "gradient_operator"]


class GeometryShapes:
    """``shape``, ``input_shape`` and ``output_shape`` read from ``self.geometry``."""

    geometry: ConvGeometry

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the matrix."""
        return self.geometry.shape

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return self.geometry.input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output."""
        return self.geometry.output_shape


class ConvOperator(GeometryShapes, MatrixOperator):
    """A convolution as a linear operator ``y = W @ x``, with shapes attached.

    Parameters
    ----------
    weight : array_like
        ``(C_out, C_in // groups, *kernel)`` (channels last ``(*kernel, C_in // groups,
        C_out)``) or a one-channel kernel.
    input_shape : tuple of int
        ``(C_in, *spatial)`` (channels last ``(*spatial, C_in)``), or the spatial shape
        for the one-channel shorthand.
    **options
        ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``, ``flip``,
        ``origin``, ``layout``, ``max_bytes`` as in :func:`convmat.conv_matrix`. With
        ``layout='channels_last'`` the operator maps ``(*spatial, C_in)`` inputs (batches
        ``(N, *spatial, C_in)``) to ``(*spatial, C_out)`` outputs.
    bias : array, optional
        ``(C_out,)`` (a scalar for the one-channel shorthand): the operator is then the
        affine map ``x -> W x + bias`` (``op(x)``; ``op @ x`` applies ``W`` alone), with
        ``offset`` the bias broadcast over the output.

    Attributes
    ----------
    matrix : scipy.sparse.csr_array or cupyx.scipy.sparse.csr_array
        ``W`` (for an adjoint operator, the transposed view ``W.T``, a CSC array). A CuPy
        weight builds it on the GPU; :meth:`to_gpu` / :meth:`to_cpu` move the operator.
    weight : ndarray
        The weight the operator was built from (the same array for ``.T`` and ``.H``).
    geometry : ConvGeometry
    shape, input_shape, output_shape, dtype, nnz, nbytes, device

    It is a :class:`convmat.MatrixOperator` (a ``scipy.sparse.linalg.LinearOperator``): it
    composes, adds, scales and stacks with the other operators (:mod:`convmat.algebra`).

    Notes
    -----
    ``op @ x`` accepts a flat vector ``(n,)``, one shaped input ``input_shape``, a batch
    ``(N, *input_shape)`` (returns ``(N, *output_shape)``) or a block of columns
    ``(n, k)`` (returns ``(m, k)``). When a 2-D array fits both a batch and a block of
    columns (a square array with a 1-D ``input_shape``) it is read as a batch.
    ``op.T`` and ``op.H`` are the transposed and conjugate-transposed operators; they map
    shaped arrays back. ``ConvOperator.transposed(...)`` builds a transposed convolution.

    Examples
    --------
    >>> import numpy as np
    >>> op = ConvOperator(np.array([[0., 1.], [2., 3.]]), (3, 3))
    >>> op.shape, op.output_shape
    ((4, 9), (2, 2))
    >>> op @ np.arange(9.0).reshape(3, 3)
    array([[19., 25.],
           [37., 43.]])
    >>> (op.T @ np.array([[0., 1.], [2., 3.]]))
    array([[ 0.,  0.,  1.],
           [ 0.,  4.,  6.],
           [ 4., 12.,  9.]])

    Channels last, a Keras kernel ``(3, 3, C_in=2, C_out=4)``, a batch of five NHWC inputs:

    >>> op = ConvOperator(np.ones((3, 3, 2, 4)), (8, 8, 2), padding=1,
    ...                   layout="channels_last")
    >>> op.input_shape, op.output_shape, (op @ np.ones((5, 8, 8, 2))).shape
    ((8, 8, 2), (8, 8, 4), (5, 8, 8, 4))
    """

    geometry: ConvGeometry
    matrix: Any
    weight: Any
    _xp: ModuleType
    _adjoints: dict[str, ConvOperator]

    def __init__(
        self,
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
        bias: Any = None,
        max_bytes: int | None = None,
    ) -> None:
        weight, xp, geometry = prepare_conv(
            weight, input_shape, stride=stride, padding=padding, dilation=dilation,
            groups=groups, padding_mode=padding_mode, flip=flip, origin=origin, layout=layout,
        )
        offset = _bias_offset(bias, geometry, xp)
        check_memory(geometry, max_bytes, xp=xp)
        weight = _owned(weight, xp)
        self._set(geometry, assemble(geometry, weight, xp), xp, weight)
        self.offset = offset

    @classmethod
    def transposed(
        cls,
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
        bias: Any = None,
        max_bytes: int | None = None,
    ) -> ConvOperator:
        """The transposed convolution, weight ``(C_in, C_out // groups, *kernel)``.

        Arguments as :func:`convmat.conv_transpose_matrix` (channels last: weight
        ``(*kernel, C_out // groups, C_in)``, input ``(*spatial, C_in)``); the result is
        the ``.T`` of the matching convolution operator (its ``matrix`` a transposed CSC
        view, no copy). ``bias`` ``(C_out,)`` makes it affine, as for
        :class:`ConvOperator`.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator.transposed(np.ones((10, 3, 4, 4)), (10, 32, 32),
        ...                              stride=2, padding=1)
        >>> op.output_shape
        (3, 64, 64)
        """
        weight, xp, geometry = prepare_conv_transpose(
            weight, input_shape, stride=stride, padding=padding, output_padding=output_padding,
            dilation=dilation, groups=groups, output_size=output_size, padding_mode=padding_mode,
            flip=flip, origin=origin, layout=layout,
        )
        offset = _bias_offset(bias, geometry, xp)
        forward = geometry.T
        check_memory(forward, max_bytes, xp=xp)
        weight = _owned(weight, xp)
        op = cls._from(forward, assemble(forward, weight, xp), xp, weight).T
        if offset is None:
            return op
        affine = ConvOperator._from(op.geometry, op.matrix, xp, op.weight)
        affine.offset = offset
        return affine

    @classmethod
    def _from(cls, geometry: ConvGeometry, matrix: Any, xp: ModuleType,
              weight: Any) -> ConvOperator:
        op = cls.__new__(cls)
        op._set(geometry, matrix, xp, weight)
        return op

    def _set(self, geometry: ConvGeometry, matrix: Any, xp: ModuleType, weight: Any) -> None:
        self.geometry = geometry
        self.matrix = matrix
        self.weight = weight
        self._xp = xp
        self._adjoints = {}
        self.offset = None
        self.name = "conv"

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """The state, with the array module replaced by its name (modules do not pickle)."""
        state = dict(self.__dict__)
        state["_xp"] = "numpy" if self._xp is np else "cupy"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state["_xp"] == "numpy":
            state["_xp"] = np
        else:
            import cupy  # the pickled operator lived on the GPU

            state["_xp"] = cupy
        self.__dict__.update(state)

    # ---------------------------------------------------------------- attributes
    @property
    def xp(self) -> ModuleType:
        """The array module of the weight and matrix (NumPy or CuPy)."""
        return self._xp

    def describe(self) -> str:
        """Kind, shapes and options of the convolution."""
        return self.geometry.describe()

    # ---------------------------------------------------------------- adjoints
    @property
    def T(self) -> ConvOperator:  # noqa: N802 - mirrors ndarray.T
        """The transposed operator (``W.T``), mapping shaped outputs back to inputs."""
        if "T" not in self._adjoints:
            op = ConvOperator._from(self.geometry.T, self.matrix.T, self._xp, self.weight)
            op._adjoints["T"] = self
            self._adjoints["T"] = op
        return self._adjoints["T"]

    @property
    def H(self) -> ConvOperator:  # noqa: N802 - mirrors scipy's .H
        """The adjoint (conjugate transpose ``W^H``); equal to ``.T`` for real dtypes."""
        if self.dtype.kind != "c":
            return self.T
        if "H" not in self._adjoints:
            op = ConvOperator._from(self.geometry.T, self.matrix.conj().T, self._xp,
                                    self.weight)
            op._adjoints["H"] = self
            self._adjoints["H"] = op
        return self._adjoints["H"]

    # ---------------------------------------------------------------- bridges
    def aslinearoperator(self) -> Any:
        """A ``LinearOperator`` (matvec, rmatvec, matmat, adjoint) on the operator's backend.

        ``scipy.sparse.linalg.LinearOperator`` on the CPU,
        ``cupyx.scipy.sparse.linalg.LinearOperator`` on the GPU. It is an instance of a
        module-level class (``convmat.operator.ConvLinearOperator``, or
        ``CupyConvLinearOperator``), so it pickles with the operator it wraps.

        Examples
        --------
        >>> import numpy as np
        >>> A = ConvOperator(np.ones((1, 1, 3)), (1, 8)).aslinearoperator()
        >>> A.shape, A.rmatvec(np.ones(6)).shape
        ((6, 8), (8,))
        """
        name = "ConvLinearOperator" if self._xp is np else "CupyConvLinearOperator"
        return _linear_operator_class(name)(self)

    # ---------------------------------------------------------------- devices
    def to_gpu(self, *, max_bytes: int | None = None) -> ConvOperator:
        """The same operator on the GPU (CuPy): matrix and weight copied, nothing rebuilt.

        Returns ``self`` when it is already there. The bytes copied (matrix and weight) are
        checked first against ``max_bytes`` (default: half of the GPU's free memory, see
        :func:`convmat.to_gpu`); needs CuPy.
        """
        if self._xp is not np:
            return self
        m = self.matrix
        pending = [int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + self.weight.nbytes)]

        def move(obj: Any) -> Any:  # the first move checks the room for both
            need = pending.pop() if pending else 0
            return to_gpu(obj, max_bytes=max_bytes, nbytes=need)

        return self._moved(move)

    def to_cpu(self) -> ConvOperator:
        """The same operator on the CPU (SciPy): the inverse of :meth:`to_gpu`.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator(np.ones((2, 2)), (3, 3))
        >>> op.to_cpu() is op, op.device
        (True, 'cpu')
        """
        return self._moved(to_cpu)

    def _moved(self, move: Any) -> ConvOperator:
        if self.geometry.transposed:  # move the forward operator, keep the view
            if "T" in self._adjoints:
                return self._adjoints["T"]._moved(move).T
            return self._adjoints["H"]._moved(move).H
        weight = move(self.weight)
        xp = array_namespace(weight)
        if xp is self._xp:
            return self
        op = ConvOperator._from(self.geometry, move(self.matrix), xp, weight)
        op.offset = None if self.offset is None else move(self.offset)
        return op

    def with_weight(self, weight: Any, *, max_bytes: int | None = None) -> ConvOperator:
        """The same geometry with another weight: only ``data`` is rebuilt.

        The index arrays are shared with this operator (they depend on the geometry only);
        the new operator owns a copy of ``weight``. ``max_bytes`` bounds the new ``data``
        and the build's workspace, as in :func:`convmat.conv_matrix`.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator(np.ones((2, 2)), (3, 3))
        >>> op2 = op.with_weight(2 * np.ones((2, 2)))
        >>> np.shares_memory(op2.matrix.indices, op.matrix.indices), float(op2.matrix.sum())
        (True, 32.0)
        """
        transposed = self.geometry.transposed
        forward = self.geometry.T if transposed else self.geometry
        same_backend("weight", weight, self._xp, "the operator")
        xp = self._xp
        weight = np.asarray(weight) if xp is np else weight
        expected = forward.weight_shape
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not fit this operator: expected "
                f"{expected}"
            )
        forward = dataclasses.replace(forward, dtype=check_dtype(weight.dtype))
        check_finite(weight, xp)
        check_memory(forward, max_bytes, xp=xp, what="the new data of W",
                     peak=forward.nnz * forward.itemsize + forward.workspace_bytes
                     + forward.layout_bytes)
        weight = _owned(weight, xp)
        base = self.T.matrix if transposed else self.matrix
        data, _, _ = build_csr_arrays(forward, conv_weight(forward, weight), xp, indices=False)
        w = from_arrays(forward, data, base.indices, base.indptr, xp)
        op = ConvOperator._from(forward, w, xp, weight)
        op = op.T if transposed else op
        if self.offset is not None:  # the same bias
            op = ConvOperator._from(op.geometry, op.matrix, xp, op.weight)
            op.offset = self.offset
        return op

    def adjoint_csr(self, *, max_bytes: int | None = None) -> Any:
        """CSR matrix of the adjoint ``W^H`` (``op.H.matrix`` is a CSC view).

        ``W`` itself when ``W^H == W`` (a symmetric kernel with symmetric padding: treat the
        result as read-only); written directly by the builder when ``W^H`` is a convolution
        (stride 1, zero padding: the flipped kernel, see ``ConvGeometry.adjoint``); the
        forward CSR when this operator is an adjoint; otherwise written directly from the
        per-axis transposed plans (:mod:`convmat.transposed`), no conversion of ``W``.
        Sparse products with it run at the speed of ``W @ x``, which a CSC view does not
        always. What it allocates is checked against ``max_bytes`` first (default: half
        of the available memory), as for a build.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator(np.array([[0., 1.], [2., 3.]]), (3, 3))
        >>> (op.adjoint_csr() != op.matrix.T).nnz, op.adjoint_csr().format
        (0, 'csr')
        """
        g = self.geometry
        xp = self._xp
        conj = self.dtype.kind == "c"
        forward = g.T if g.transposed else g
        if g.transposed:  # the adjoint of an adjoint is the forward CSR
            check_memory(forward, max_bytes, xp=xp, what="W^H",
                         peak=forward.nnz * forward.itemsize if conj else 0)
            w = self.matrix.T
            return w.conj() if conj else w
        adjoint = g.adjoint
        if adjoint is None:  # written directly from the transposed plans, no conversion
            check_memory(g.T, max_bytes, xp=xp, what="W^H")
            weight = conv_weight(g, self.weight)
            if conj:  # conj of a sum of taps is the sum of their conj: exact
                weight = weight.conj()
            data, indices, indptr = build_transposed_csr_arrays(g, weight, xp)
            return from_arrays(g, data, indices, indptr, xp, transposed=True)
        flipped = adjoint_weight(g, conv_weight(g, self.weight), xp)
        if conj:
            flipped = flipped.conj()
        if adjoint == dataclasses.replace(g, flip=False) and bool(
                xp.array_equal(flipped, conv_weight(g, self.weight))):
            return self.matrix  # W^H == W (a symmetric kernel, symmetric padding)
        check_memory(adjoint, max_bytes, xp=xp, what="W^H")
        data, indices, indptr = build_csr_arrays(adjoint, flipped, xp)
        return from_arrays(adjoint, data, indices, indptr, xp)

    # ---------------------------------------------------------------- display
    #: Largest matrix (stored entries) that gets a pattern thumbnail in ``_repr_html_``.
    THUMBNAIL_MAX_NNZ = 2_000_000

    def _repr_html_(self) -> str:
        """A small table (geometry, shapes, nnz, density, bytes) and a pattern thumbnail."""
        from html import escape

        from .thumbnail import thumbnail

        g = self.geometry
        kind = f"conv_transpose{g.ndim}d" if g.transposed else f"conv{g.ndim}d"
        rows = [
            ("operator", kind + ("" if self._xp is np else " (CuPy)")),
            ("input shape", g.input_shape),
            ("output shape", g.output_shape),
            ("kernel", g.kernel_size),
            ("stride", g.stride),
            ("padding (lo, hi)", g.padding),
            ("dilation", g.dilation),
            ("groups", g.groups),
            ("padding mode", g.padding_mode),
            ("flip (true convolution)", g.flip),
            ("layout", g.layout),
            ("matrix shape", self.shape),
            ("nnz", f"{self.nnz:,}"),
            ("density", f"{self.nnz / (self.shape[0] * self.shape[1]):.3g}"),
            ("dtype", self.dtype),
            ("bytes", f"{self.nbytes:,} ({format_bytes(self.nbytes)})"),
        ]
        if g.transposed and any(g.output_padding):
            rows.insert(6, ("output padding", g.output_padding))
        table = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th>"
            f"<td style='text-align:left'>{escape(str(v))}</td></tr>"
            for k, v in rows
        )
        image = ""
        if self._xp is np and self.nnz <= self.THUMBNAIL_MAX_NNZ:
            image = (f"<td style='vertical-align:top'><img src='{thumbnail(self.matrix)}' "
                     "alt='sparsity pattern' style='image-rendering:pixelated;"
                     "border:1px solid #ccc'/></td>")
        return (f"<table><tr><td style='vertical-align:top'><table>{table}</table></td>"
                f"{image}</tr></table>")

    def __repr__(self) -> str:
        g = self.geometry
        backend = "" if self._xp is np else ", backend=cupy"
        affine = ", affine" if self.offset is not None else ""
        return (
            f"ConvOperator({g.describe()}; shape={self.shape}, nnz={self.nnz:,}, "
            f"dtype={self.dtype}, {format_bytes(self.nbytes)}{affine}{backend})"
        )


def _bias_offset(bias: Any, geometry: ConvGeometry, xp: ModuleType) -> Any:
    """The bias broadcast over the output: ``(C_out,)`` per channel, a scalar for the shorthand."""
    if bias is None:
        return None
    output_shape, shorthand = geometry.output_shape, geometry.shorthand
    refuse_masked("bias", bias, "the bias")
    same_backend("bias", bias, xp, "the weight")
    b = np.asarray(bias) if xp is np else bias
    if b.dtype.kind not in "biufc":
        raise TypeError(f"bias must be a numeric array, got dtype {b.dtype}")
    channels = 1 if shorthand else output_shape[-1 if geometry.channels_last else 0]
    if b.size != channels or b.ndim > 1:
        expected = "a scalar (one-channel shorthand)" if shorthand else f"({channels},)"
        raise ValueError(f"bias of shape {tuple(b.shape)} does not fit: expected {expected}")
    if not bool(xp.all(xp.isfinite(b))):
        raise ValueError("bias contains NaN or inf")
    ones = (1,) * geometry.ndim
    shape = ones if shorthand else (*ones, channels) if geometry.channels_last else (
        channels, *ones)
    out = xp.broadcast_to(b.reshape(shape), output_shape).copy()
    if xp is np:
        out.flags.writeable = False
    return out


def _owned(weight: Any, xp: ModuleType) -> Any:
    """A private copy of ``weight`` (read-only on the host): an operator owns what it uses.

    ``adjoint_csr`` and ``with_weight`` rebuild from the weight; a caller that changes its
    array afterwards must not change the operator.
    """
    own = xp.array(weight, copy=True)
    if xp is np:
        own.flags.writeable = False
    return own


def _linear_operator_class(name: str) -> Any:
    """``ConvLinearOperator`` (SciPy) or ``CupyConvLinearOperator``, made once per process.

    Module attributes, so that pickle finds them by name (see ``__getattr__``).
    """
    cls = globals().get(name)
    if cls is not None:
        return cls
    import sys

    base: Any = linear_operator_class(np if name == "ConvLinearOperator" else sys.modules.get(
        "cupy") or __import__("cupy"))

    class _Cls(base):
        """A :class:`ConvOperator` as a LinearOperator: products with ``W`` and ``W^H``."""

        def __init__(self, op: ConvOperator) -> None:
            self.op = op
            super().__init__(dtype=op.dtype, shape=op.shape)

        def _matvec(self, x: Any) -> Any:
            return self.op.matrix @ x

        def _rmatvec(self, y: Any) -> Any:
            return self.op.H.matrix @ y

        def _matmat(self, x: Any) -> Any:
            return self.op.matrix @ x

        def _rmatmat(self, y: Any) -> Any:
            return self.op.H.matrix @ y

        def _adjoint(self) -> Any:
            return self.op.H.aslinearoperator()

        def _transpose(self) -> Any:
            return self.op.T.aslinearoperator()

    _Cls.__name__ = _Cls.__qualname__ = name
    _Cls.__module__ = __name__
    globals()[name] = _Cls
    return _Cls


def __getattr__(name: str) -> Any:
    """The LinearOperator classes, made on first use (so unpickling finds them)."""
    if name in ("ConvLinearOperator", "CupyConvLinearOperator"):
        return _linear_operator_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gradient_operator(input_shape: Sequence[int], *, ndim: int | None = None,
                      dtype: Any = np.float64, layout: str = "channels_first",
                      max_bytes: int | None = None) -> ConvOperator:
    """Forward differences along every spatial axis, as one convolution operator.

    ``input_shape`` is ``(C, *spatial)``; give ``ndim=len(input_shape)`` for a spatial-only
    shape (one channel: the operator's ``input_shape`` is then ``(1, *spatial)``, which
    ravels the same). With ``D`` spatial axes the output is ``(C*D, *spatial)``: channel
    ``c*D + d`` holds ``x[c, ..., i+1, ...] - x[c, ..., i, ...]`` along axis ``d``, and zero at
    the last index
    (replicate boundary: a Neumann condition). It is the convolution with weight
    ``(C*D, 1, 2, ..., 2)``, ``groups=C``, padding ``(0, 1)`` per axis, ``'replicate'``
    mode: the ``[-1, 1]`` kernel along each axis. The unused taps of the ``2 x ... x 2``
    kernel are stored as zeros (the pattern depends on the geometry only).

    ``layout='channels_last'`` takes ``(*spatial, C)`` and gives ``(*spatial, C*D)``, channel
    ``c*D + d`` last, as the convolutions of that layout.

    Examples
    --------
    >>> import numpy as np
    >>> D = gradient_operator((2, 3), ndim=2)
    >>> D.output_shape
    (2, 2, 3)
    >>> (D @ np.array([[[0., 1., 3.], [4., 4., 4.]]])).tolist() == [
    ...     [[4, 3, 1], [0, 0, 0]],   # channel 0: differences down the rows
    ...     [[1, 2, 0], [0, 0, 0]]]   # channel 1: differences along the columns
    True
    """
    shape = tuple(input_shape)
    last = layout == "channels_last"
    if last and len(shape) >= 2:  # (*spatial, C): plan on (C, *spatial), build channels last
        shape = (shape[-1], *shape[:-1])
    if ndim is None:
        ndim = len(shape) - 1
    if ndim not in (len(shape), len(shape) - 1) or ndim < 1:
        raise ValueError(
            f"ndim={ndim} spatial axes does not fit input_shape={shape}: use len(input_shape) "
            "(spatial only) or len(input_shape) - 1 (channels first)"
        )
    spatial = shape[len(shape) - ndim:]
    channels = 1 if ndim == len(shape) else shape[0]
    kernels = np.zeros((ndim,) + (2,) * ndim, dtype=dtype)
    for d in range(ndim):
        kernels[(d,) + (0,) * ndim] = -1
        kernels[(d,) + tuple(1 if e == d else 0 for e in range(ndim))] = 1
    weight = np.tile(kernels[:, None], (channels, 1) + (1,) * ndim)
    full_shape = (channels, *spatial)
    if last:  # Keras' weight layout (*kernel, C_in // groups, C_out), input (*spatial, C)
        weight = np.moveaxis(weight, (0, 1), (-1, -2))
        full_shape = (*spatial, channels)
    return ConvOperator(weight, full_shape, padding=((0, 1),) * ndim, groups=channels,
                        padding_mode="replicate", layout=layout, max_bytes=max_bytes)
