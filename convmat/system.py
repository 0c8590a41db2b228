"""The stacked regularised system ``A = [W; lam D]``, ``b = [y; 0]`` that the solvers solve.

:class:`StackedSystem` applies ``A`` and ``A^H`` from ``W``, an explicit CSR of ``W^H`` and
the regularizer ``D`` without copying ``W`` (on the CPU with their rows split over threads,
:class:`~convmat.products.RowBlocks`), at the precision of ``W``; :func:`linear_operator`
wraps such products as a SciPy or CuPy ``LinearOperator``; :func:`resolve_regularizer`
turns ``deconvolve``'s ``regularizer`` argument into ``D``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .algebra import MatrixOperator, Operator
from .backend import linear_operator_class, same_backend, to_gpu
from .csr import as_csr
from .indices import default_threads
from .operator import ConvOperator, gradient_operator
from .products import RowBlocks, blas_threads

__all__ = ["FlatProducts", "StackedSystem", "linear_operator", "resolve_regularizer",
           "spatial_axes"]


class StackedSystem:
    """``A = [W; lam*D]`` and ``b = [y; 0]``, applied without copying ``W``.

    A convolution applies ``W`` on its fastest path (:attr:`ConvOperator.method`): by its
    structured products, or by the CSR and an explicit CSR of ``W^H``.
    """

    def __init__(self, op: Operator, reg: Any, lam: float) -> None:
        xp = op.xp
        self.w: Any
        self.wh: Any
        if isinstance(op, ConvOperator) and op.method != "csr":
            # a structured path (im2col + GEMM, or FFT): W is never formed
            self.w, self.wh = FlatProducts(op), FlatProducts(op.H)
        elif isinstance(op, MatrixOperator):
            # An explicit CSR of W^H (SpMV with a CSC view is slower and cannot be split by
            # rows): for a convolution written directly when W^H is itself one, else
            # converted.
            if isinstance(op, ConvOperator):
                wh = op.adjoint_csr()
            else:
                wh = as_csr(op.matrix.conj().T, what="W^H")
            if xp is np:  # split over threads on the CPU; cuSPARSE fills the GPU on its own
                threads = default_threads()
                self.w, self.wh = RowBlocks(op.matrix, threads), RowBlocks(wh, threads)
            else:
                self.w, self.wh = op.matrix, wh
        else:  # a composition: applied part by part, no product formed
            self.w, self.wh = FlatProducts(op), FlatProducts(op.H)
        self.xp = xp
        self.reg = reg
        self.reg_h = None if reg is None else _adjoint_of(reg)
        self.lam = lam
        self.m = op.shape[0]
        self.k = 0 if reg is None else reg.shape[0]
        self.n = op.shape[1]
        self.dtype = np.result_type(op.dtype, np.float32)
        self.shape = (self.m + self.k, self.n)

    def _at_matrix_precision(self, v: Any) -> Any:
        """``v`` cast to the precision of ``W`` (kind kept: complex stays complex).

        SciPy's and CuPy's solvers iterate in float64 whatever ``W`` is; a product of a
        float32 ``W`` with a float64 vector would upcast a copy of ``W`` on every call
        (both SciPy's sparsetools and cuSPARSE work in one common dtype). The product runs
        at ``W``'s precision instead, and its result is handed back in the vector's dtype.
        """
        target = np.result_type(self.dtype, np.complex64 if v.dtype.kind == "c" else np.float32)
        return v if v.dtype == target else v.astype(target)

    def matvec(self, x: Any) -> Any:
        """``A x = [W x; lam D x]``."""
        xw = self._at_matrix_precision(x)
        y = self.w @ xw
        if self.reg is not None:
            y = self.xp.concatenate([y, self.lam * (self.reg @ xw)])
        return y.astype(x.dtype, copy=False) if x.dtype.kind == y.dtype.kind else y

    def rmatvec(self, u: Any) -> Any:
        """``A^H u = W^H u[:m] + lam D^H u[m:]``."""
        uw = self._at_matrix_precision(u)
        if self.reg is None:
            v = self.wh @ uw
        else:
            v = self.wh @ uw[: self.m] + self.lam * (self.reg_h @ uw[self.m:])
        return v.astype(u.dtype, copy=False) if u.dtype.kind == v.dtype.kind else v

    def rhs(self, y: Any) -> Any:
        """``b = [y; 0]``."""
        if self.reg is None:
            return y
        return self.xp.concatenate([y, self.xp.zeros(self.k, dtype=y.dtype)])

    def linear_operator(self, tick: Callable[[], None] | None = None) -> Any:
        """``A`` as a SciPy / CuPy ``LinearOperator`` (see :func:`linear_operator`)."""
        return linear_operator(self.xp, self.shape, self.dtype, self.matvec, self.rmatvec,
                               tick)


def linear_operator(xp: ModuleType, shape: tuple[int, int], dtype: Any,
                    matvec: Callable[[Any], Any], rmatvec: Callable[[Any], Any],
                    tick: Callable[[], None] | None = None) -> Any:
    """A SciPy / CuPy ``LinearOperator``; ``tick()`` once per iteration of lsqr / lsmr."""
    LinearOperator = linear_operator_class(xp)  # noqa: N806 - a class
    counted = rmatvec
    if tick is not None:
        calls = [0]

        def counted(u: Any) -> Any:
            # SciPy's lsqr and lsmr apply A^H once before their loop, then once per
            # iteration: tick from the second call on.
            if calls[0]:
                tick()
            calls[0] += 1
            return rmatvec(u)

    return LinearOperator(shape, matvec=matvec, rmatvec=counted, dtype=dtype)


def _adjoint_of(reg: Any) -> Any:
    if hasattr(reg, "tocsr"):
        return reg.conj().T.tocsr()
    return reg.H  # a LinearOperator


class FlatProducts:
    """``op`` applied to flat vectors by ``@`` (a composition, applied part by part).

    The solvers hold BLAS to one thread around their vector work; the products get the
    machine's threads back (the GEMMs of structured products, the FFT's channel sums).
    """

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.shape = op.shape
        self.threads = default_threads()

    def __matmul__(self, x: Any) -> Any:
        with blas_threads(self.threads):
            return self.op._flat(x)


def spatial_axes(op: Operator) -> int:
    """Spatial axes of ``op``'s input: a convolution's, else ``(C, *spatial)`` is assumed.

    A flat or 1-D input has one spatial axis.
    """
    if isinstance(op, ConvOperator):
        return op.geometry.ndim
    return max(len(op.input_shape) - 1, 1)


def resolve_regularizer(regularizer: Any, op: Operator) -> Any:
    """``D`` as a sparse matrix or LinearOperator with ``op.shape[1]`` columns."""
    if regularizer is None:
        return None
    if isinstance(regularizer, str):
        if regularizer != "gradient":
            raise ValueError(
                f"regularizer={regularizer!r} is not known; use 'gradient', a sparse matrix, "
                "a convmat operator or a LinearOperator"
            )
        layout = getattr(getattr(op, "geometry", None), "layout", "channels_first")
        d = gradient_operator(op.input_shape, ndim=spatial_axes(op), dtype=op.dtype,
                              layout=layout).matrix
        d.eliminate_zeros()  # unused taps of the 2x...x2 kernel: half the work of D @ x
        return d if op.device == "cpu" else to_gpu(d)
    if isinstance(regularizer, MatrixOperator):
        reg = regularizer.matrix
    elif isinstance(regularizer, Operator):  # a composition: applied part by part
        if regularizer.xp is not op.xp:
            raise TypeError(f"regularizer lives on the {regularizer.device} but the operator "
                            f"on the {op.device}; move one of them (.to_gpu() / .to_cpu())")
        reg = regularizer.aslinearoperator()
    else:
        reg = regularizer
    if hasattr(reg, "tocsr"):  # a sparse matrix: on the operator's backend
        same_backend("regularizer", reg, op.xp, "the operator")
    if not hasattr(reg, "shape") or len(reg.shape) != 2 or not (
        hasattr(reg, "tocsr") or hasattr(reg, "matvec")
    ):
        raise TypeError(
            "regularizer must be 'gradient', a scipy.sparse matrix, a convmat operator or a "
            f"LinearOperator, got {type(regularizer).__name__}"
        )
    if reg.shape[1] != op.shape[1]:
        raise ValueError(
            f"regularizer has {reg.shape[1]} columns but the operator's input has "
            f"{op.shape[1]} entries (input_shape {op.input_shape})"
        )
    return reg
