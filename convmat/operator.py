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
from .csr import is_sparse
from .geometry import ConvGeometry
from .guard import check_memory
from .indices import build_csr_arrays, default_threads
from .matrix import (
    adjoint_weight,
    assemble,
    check_finite,
    conv_weight,
    from_arrays,
    prepare_conv,
    prepare_conv_transpose,
)
from .products import RowBlocks
from .structured import StructuredConv, check_method, check_structured, choose_method
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
    weight: Any
    _core: _Core
    _conj: bool
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
        method: str = "auto",
        max_bytes: int | None = None,
    ) -> None:
        method = check_method(method)
        weight, xp, geometry = prepare_conv(
            weight, input_shape, stride=stride, padding=padding, dilation=dilation,
            groups=groups, padding_mode=padding_mode, flip=flip, origin=origin, layout=layout,
        )
        offset = _bias_offset(bias, geometry, xp)
        if method == "csr":
            check_memory(geometry, max_bytes, xp=xp)
        core = _Core(geometry, _owned(weight, xp), xp, method, max_bytes)
        if method == "csr":
            core.csr = assemble(geometry, core.weight, xp)
        self._view(geometry, core, conj=False)
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
        method: str = "auto",
        max_bytes: int | None = None,
    ) -> ConvOperator:
        """The transposed convolution, weight ``(C_in, C_out // groups, *kernel)``.

        Arguments as :func:`convmat.conv_transpose_matrix` (channels last: weight
        ``(*kernel, C_out // groups, C_in)``, input ``(*spatial, C_in)``); the result is
        the ``.T`` of the matching convolution operator (its ``matrix`` a transposed CSC
        view of ``W``, no copy). ``bias`` ``(C_out,)`` makes it affine, as for
        :class:`ConvOperator`; ``method`` as there.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator.transposed(np.ones((10, 3, 4, 4)), (10, 32, 32),
        ...                              stride=2, padding=1)
        >>> op.output_shape
        (3, 64, 64)
        """
        method = check_method(method)
        weight, xp, geometry = prepare_conv_transpose(
            weight, input_shape, stride=stride, padding=padding, output_padding=output_padding,
            dilation=dilation, groups=groups, output_size=output_size, padding_mode=padding_mode,
            flip=flip, origin=origin, layout=layout,
        )
        offset = _bias_offset(bias, geometry, xp)
        forward = geometry.T
        if method == "csr":
            check_memory(forward, max_bytes, xp=xp)
        core = _Core(forward, _owned(weight, xp), xp, method, max_bytes)
        if method == "csr":
            core.csr = assemble(forward, core.weight, xp)
        op = cls.__new__(cls)
        op._view(geometry, core, conj=False)
        op.offset = offset
        return op

    def _view(self, geometry: ConvGeometry, core: _Core, *, conj: bool) -> None:
        """Make this operator ``W``, ``W^T``, ``W^H`` or ``conj(W)`` of ``core``'s convolution."""
        self.geometry = geometry
        self._core = core
        self._conj = conj
        self.weight = core.weight
        self._adjoints = {}
        self.offset = None
        self.name = "conv"

    @classmethod
    def _from_matrix(cls, geometry: ConvGeometry, matrix: Any, xp: ModuleType,
                     weight: Any, method: str = "auto") -> ConvOperator:
        """A forward (or transposed) operator whose forward CSR ``matrix`` is built."""
        forward = geometry.T if geometry.transposed else geometry
        core = _Core(forward, weight, xp, method, None)
        core.csr = matrix
        op = cls.__new__(cls)
        op._view(geometry, core, conj=False)
        return op

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """The state, with the array module replaced by its name (modules do not pickle)."""
        state = dict(self.__dict__)
        state.pop("_linear", None)
        return state

    # ---------------------------------------------------------------- attributes
    @property
    def xp(self) -> ModuleType:
        """The array module of the weight and matrix (NumPy or CuPy)."""
        return self._core.xp

    @property
    def dtype(self) -> np.dtype:
        """Dtype of ``W`` (the weight's)."""
        return np.dtype(self._core.forward.dtype)

    @property
    def nnz(self) -> int:
        """Stored entries of ``W`` (from the geometry: the matrix need not exist)."""
        return self.geometry.nnz

    @property
    def nbytes(self) -> int:
        """Bytes of ``W``'s CSR arrays, built or not (``built`` says which)."""
        return self.geometry.nbytes

    @property
    def built(self) -> bool:
        """Whether ``W`` has been built (only ``.matrix`` and the ``csr`` path build it)."""
        return self._core.csr is not None

    @property
    def matrix(self) -> Any:
        """``W`` (``W.T``, ``W^H`` for adjoints: transposed views), built on first use.

        The build is checked by the memory guard first (the ``max_bytes`` the operator
        was made with). Structured products never need it.
        """
        core = self._core
        w = core.matrix()
        transposed = self.geometry.transposed
        if not transposed and not self._conj:
            return w
        key = ("T" if transposed else "") + ("H" if self._conj else "")
        cached = core.views.get(key)
        if cached is None:
            cached = w.conj() if self._conj else w
            cached = cached.T if transposed else cached
            core.views[key] = cached
        return cached

    @property
    def method(self) -> str:
        """The path ``op @ x`` takes for one input: ``'csr'``, ``'direct'`` or ``'fft'``.

        Pinned by the ``method`` argument, else chosen by the cost model
        (:func:`convmat.structured.choose_method`); batches may take another path
        (:meth:`method_for`).
        """
        return self.method_for(1)

    def method_for(self, batch: int) -> str:
        """The path for a batch of ``batch`` inputs (pinned, or the cost model's choice)."""
        return self._core.method_for(batch)

    def with_method(self, method: str) -> ConvOperator:
        """The same operator with the product path pinned (``'auto'`` to let the model choose).

        Shares the weight and, once built, ``W`` with this operator.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator(np.ones((64, 64, 3, 3)), (64, 32, 32), padding=1)
        >>> op.method, op.with_method("fft").method
        ('direct', 'fft')
        """
        method = check_method(method)
        core = self._core
        new = _Core(core.forward, core.weight, core.xp, method, core.max_bytes)
        new.csr = core.csr
        if method == "csr" and new.csr is None:
            new.matrix()
        op = ConvOperator.__new__(ConvOperator)
        op._view(self.geometry, new, conj=self._conj)
        op.offset = self.offset
        return op

    def describe(self) -> str:
        """Kind, shapes and options of the convolution."""
        return self.geometry.describe()

    # ---------------------------------------------------------------- adjoints
    @property
    def T(self) -> ConvOperator:  # noqa: N802 - mirrors ndarray.T
        """The transposed operator (``W.T``), mapping shaped outputs back to inputs."""
        if "T" not in self._adjoints:
            op = ConvOperator.__new__(ConvOperator)
            op._view(self.geometry.T, self._core, conj=self._conj)
            op._adjoints["T"] = self.linear
            self._adjoints["T"] = op
        return self._adjoints["T"]

    @property
    def H(self) -> ConvOperator:  # noqa: N802 - mirrors scipy's .H
        """The adjoint (conjugate transpose ``W^H``); equal to ``.T`` for real dtypes."""
        if self.dtype.kind != "c":
            return self.T
        if "H" not in self._adjoints:
            op = ConvOperator.__new__(ConvOperator)
            op._view(self.geometry.T, self._core, conj=not self._conj)
            op._adjoints["H"] = self.linear
            self._adjoints["H"] = op
        return self._adjoints["H"]

    @property
    def linear(self) -> ConvOperator:
        """The linear part: ``self`` without the bias (made once)."""
        if self.offset is None:
            return self
        if "_linear" not in self.__dict__:
            op = ConvOperator.__new__(ConvOperator)
            op._view(self.geometry, self._core, conj=self._conj)
            self.__dict__["_linear"] = op
        return self.__dict__["_linear"]

    # ---------------------------------------------------------------- products
    def _flat(self, x: Any) -> Any:
        """``op @ x`` for a flat vector ``(n,)`` or a block of columns ``(n, k)``."""
        batch = 1 if x.ndim == 1 else int(x.shape[1])
        if is_sparse(x) or self.method_for(batch) == "csr":
            if is_sparse(x) or self.xp is not np:
                return self.matrix @ x
            if not self.geometry.transposed:  # W @ x (conj(W) @ x = conj(W @ conj(x)))
                if self._conj:
                    return np.conjugate(self._core.row_blocks() @ np.conjugate(x))
                return self._core.row_blocks() @ x
            return self._core.row_blocks().rmatmul(x, conjugate=self._conj)
        ins = self.input_shape
        if x.ndim == 1:
            return self._structured(x.reshape((1, *ins))).reshape(-1)
        out = self._structured(x.T.reshape((batch, *ins)))
        return out.reshape(batch, -1).T

    def _batch(self, x: Any) -> Any:
        """``op @ x`` for a batch ``(N, *input_shape)``: one structured product."""
        if self.method_for(int(x.shape[0])) == "csr":
            return super()._batch(x)
        return self._structured(x)

    def _structured(self, x: Any) -> Any:
        """The direct or FFT product of a batch ``(N, *input_shape)`` in this layout."""
        core, g = self._core, self.geometry
        xp, forward = core.xp, core.forward
        batch = int(x.shape[0])
        method = self.method_for(batch)
        check_structured(forward, method, batch, np.result_type(self.dtype, x.dtype),
                         core.max_bytes, xp)
        return core.plan().apply(x, method, adjoint=g.transposed, conjugate=self._conj)

    # ---------------------------------------------------------------- bridges
    def aslinearoperator(self) -> Any:
        """A ``LinearOperator`` (matvec, rmatvec, matmat, adjoint) on the operator's backend.

        ``scipy.sparse.linalg.LinearOperator`` on the CPU,
        ``cupyx.scipy.sparse.linalg.LinearOperator`` on the GPU. It is an instance of a
        module-level class (``convmat.operator.ConvLinearOperator``, or
        ``CupyConvLinearOperator``), so it pickles with the operator it wraps. Its products
        take the operator's path (:attr:`method`).

        Examples
        --------
        >>> import numpy as np
        >>> A = ConvOperator(np.ones((1, 1, 3)), (1, 8)).aslinearoperator()
        >>> A.shape, A.rmatvec(np.ones(6)).shape
        ((6, 8), (8,))
        """
        name = "ConvLinearOperator" if self.xp is np else "CupyConvLinearOperator"
        return _linear_operator_class(name)(self)

    # ---------------------------------------------------------------- devices
    def to_gpu(self, *, max_bytes: int | None = None) -> ConvOperator:
        """The same operator on the GPU (CuPy): weight and (if built) matrix copied.

        Returns ``self`` when it is already there. The bytes copied are checked first
        against ``max_bytes`` (default: half of the GPU's free memory, see
        :func:`convmat.to_gpu`); needs CuPy.
        """
        if self.xp is not np:
            return self
        m = self._core.csr
        need = int(self.weight.nbytes)
        if m is not None:
            need += int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)
        pending = [need]

        def move(obj: Any) -> Any:  # the first move checks the room for everything
            return to_gpu(obj, max_bytes=max_bytes, nbytes=pending.pop() if pending else 0)

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
        core = self._core
        weight = move(core.weight)
        xp = array_namespace(weight)
        if xp is core.xp:
            return self
        new = _Core(core.forward, weight, xp, core.method, core.max_bytes)
        new.csr = None if core.csr is None else move(core.csr)
        op = ConvOperator.__new__(ConvOperator)
        op._view(self.geometry, new, conj=self._conj)
        op.offset = None if self.offset is None else move(self.offset)
        return op

    def with_weight(self, weight: Any, *, max_bytes: int | None = None) -> ConvOperator:
        """The same geometry with another weight: only ``data`` is rebuilt (if ``W`` was).

        The index arrays are shared with this operator (they depend on the geometry only);
        the new operator owns a copy of ``weight``. ``max_bytes`` bounds the new ``data``
        and the build's workspace, as in :func:`convmat.conv_matrix`. When ``W`` was never
        built, nothing is: the new operator is as lazy as this one.

        Examples
        --------
        >>> import numpy as np
        >>> op = ConvOperator(np.ones((2, 2)), (3, 3))
        >>> op.matrix.nnz
        16
        >>> op2 = op.with_weight(2 * np.ones((2, 2)))
        >>> np.shares_memory(op2.matrix.indices, op.matrix.indices), float(op2.matrix.sum())
        (True, 32.0)
        """
        core = self._core
        forward = core.forward
        xp = core.xp
        same_backend("weight", weight, xp, "the operator")
        weight = np.asarray(weight) if xp is np else weight
        expected = forward.weight_shape
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not fit this operator: expected "
                f"{expected}"
            )
        forward = dataclasses.replace(forward, dtype=check_dtype(weight.dtype))
        check_finite(weight, xp)
        if core.csr is not None:
            check_memory(forward, max_bytes, xp=xp, what="the new data of W",
                         peak=forward.nnz * forward.itemsize + forward.workspace_bytes
                         + forward.layout_bytes)
        new = _Core(forward, _owned(weight, xp), xp, core.method,
                    core.max_bytes if max_bytes is None else max_bytes)
        if core.csr is not None:
            base = core.csr
            data, _, _ = build_csr_arrays(forward, conv_weight(forward, new.weight), xp,
                                          indices=False)
            new.csr = from_arrays(forward, data, base.indices, base.indptr, xp,
                                  transposed=False)
        geometry = forward.T if self.geometry.transposed else forward
        op = ConvOperator.__new__(ConvOperator)
        op._view(geometry, new, conj=self._conj)
        op.offset = self.offset  # the same bias
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
        core = self._core
        xp = core.xp
        conj = self.dtype.kind == "c" and not self._conj  # the adjoint of conj(W) is W^T
        forward = core.forward
        if g.transposed:  # the adjoint of an adjoint is the forward CSR
            check_memory(forward, max_bytes, xp=xp, what="W^H",
                         peak=forward.nnz * forward.itemsize if conj else 0)
            w = core.matrix()
            return w.conj() if conj else w
        adjoint = forward.adjoint
        weight = conv_weight(forward, core.weight)
        if adjoint is None:  # written directly from the transposed plans, no conversion
            check_memory(forward.T, max_bytes, xp=xp, what="W^H")
            if conj:  # conj of a sum of taps is the sum of their conj: exact
                weight = weight.conj()
            data, indices, indptr = build_transposed_csr_arrays(forward, weight, xp)
            return from_arrays(forward, data, indices, indptr, xp, transposed=True)
        flipped = adjoint_weight(forward, weight, xp)
        if conj:
            flipped = flipped.conj()
        if adjoint == dataclasses.replace(forward, flip=False) and bool(
                xp.array_equal(flipped, weight)):
            return core.matrix()  # W^H == W (a symmetric kernel, symmetric padding)
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
            ("operator", kind + ("" if self.xp is np else " (CuPy)")),
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
            ("product path", self.method + ("" if self._core.method == "auto" else " (pinned)")),
            ("matrix shape", self.shape),
            ("nnz", f"{self.nnz:,}"),
            ("density", f"{self.nnz / (self.shape[0] * self.shape[1]):.3g}"),
            ("dtype", self.dtype),
            ("bytes", f"{self.nbytes:,} ({format_bytes(self.nbytes)})"
                      + ("" if self.built else ", not built")),
        ]
        if g.transposed and any(g.output_padding):
            rows.insert(6, ("output padding", g.output_padding))
        table = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th>"
            f"<td style='text-align:left'>{escape(str(v))}</td></tr>"
            for k, v in rows
        )
        image = ""
        if self.xp is np and self.nnz <= self.THUMBNAIL_MAX_NNZ:
            image = (f"<td style='vertical-align:top'><img src='{thumbnail(self.matrix)}' "
                     "alt='sparsity pattern' style='image-rendering:pixelated;"
                     "border:1px solid #ccc'/></td>")
        return (f"<table><tr><td style='vertical-align:top'><table>{table}</table></td>"
                f"{image}</tr></table>")

    def __repr__(self) -> str:
        g = self.geometry
        backend = "" if self.xp is np else ", backend=cupy"
        affine = ", affine" if self.offset is not None else ""
        built = "" if self.built else " (not built)"
        return (
            f"ConvOperator({g.describe()}; shape={self.shape}, nnz={self.nnz:,}, "
            f"dtype={self.dtype}, {format_bytes(self.nbytes)}{built}, "
            f"method={self.method}{affine}{backend})"
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


class _Core:
    """What ``W``, ``W^T``, ``W^H`` and ``conj(W)`` of one convolution share.

    The forward geometry, the owned weight, the requested path, the memory limit, and what
    is made on first use: the forward CSR (``csr``), its transposed and conjugated views,
    its row split over threads, and the structured products' plan.
    """

    def __init__(self, forward: ConvGeometry, weight: Any, xp: ModuleType, method: str,
                 max_bytes: int | None) -> None:
        self.forward = forward
        self.weight = weight
        self.xp = xp
        self.method = method
        self.max_bytes = max_bytes
        self.csr: Any = None
        self.views: dict[str, Any] = {}
        self.chosen: dict[int, str] = {}
        self._plan: StructuredConv | None = None
        self._blocks: RowBlocks | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["xp"] = "numpy" if self.xp is np else "cupy"
        state["views"], state["_plan"], state["_blocks"] = {}, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state["xp"] == "numpy":
            state["xp"] = np
        else:
            import cupy  # the pickled operator lived on the GPU

            state["xp"] = cupy
        self.__dict__.update(state)

    def matrix(self) -> Any:
        """The forward CSR, built (under the memory guard) on first use."""
        if self.csr is None:
            check_memory(self.forward, self.max_bytes, xp=self.xp)
            self.csr = assemble(self.forward, self.weight, self.xp)
        return self.csr

    def row_blocks(self) -> RowBlocks:
        """The forward CSR split by rows over the thread pool (``W @ x`` on threads)."""
        if self._blocks is None:
            self._blocks = RowBlocks(self.matrix(), default_threads())
        return self._blocks

    def plan(self) -> StructuredConv:
        """The structured products' plan (padding maps per axis), made once."""
        if self._plan is None:
            self._plan = StructuredConv(self.forward, conv_weight(self.forward, self.weight),
                                        self.xp)
        return self._plan

    def method_for(self, batch: int) -> str:
        """The pinned path, or the cost model's choice for ``batch`` inputs (cached)."""
        if self.method != "auto":
            return self.method
        if batch not in self.chosen:
            self.chosen[batch] = choose_method(self.forward, batch, xp=self.xp,
                                               max_bytes=self.max_bytes,
                                               have_matrix=self.csr is not None)
        return self.chosen[batch]


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
            return self.op._flat(x)

        def _rmatvec(self, y: Any) -> Any:
            return self.op.H._flat(y)

        def _matmat(self, x: Any) -> Any:
            return self.op._flat(x)

        def _rmatmat(self, y: Any) -> Any:
            return self.op.H._flat(y)

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
