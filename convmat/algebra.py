"""The operator algebra: linear and affine maps between shaped arrays, composed lazily.

Every convmat operator is a :class:`scipy.sparse.linalg.LinearOperator` (so SciPy's solvers
take it as is) that also knows the shapes it maps, ``input_shape -> output_shape``, and
applies to flat vectors, shaped inputs, batches ``(N, *input_shape)`` and blocks of columns.
Operators compose, add, scale, stack and transpose:

========================  ==========================================================
``B @ A``                 :class:`ProductOperator`: ``x -> B (A x)``
``A + B``, ``A - B``      :class:`SumOperator`
``alpha * A``, ``-A``     :class:`ScaledOperator`
``vstack([A, B])``        :class:`StackedOperator`: outputs stacked (same input)
``hstack([A, B])``        :class:`StackedOperator`: inputs stacked, outputs summed
``A.T``, ``A.H``          transposed and conjugate-transposed operators
``A.reshape(...)``        the same map, other shapes of its input or output
========================  ==========================================================

A composite applies its parts one after another: no product is formed to apply it. Its
``.matrix`` is the exact sparse matrix, formed on demand (and kept) by SciPy's (or CuPy's)
sparse product, sum and stack, each step checked by the memory guard before it allocates
(:mod:`convmat.csr`), and canonical. ``to_matrix(max_bytes=...)`` forms it under a limit.

An operator may be *affine*, ``x -> A x + b``: ``.offset`` (shaped like the output, or None)
is ``b``, ``op @ x`` applies the linear part ``A`` (whose matrix is ``.matrix``) and
``op(x)`` the whole map. Compositions compose the offsets: ``(B o A)(x) = B A x + (B a + b)``;
sums add them, scalings scale them, stacks stack (vertically) or add (horizontally) them.
``.T`` and ``.H`` are the transposes of the linear part (an affine map has none of its own),
and ``.linear`` drops the offset.

Shapes are checked when operators are combined: a composition needs the inner output to
have as many entries as the outer input, with the same shape up to axes of size one, or one
of them flat (C-order raveling is convmat's convention); the error names both shapes.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .backend import (
    array_namespace,
    csr_container,
    linear_operator_class,
    refuse_masked,
    same_backend,
    to_cpu,
    to_gpu,
)
from .csr import (
    as_csr,
    guarded_product,
    guarded_scale,
    guarded_stack,
    guarded_sum,
    is_sparse,
)

__all__ = [
    "MatrixOperator",
    "Operator",
    "ProductOperator",
    "ReshapedOperator",
    "ScaledOperator",
    "StackedOperator",
    "SumOperator",
    "hstack",
    "identity_operator",
    "vstack",
]

#: dtypes an operator's matrix may have (those SciPy and CuPy sparse both support).
OPERATOR_DTYPES = ("float32", "float64", "complex64", "complex128")


def _shape_tuple(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, str) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}")
    out = tuple(int(s) for s in shape)
    if any(s < 0 for s in out):
        raise ValueError(f"{name}={out} has a negative size")
    return out


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def shapes_fit(produced: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether an array of shape ``produced`` may be read as one of shape ``expected``.

    Same number of entries, and the same shape up to axes of size one, or either is flat.

    Examples
    --------
    >>> shapes_fit((3, 4, 4), (48,)), shapes_fit((1, 4, 4), (4, 4)), shapes_fit((4, 2), (2, 4))
    (True, True, False)
    """
    if math.prod(produced) != math.prod(expected):
        return False
    return (len(produced) <= 1 or len(expected) <= 1
            or _squeezed(produced) == _squeezed(expected))


class Operator(LinearOperator):
    """A linear (or affine) map between shaped arrays: the base of every convmat operator.

    Subclasses give ``shape``, ``dtype``, ``input_shape``, ``output_shape`` and the flat
    product ``_flat(x)`` (``x`` of shape ``(n,)`` or ``(n, k)``, dense or sparse), plus
    ``_transpose`` / ``_adjoint``, ``to_matrix`` and ``_moved`` (device moves).
    """

    # Let NumPy defer `ndarray @ op` / `ndarray * op` to this class.
    __array_ufunc__ = None
    #: The affine offset ``b`` (shaped like the output), or None for a linear map.
    offset: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        """Shape of one input."""
        raise NotImplementedError

    @property
    def output_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        """Shape of one output."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        """``(rows, cols)`` of the matrix."""
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:  # pragma: no cover - abstract
        """Dtype of the map."""
        raise NotImplementedError

    # ---------------------------------------------------------------- subclass interface
    def _flat(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:  # pragma: no cover
        """The sparse matrix of the linear part, formed under ``max_bytes``."""
        raise NotImplementedError

    def _moved(self, move: Callable[[Any], Any]) -> Operator:  # pragma: no cover
        raise NotImplementedError

    @property
    def xp(self) -> ModuleType:  # pragma: no cover - abstract
        """The array module of the operator's data (NumPy or CuPy)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- attributes
    @property
    def device(self) -> str:
        """``'cpu'`` (NumPy/SciPy) or ``'gpu'`` (CuPy)."""
        return "cpu" if self.xp is np else "gpu"

    @property
    def linear(self) -> Operator:
        """The linear part (``self`` when there is no offset; made once)."""
        if self.offset is None:
            return self
        if "_linear" not in self.__dict__:
            self.__dict__["_linear"] = _Linear(self)
        return self.__dict__["_linear"]

    def describe(self) -> str:
        """What the operator is, in a few words (its kind and shapes)."""
        return f"{type(self).__name__}: {self.input_shape} -> {self.output_shape}"

    def __repr__(self) -> str:
        affine = ", affine" if self.offset is not None else ""
        backend = "" if self.xp is np else ", backend=cupy"
        return f"<{self.describe()}; shape={self.shape}, dtype={self.dtype}{affine}{backend}>"

    # ---------------------------------------------------------------- LinearOperator hooks
    def _matvec(self, x: Any) -> Any:
        return self._flat(x)

    def _matmat(self, x: Any) -> Any:
        return self._flat(x)

    def _rmatvec(self, x: Any) -> Any:
        return self.H._flat(x)

    def _rmatmat(self, x: Any) -> Any:
        return self.H._flat(x)

    def _transpose(self) -> Operator:
        return self.T

    def _adjoint(self) -> Operator:
        return self.H

    @property
    def T(self) -> Operator:  # noqa: N802 - mirrors ndarray.T
        """The transposed linear map (maps shaped outputs back to inputs)."""
        return self._cached_adjoint("T")

    @property
    def H(self) -> Operator:  # noqa: N802 - mirrors scipy's .H
        """The adjoint (conjugate transpose) of the linear map; ``.T`` for real dtypes."""
        if np.dtype(self.dtype).kind != "c":
            return self.T
        return self._cached_adjoint("H")

    def _cached_adjoint(self, kind: str) -> Operator:
        cache = self.__dict__.setdefault("_adjoints", {})
        if kind not in cache:
            op = self._make_adjoint(conjugate=kind == "H")
            op.__dict__.setdefault("_adjoints", {})[kind] = self.linear
            cache[kind] = op
        return cache[kind]

    def _make_adjoint(self, conjugate: bool) -> Operator:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- application
    def __matmul__(self, x: Any) -> Any:
        if isinstance(x, Operator):
            return ProductOperator([self, x])
        return self.apply(x)

    def __rmatmul__(self, x: Any) -> Any:
        if isinstance(x, Operator):
            return ProductOperator([x, self])
        return NotImplemented

    def __call__(self, x: Any) -> Any:
        """The whole (affine) map: ``self @ x + offset``, in the layout of ``x``."""
        y, layout = self._apply(x)
        if self.offset is None:
            return y
        b = self.offset
        if layout in ("shaped", "batch"):
            return y + b
        flat = b.reshape(-1)
        return y + (flat if layout == "vector" else flat[:, None])

    def apply(self, x: Any) -> Any:
        """The linear part applied to a vector, a shaped input, a batch or a block of columns.

        ``x`` may be a flat vector ``(n,)``, one input ``input_shape``, a batch
        ``(N, *input_shape)`` (returns ``(N, *output_shape)``) or a block of columns
        ``(n, k)`` (returns ``(m, k)``); a 2-D array that fits both a batch and a block of
        columns is read as a batch. A sparse block of columns gives a sparse product.
        NumPy masked arrays are refused (the product would use the values under the mask).
        """
        return self._apply(x)[0]

    def _apply(self, x: Any) -> tuple[Any, str]:
        """``(self @ x, layout)``, layout one of vector, shaped, batch, columns."""
        rows, cols = self.shape
        xp = self.xp
        if is_sparse(x):
            same_backend("x", x, xp, "the operator")
            if len(x.shape) != 2 or x.shape[0] != cols:
                raise ValueError(
                    f"sparse x of shape {tuple(x.shape)} does not fit the operator "
                    f"{rows}x{cols}: a sparse x must be a block of columns ({cols}, k)")
            return self._flat(x), "columns"
        refuse_masked("x", x, "W @ x")
        same_backend("x", x, xp, "the operator")
        x = np.asarray(x) if xp is np else x
        if x.dtype.kind not in "biufc":
            raise TypeError(f"x must be a numeric array, got dtype {x.dtype}")
        ins, outs = self.input_shape, self.output_shape
        if x.ndim == 1 and x.shape[0] == cols:
            return self._flat(x), "vector"
        if tuple(x.shape) == ins:
            return self._flat(x.reshape(-1)).reshape(outs), "shaped"
        if x.ndim == len(ins) + 1 and tuple(x.shape[1:]) == ins:
            return self._batch(x), "batch"
        if x.ndim == 2 and x.shape[0] == cols:
            return self._flat(x), "columns"
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not fit the operator {rows}x{cols}: expected a "
            f"vector ({cols},), an input of shape {ins}, a batch (N, *{ins}) or a block of "
            f"columns ({cols}, k)"
        )

    def _batch(self, x: Any) -> Any:
        """``self @ x`` for a batch ``(N, *input_shape)``: ``(N, *output_shape)``.

        By default the batch is a block of columns; operators with a batched product of
        their own (a convolution's structured paths) override this.
        """
        rows, cols = self.shape
        flat = x.reshape(x.shape[0], cols)
        return self._flat(flat.T).T.reshape((x.shape[0], *self.output_shape))

    # ---------------------------------------------------------------- algebra
    def __add__(self, other: Any) -> Any:
        if isinstance(other, Operator):
            return SumOperator([self, other])
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, numbers.Number) and other == 0:  # sum([A, B, ...])
            return self
        return NotImplemented

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, Operator):
            return SumOperator([self, ScaledOperator(-1, other)])
        return NotImplemented

    def __neg__(self) -> Operator:
        return ScaledOperator(-1, self)

    def __pos__(self) -> Operator:
        return self

    def __mul__(self, alpha: Any) -> Any:
        if _is_scalar(alpha):
            return ScaledOperator(alpha, self)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, alpha: Any) -> Any:
        if _is_scalar(alpha):
            return ScaledOperator(1 / alpha, self)
        return NotImplemented

    def __pow__(self, p: Any) -> Any:
        if not isinstance(p, numbers.Integral) or isinstance(p, bool) or p < 1:
            raise ValueError(f"an operator's power must be an int >= 1, got {p!r}")
        return ProductOperator([self] * int(p))

    def reshape(self, input_shape: Sequence[int] | None = None,
                output_shape: Sequence[int] | None = None) -> Operator:
        """The same map, reading its input as ``input_shape`` and shaping its output.

        Each new shape must have the same number of entries as the old one.

        Examples
        --------
        >>> import numpy as np
        >>> I = identity_operator((2, 3))
        >>> I.reshape(output_shape=(6,)).output_shape
        (6,)
        """
        return ReshapedOperator(self, input_shape, output_shape)

    # ---------------------------------------------------------------- bridges and devices
    def aslinearoperator(self) -> Any:
        """A ``LinearOperator`` on the operator's backend.

        On the CPU the operator itself (it is a ``scipy.sparse.linalg.LinearOperator``);
        on the GPU a ``cupyx.scipy.sparse.linalg.LinearOperator`` over its products.
        """
        if self.xp is np:
            return self
        return _gpu_linear_operator(self)

    def to_gpu(self, *, max_bytes: int | None = None) -> Operator:
        """The same operator on the GPU (CuPy); ``max_bytes`` bounds each array moved."""
        if self.xp is not np:
            return self
        return self._moved(lambda a: to_gpu(a, max_bytes=max_bytes))

    def to_cpu(self) -> Operator:
        """The same operator on the CPU (SciPy): the inverse of :meth:`to_gpu`."""
        if self.xp is np:
            return self
        return self._moved(to_cpu)


def _is_scalar(alpha: Any) -> bool:
    return (isinstance(alpha, numbers.Number) and not isinstance(alpha, bool)) or (
        isinstance(alpha, np.generic) and np.asarray(alpha).dtype.kind in "iufc")


def _check_offset(offset: Any, shape: tuple[int, ...], xp: ModuleType) -> Any:
    if offset is None:
        return None
    same_backend("offset", offset, xp, "the operator")
    refuse_masked("offset", offset, "the offset")
    b = np.asarray(offset) if xp is np else offset
    if b.dtype.kind not in "biufc":
        raise TypeError(f"offset must be a numeric array, got dtype {b.dtype}")
    if b.size != math.prod(shape):
        raise ValueError(
            f"offset of shape {tuple(b.shape)} ({b.size} entries) does not fit the output "
            f"shape {shape} ({math.prod(shape)} entries)")
    out = xp.array(b.reshape(shape), copy=True)
    if xp is np:
        out.flags.writeable = False
    return out


class MatrixOperator(Operator):
    """An explicit sparse matrix as an operator between shaped arrays.

    Parameters
    ----------
    matrix : sparse matrix or 2-D array
        SciPy or CuPy sparse (kept as given), or a dense 2-D array (stored as CSR).
    input_shape, output_shape : tuple of int, optional
        Shapes of one input and one output (default: flat, ``(cols,)`` and ``(rows,)``).
    offset : array, optional
        The affine offset ``b`` (``op(x) = matrix @ x + b``), with ``prod(output_shape)``
        entries.
    name : str
        What the operator is, for its ``repr``.

    Examples
    --------
    >>> import numpy as np
    >>> op = MatrixOperator(np.array([[1., 2.], [3., 4.]]), (2,), (2, 1), offset=[1., 0.])
    >>> (op @ np.ones((5, 2))).shape                              # a batch of 5 inputs
    (5, 2, 1)
    >>> op(np.array([1., 1.]))                                   # the affine map
    array([4., 7.])
    >>> (op.linear @ op.reshape(output_shape=(2,))).matrix.toarray()
    array([[ 7., 10.],
           [15., 22.]])
    """

    matrix: Any

    def __init__(self, matrix: Any, input_shape: Sequence[int] | None = None,
                 output_shape: Sequence[int] | None = None, *, offset: Any = None,
                 name: str = "matrix") -> None:
        if not is_sparse(matrix):
            refuse_masked("matrix", matrix, "the operator")
            xp = array_namespace(matrix)
            dense = np.asarray(matrix) if xp is np else matrix
            if dense.ndim != 2:
                raise ValueError(f"matrix must be 2-D, got shape {tuple(dense.shape)}")
            if dense.dtype.kind not in "biufc":
                raise TypeError(f"matrix must be numeric, got dtype {dense.dtype}")
            if dense.dtype.kind in "biu":
                dense = dense.astype(np.float64)
            matrix = csr_container(xp)(dense)
        if np.dtype(matrix.dtype).name not in OPERATOR_DTYPES:
            raise TypeError(f"matrix dtype {matrix.dtype} is not supported; use one of "
                            f"{', '.join(OPERATOR_DTYPES)}")
        rows, cols = (int(s) for s in matrix.shape)
        ins = (cols,) if input_shape is None else _shape_tuple("input_shape", input_shape)
        outs = (rows,) if output_shape is None else _shape_tuple("output_shape", output_shape)
        if math.prod(ins) != cols:
            raise ValueError(f"input_shape={ins} has {math.prod(ins)} entries but the matrix "
                             f"has {cols} columns")
        if math.prod(outs) != rows:
            raise ValueError(f"output_shape={outs} has {math.prod(outs)} entries but the "
                             f"matrix has {rows} rows")
        self._set_matrix(matrix, ins, outs, name)
        self.offset = _check_offset(offset, outs, self.xp)

    def _set_matrix(self, matrix: Any, ins: tuple[int, ...], outs: tuple[int, ...],
                    name: str) -> None:
        self.matrix = matrix
        self._shapes = (ins, outs)
        self.name = name

    @classmethod
    def _wrap(cls, matrix: Any, ins: tuple[int, ...], outs: tuple[int, ...], name: str,
              offset: Any = None) -> MatrixOperator:
        """A MatrixOperator of trusted parts (no validation, no copy)."""
        op = MatrixOperator.__new__(MatrixOperator)
        op._set_matrix(matrix, ins, outs, name)
        op.offset = offset
        return op

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return self._shapes[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output."""
        return self._shapes[1]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the matrix."""
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the matrix."""
        return np.dtype(self.matrix.dtype)

    @property
    def xp(self) -> ModuleType:
        """The array module of the matrix (NumPy or CuPy)."""
        return array_namespace(self.matrix)

    @property
    def nnz(self) -> int:
        """Stored entries of the matrix."""
        return int(self.matrix.nnz)

    @property
    def nbytes(self) -> int:
        """Bytes held by the matrix arrays."""
        m = self.matrix
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)

    def describe(self) -> str:
        """The operator's name and shapes."""
        return f"{self.name}: {self.input_shape} -> {self.output_shape}"

    def _flat(self, x: Any) -> Any:
        return self.matrix @ x

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """The matrix itself (nothing is formed)."""
        return self.matrix

    def _make_adjoint(self, conjugate: bool) -> Operator:
        m = self.matrix.conj().T if conjugate else self.matrix.T
        return MatrixOperator._wrap(m, self.output_shape, self.input_shape,
                                    f"{self.name}.{'H' if conjugate else 'T'}")

    def _moved(self, move: Callable[[Any], Any]) -> Operator:
        offset = None if self.offset is None else move(self.offset)
        return MatrixOperator._wrap(move(self.matrix), self.input_shape, self.output_shape,
                                    self.name, offset)


def identity_operator(shape: Sequence[int] | int, dtype: Any = np.float64) -> MatrixOperator:
    """The identity on arrays of ``shape`` (a residual connection is ``A + I``).

    Examples
    --------
    >>> import numpy as np
    >>> I = identity_operator((2, 2))
    >>> (I + I) @ np.ones((2, 2))
    array([[2., 2.],
           [2., 2.]])
    """
    import scipy.sparse as sp

    s = _shape_tuple("shape", shape)
    n = math.prod(s)
    return MatrixOperator._wrap(sp.eye_array(n, dtype=np.dtype(dtype), format="csr"), s, s,
                                "identity")


# --------------------------------------------------------------------------- composites
class _Composite(Operator):
    """An operator made of others: applied part by part; its matrix formed on demand."""

    parts: tuple[Operator, ...]

    def _init_parts(self, parts: Sequence[Operator]) -> None:
        if not parts:
            raise ValueError(f"{type(self).__name__} needs at least one operator")
        for i, p in enumerate(parts):
            if not isinstance(p, Operator):
                raise TypeError(f"part {i} is a {type(p).__name__}, not a convmat operator")
        xp = parts[0].xp
        for i, p in enumerate(parts[1:], 1):
            if p.xp is not xp:
                raise TypeError(
                    f"part {i} lives on the {p.device} but part 0 on the {parts[0].device}; "
                    "mixing backends is not supported: move one of them (.to_gpu() / "
                    ".to_cpu())")
        self.parts = tuple(parts)

    @property
    def xp(self) -> ModuleType:
        """The array module of the parts."""
        return self.parts[0].xp

    @property
    def dtype(self) -> np.dtype:
        """Common dtype of the parts."""
        return np.result_type(*[p.dtype for p in self.parts])

    @functools.cached_property
    def matrix(self) -> Any:
        """The exact sparse matrix of the linear part (formed once, canonical CSR)."""
        return self.to_matrix()

    def _moved(self, move: Callable[[Any], Any]) -> Operator:
        return self._rebuild([p._moved(move) for p in self.parts])

    def _rebuild(self, parts: list[Operator]) -> Operator:  # pragma: no cover - abstract
        raise NotImplementedError


class ProductOperator(_Composite):
    """``parts[0] @ parts[1] @ ... @ parts[-1]``: the last part is applied first.

    Examples
    --------
    >>> import numpy as np
    >>> A = MatrixOperator(np.array([[1., 1.]]))
    >>> B = MatrixOperator(np.array([[2.], [3.]]))
    >>> P = B @ A
    >>> P.shape, P @ np.array([1., 2.])
    ((2, 2), array([6., 9.]))
    """

    def __init__(self, parts: Sequence[Operator]) -> None:
        flat: list[Operator] = []
        for p in parts:  # associative: keep one flat chain
            if isinstance(p, ProductOperator):
                flat.extend(p.parts)
            else:
                flat.append(p)
        self._init_parts(flat)
        for outer, inner in zip(flat[:-1], flat[1:], strict=True):
            if not shapes_fit(inner.output_shape, outer.input_shape):
                raise ValueError(
                    f"cannot compose: the outer operator takes inputs of shape "
                    f"{outer.input_shape} ({outer.shape[1]} entries) but the inner one gives "
                    f"outputs of shape {inner.output_shape} ({inner.shape[0]} entries); "
                    "reshape one of them with .reshape(...)")
        self.offset = self._compose_offsets()

    def _compose_offsets(self) -> Any:
        offset = None
        for p in reversed(self.parts):
            shaped = None if offset is None else p._flat(offset.reshape(-1))
            b = p.offset
            if shaped is None and b is None:
                offset = None
            elif shaped is None:
                offset = b
            else:
                offset = shaped if b is None else shaped + b.reshape(-1)
            if offset is not None:
                offset = offset.reshape(p.output_shape)
        return offset

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Input shape of the innermost part."""
        return self.parts[-1].input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Output shape of the outermost part."""
        return self.parts[0].output_shape

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows of the outermost, columns of the innermost)``."""
        return (self.parts[0].shape[0], self.parts[-1].shape[1])

    def describe(self) -> str:
        """The chain, outermost first."""
        return " @ ".join(f"({p.describe()})" for p in self.parts)

    def _flat(self, x: Any) -> Any:
        for p in reversed(self.parts):
            x = p._flat(x)
        return x

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """``parts[0].matrix @ ... @ parts[-1].matrix``, right to left, each step guarded."""
        m = self.parts[-1].to_matrix(max_bytes=max_bytes)
        for i, p in enumerate(reversed(self.parts[:-1]), 2):
            m = guarded_product(p.to_matrix(max_bytes=max_bytes), m, max_bytes,
                                what=f"the product of the last {i} factors")
        return as_csr(m, max_bytes)

    def _make_adjoint(self, conjugate: bool) -> Operator:
        return ProductOperator([p.H if conjugate else p.T for p in reversed(self.parts)])

    def _rebuild(self, parts: list[Operator]) -> Operator:
        return ProductOperator(parts)


class SumOperator(_Composite):
    """``parts[0] + parts[1] + ...``: operators of the same shapes, offsets added.

    Examples
    --------
    >>> import numpy as np
    >>> I = identity_operator(3)
    >>> (I + 2 * I - I) @ np.ones(3)
    array([2., 2., 2.])
    """

    def __init__(self, parts: Sequence[Operator]) -> None:
        flat: list[Operator] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, SumOperator) else [p])
        self._init_parts(flat)
        first = flat[0]
        for p in flat[1:]:
            if not (shapes_fit(p.input_shape, first.input_shape)
                    and shapes_fit(p.output_shape, first.output_shape)):
                raise ValueError(
                    f"cannot add operators of shapes {first.input_shape} -> "
                    f"{first.output_shape} and {p.input_shape} -> {p.output_shape}")
        offsets = [p.offset.reshape(-1) for p in flat if p.offset is not None]
        self.offset = None if not offsets else functools.reduce(
            lambda a, b: a + b, offsets).reshape(first.output_shape)

    input_shape = property(lambda self: self.parts[0].input_shape,
                           doc="Input shape of the first term.")
    output_shape = property(lambda self: self.parts[0].output_shape,
                            doc="Output shape of the first term.")
    shape = property(lambda self: self.parts[0].shape,
                     doc="Shape of every term.")

    def describe(self) -> str:
        """The terms."""
        return " + ".join(f"({p.describe()})" for p in self.parts)

    def _flat(self, x: Any) -> Any:
        out = self.parts[0]._flat(x)
        for p in self.parts[1:]:
            out = out + p._flat(x)
        return out

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """The sum of the terms' matrices (guarded)."""
        return guarded_sum([p.to_matrix(max_bytes=max_bytes) for p in self.parts], max_bytes)

    def _make_adjoint(self, conjugate: bool) -> Operator:
        return SumOperator([p.H if conjugate else p.T for p in self.parts])

    def _rebuild(self, parts: list[Operator]) -> Operator:
        return SumOperator(parts)


class ScaledOperator(_Composite):
    """``alpha * A`` for a scalar ``alpha`` (real or complex); the offset is scaled too."""

    def __init__(self, alpha: Any, op: Operator) -> None:
        if not _is_scalar(alpha):
            raise TypeError(f"alpha must be a scalar, got {type(alpha).__name__}")
        if isinstance(op, ScaledOperator):
            alpha, op = alpha * op.alpha, op.parts[0]
        self.alpha: Any = alpha
        self._init_parts([op])
        self.alpha = alpha
        self.offset = None if op.offset is None else alpha * op.offset

    input_shape = property(lambda self: self.parts[0].input_shape,
                           doc="Input shape of the operator scaled.")
    output_shape = property(lambda self: self.parts[0].output_shape,
                            doc="Output shape of the operator scaled.")
    shape = property(lambda self: self.parts[0].shape, doc="Shape of the operator scaled.")

    @property
    def dtype(self) -> np.dtype:
        """The operator's dtype, complex when ``alpha`` is."""
        return np.result_type(self.parts[0].dtype, self.alpha)

    def describe(self) -> str:
        """``alpha * (A)``."""
        return f"{self.alpha!r} * ({self.parts[0].describe()})"

    def _flat(self, x: Any) -> Any:
        return self.alpha * self.parts[0]._flat(x)

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """``alpha`` times the operator's matrix (a guarded copy)."""
        return guarded_scale(self.alpha, self.parts[0].to_matrix(max_bytes=max_bytes),
                             max_bytes)

    def _make_adjoint(self, conjugate: bool) -> Operator:
        op = self.parts[0]
        alpha = np.conj(self.alpha) if conjugate else self.alpha
        return ScaledOperator(alpha, op.H if conjugate else op.T)

    def _rebuild(self, parts: list[Operator]) -> Operator:
        return ScaledOperator(self.alpha, parts[0])


def _stacked_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shapes concatenated along their first axis when the rest agree, else flat."""
    first = shapes[0]
    if len(first) >= 1 and all(len(s) == len(first) and s[1:] == first[1:] for s in shapes):
        return (sum(s[0] for s in shapes), *first[1:])
    return (sum(math.prod(s) for s in shapes),)


class StackedOperator(_Composite):
    """Operators stacked: ``axis=0`` outputs one after another, ``axis=1`` inputs.

    ``vstack([A, B]) x = [A x; B x]`` (the same input), ``hstack([A, B]) [x1; x2] = A x1 +
    B x2``. Stacked shapes are concatenated along their first axis (the channels) when their
    other axes agree, and flat otherwise.
    """

    def __init__(self, parts: Sequence[Operator], axis: int = 0) -> None:
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (vstack) or 1 (hstack), got {axis!r}")
        self._init_parts(list(parts))
        self.axis = axis
        shared = "input_shape" if axis == 0 else "output_shape"
        first = self.parts[0]
        for p in self.parts[1:]:
            if not shapes_fit(getattr(p, shared), getattr(first, shared)):
                raise ValueError(
                    f"cannot {'v' if axis == 0 else 'h'}stack operators whose "
                    f"{shared.replace('_', ' ')}s differ: {getattr(first, shared)} and "
                    f"{getattr(p, shared)}")
        offsets = [p.offset for p in self.parts]
        xp = self.xp
        if all(b is None for b in offsets):
            self.offset = None
        elif axis == 0:
            self.offset = xp.concatenate([
                (xp.zeros(p.shape[0], dtype=p.dtype) if b is None else b.reshape(-1))
                for p, b in zip(self.parts, offsets, strict=True)]).reshape(self.output_shape)
        else:
            self.offset = functools.reduce(
                lambda a, b: a + b, [b.reshape(-1) for b in offsets if b is not None]
            ).reshape(self.output_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shared input shape (vstack) or the stacked one (hstack)."""
        if self.axis == 0:
            return self.parts[0].input_shape
        return _stacked_shape([p.input_shape for p in self.parts])

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The stacked output shape (vstack) or the shared one (hstack)."""
        if self.axis == 1:
            return self.parts[0].output_shape
        return _stacked_shape([p.output_shape for p in self.parts])

    @property
    def shape(self) -> tuple[int, int]:
        """Rows (summed for vstack) and columns (summed for hstack)."""
        if self.axis == 0:
            return (sum(p.shape[0] for p in self.parts), self.parts[0].shape[1])
        return (self.parts[0].shape[0], sum(p.shape[1] for p in self.parts))

    def describe(self) -> str:
        """The blocks."""
        kind = "vstack" if self.axis == 0 else "hstack"
        return f"{kind}[" + ", ".join(f"({p.describe()})" for p in self.parts) + "]"

    def _flat(self, x: Any) -> Any:
        xp = self.xp
        if self.axis == 0:
            outs = [p._flat(x) for p in self.parts]
            if is_sparse(outs[0]):
                return guarded_stack(outs, 0)
            return xp.concatenate(outs, axis=0)
        cuts = np.cumsum([0] + [p.shape[1] for p in self.parts]).tolist()
        out = None
        for p, c0, c1 in zip(self.parts, cuts[:-1], cuts[1:], strict=True):
            y = p._flat(x[c0:c1])
            out = y if out is None else out + y
        return out

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """The blocks' matrices stacked (guarded)."""
        return guarded_stack([p.to_matrix(max_bytes=max_bytes) for p in self.parts],
                             self.axis, max_bytes)

    def _make_adjoint(self, conjugate: bool) -> Operator:
        return StackedOperator([p.H if conjugate else p.T for p in self.parts], 1 - self.axis)

    def _rebuild(self, parts: list[Operator]) -> Operator:
        return StackedOperator(parts, self.axis)


def vstack(operators: Sequence[Operator]) -> StackedOperator:
    """Outputs of operators with the same input, one after another: ``x -> [A x; B x]``.

    Examples
    --------
    >>> import numpy as np
    >>> I = identity_operator((1, 2))
    >>> V = vstack([I, 3 * I])
    >>> V.output_shape, V @ np.ones((1, 2))
    ((2, 2), array([[1., 1.],
           [3., 3.]]))
    """
    return StackedOperator(operators, 0)


def hstack(operators: Sequence[Operator]) -> StackedOperator:
    """Operators with the same output side by side: ``[x1; x2] -> A x1 + B x2``.

    Examples
    --------
    >>> import numpy as np
    >>> I = identity_operator(2)
    >>> hstack([I, 3 * I]) @ np.ones(4)
    array([4., 4.])
    """
    return StackedOperator(operators, 1)


class ReshapedOperator(_Composite):
    """An operator that reads its input and shapes its output with other shapes."""

    def __init__(self, op: Operator, input_shape: Sequence[int] | None = None,
                 output_shape: Sequence[int] | None = None) -> None:
        if isinstance(op, ReshapedOperator):
            op = op.parts[0]
        self._init_parts([op])
        ins = op.input_shape if input_shape is None else _shape_tuple("input_shape",
                                                                       input_shape)
        outs = op.output_shape if output_shape is None else _shape_tuple("output_shape",
                                                                          output_shape)
        for name, new, old in (("input_shape", ins, op.input_shape),
                               ("output_shape", outs, op.output_shape)):
            if math.prod(new) != math.prod(old):
                raise ValueError(f"{name}={new} has {math.prod(new)} entries but the operator's "
                                 f"{name} {old} has {math.prod(old)}")
        self._shapes = (ins, outs)
        self.offset = None if op.offset is None else op.offset.reshape(outs)

    input_shape = property(lambda self: self._shapes[0], doc="The new input shape.")
    output_shape = property(lambda self: self._shapes[1], doc="The new output shape.")
    shape = property(lambda self: self.parts[0].shape, doc="Shape of the operator reshaped.")

    def describe(self) -> str:
        """The operator and its new shapes."""
        return f"reshape({self.parts[0].describe()}): {self.input_shape} -> {self.output_shape}"

    def _flat(self, x: Any) -> Any:
        return self.parts[0]._flat(x)

    def to_matrix(self, *, max_bytes: int | None = None) -> Any:
        """The operator's matrix (reshaping changes no entry)."""
        return self.parts[0].to_matrix(max_bytes=max_bytes)

    def _make_adjoint(self, conjugate: bool) -> Operator:
        op = self.parts[0]
        return ReshapedOperator(op.H if conjugate else op.T, self.output_shape,
                                self.input_shape)

    def _rebuild(self, parts: list[Operator]) -> Operator:
        return ReshapedOperator(parts[0], *self._shapes)


class _Linear(ReshapedOperator):
    """The linear part of an affine operator (same shapes, no offset)."""

    def __init__(self, op: Operator) -> None:
        super().__init__(op)
        self.offset = None

    def describe(self) -> str:
        """The operator, without its offset."""
        return f"linear({self.parts[0].describe()})"


# --------------------------------------------------------------------------- GPU bridge
def _gpu_linear_operator(op: Operator) -> Any:
    """A ``cupyx`` LinearOperator over ``op``'s flat products."""
    base = linear_operator_class(op.xp)
    adjoint = op.H
    return base(op.shape, matvec=op._flat, rmatvec=adjoint._flat, matmat=op._flat,
                rmatmat=adjoint._flat, dtype=op.dtype)
