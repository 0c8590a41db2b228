"""Least-squares deconvolution on top of :class:`~convmat.ConvOperator`.

``deconvolve(y, op)`` solves ``min ||W x - y||^2 + damp^2 ||x||^2 + lam^2 ||D x||^2`` (and,
with ``bounds``, subject to ``lb <= x <= ub``) with SciPy's ``lsqr`` / ``lsmr``, with CGLS,
or with ``scipy.optimize.lsq_linear``, and returns a small frozen
:class:`DeconvolutionResult`.

On the GPU (an operator built from a CuPy weight, or moved with ``op.to_gpu()``) the same
call runs on the device: ``lsmr`` is ``cupyx.scipy.sparse.linalg.lsmr``, ``lsqr`` and
``cgls`` are convmat's array-namespace :func:`lsqr` and :func:`cgls` (CuPy's own ``lsqr``
is a direct solver for square systems, not LSQR, and is never called). ``bounds`` need
the CPU (``scipy.optimize.lsq_linear``).

Per-iteration cost is kept close to its two sparse products: ``W`` and an explicit CSR of
``W.T`` are applied directly (no CSC view), the stacked regularised system is a
``LinearOperator`` over them (``W`` is never copied), and BLAS is held to one thread
around the vector work when ``threadpoolctl`` is installed (multi-threaded BLAS on short
vectors costs more than it saves).

Every method solves the same problem from any start (``damp`` damps ``x``, not ``x - x0``
as SciPy's ``x0`` would), each sample is solved scaled by a power of two so that any
finite ``y`` stays inside float64's range, and every ``stop_reason`` states what holds;
see :func:`deconvolve`'s Notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .backend import (
    array_namespace,
    is_cupy_array,
    linear_operator_class,
    refuse_masked,
    same_backend,
    to_gpu,
)
from .indices import default_threads, thread_pool
from .operator import ConvOperator, gradient_operator

__all__ = ["DeconvolutionResult", "cgls", "deconvolve", "lsqr"]

METHODS = ("lsqr", "lsmr", "cgls")

# SciPy's istop codes for lsqr and lsmr (and ours), in words. Code 0 ("the start is
# already a solution") has several true readings, told apart by _start_reason.
_STOP_REASONS = {
    # A x = b is the stacked system [W; lam D; damp I] x = [y; 0; 0]; x0 = 0 without a
    # start. lsqr and lsmr test ||A|| and ||x - x0|| through their estimates; cgls stops
    # on 1 when ||b - A x|| <= btol ||b||, which implies the test stated.
    1: "residual small: ||b - A x|| <= btol ||b|| + atol ||A|| ||x - x0|| (the test for "
       "a consistent system)",
    2: "least-squares solution: the normal-equation residual ||A^H (b - A x)|| is within "
       "atol (relative to ||A|| ||b - A x||; for cgls, to its value at x0)",
    3: "condition number estimate of the system exceeds conlim",
    4: "residual small to machine precision (a consistent system)",
    5: "least-squares solution to machine precision",
    6: "condition number estimate too large for machine precision",
    7: "iteration limit reached (maxiter)",
}
_Y_IS_ZERO = "y is zero: x = 0 is the exact solution"
_CONVERGED = {0, 1, 2, 4, 5}

#: Largest ``damp`` and ``lam`` accepted. The solvers square them, and CGLS squares the
#: normal-equation residual, which from a start ``x0`` is about ``damp**2 ||x0||``: its
#: square ``damp**4 ||x0||**2`` must stay inside float64's range (1.8e308). 1e50 keeps
#: ``damp**4 <= 1e200``, with a factor 1e108 left for the norms of ``W``, of ``x0`` and of
#: ``y`` (scaled to ``max|y| < 1``). No meaningful problem needs more: once
#: ``damp > ||W|| / sqrt(eps)`` (``~1e8 ||W||``), ``W^H W + damp^2 I`` rounds to
#: ``damp^2 I`` and the solution is ``W^H y / damp^2`` to machine precision; once
#: ``lam ||D|| > ||W|| / sqrt(eps)``, ``x`` is the least-squares solution restricted to the
#: null space of ``D`` to machine precision.
MAX_DAMP = 1e50


@dataclasses.dataclass(frozen=True)
class DeconvolutionResult:
    """Outcome of :func:`deconvolve`.

    Attributes
    ----------
    x : ndarray
        The solution, shaped like the operator's input (batched when ``y`` was).
    method : str
        The solver that ran.
    iterations : int or tuple of int
        Iterations (per sample for a batch).
    stop_reason : str or tuple of str
        Why the solver stopped, in words.
    converged : bool or tuple of bool
        False when it stopped on the iteration limit or an ill-conditioning guard.
    residual_norm : float or tuple of float
        ``||W x - y||``, computed from the returned ``x``.
    normal_residual_norm : float or tuple of float
        ``||A^H (b - A x)||`` of the solved (stacked, damped) system ``A x = b``: zero at a
        least-squares solution.
    history : dict of str to ndarray, or tuple of them, or None
        Per iteration (when asked): ``residual_norm`` (``||b - A x_k||`` of the stacked
        system, including the damping term) and ``normal_residual_norm``.
    """

    x: Any
    method: str
    iterations: Any
    stop_reason: Any
    converged: Any
    residual_norm: Any
    normal_residual_norm: Any
    history: Any = None

    def __repr__(self) -> str:
        x = self.x
        return (
            f"DeconvolutionResult(method={self.method!r}, x.shape={tuple(x.shape)}, "
            f"iterations={self.iterations}, converged={self.converged}, "
            f"stop_reason={self.stop_reason!r}, residual_norm={self.residual_norm}, "
            f"normal_residual_norm={self.normal_residual_norm})"
        )


# --------------------------------------------------------------------------- system
#: Below this many stored entries a product runs on the calling thread only.
PARALLEL_MIN_NNZ = 1 << 20


class _RowBlocks:
    """``A @ x`` with the rows of a CSR matrix split over threads.

    Each block is a CSR view of a slice of the rows (``data`` and ``indices`` are shared;
    only ``indptr`` is shifted), cut so the blocks hold equal numbers of entries. SciPy's
    sparse product releases the GIL, so the blocks run concurrently.
    """

    def __init__(self, a: Any, parts: int) -> None:
        import scipy.sparse as sp

        self.a = a
        self.shape = a.shape
        self.blocks = []
        if parts > 1 and a.nnz >= PARALLEL_MIN_NNZ:
            cuts = np.searchsorted(a.indptr, np.linspace(0, a.nnz, parts + 1)[1:-1])
            rows = [0, *sorted({int(c) for c in cuts}), a.shape[0]]
            for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
                s, e = int(a.indptr[r0]), int(a.indptr[r1])
                block = sp.csr_array((a.data[s:e], a.indices[s:e], a.indptr[r0:r1 + 1] - s),
                                     shape=(r1 - r0, a.shape[1]), copy=False)
                self.blocks.append((r0, r1, block))

    def __matmul__(self, x: Any) -> Any:
        if not self.blocks:
            return self.a @ x
        out = np.empty(self.shape[0], dtype=np.result_type(self.a.dtype, x.dtype))

        def part(k: int) -> None:
            r0, r1, block = self.blocks[k]
            out[r0:r1] = block @ x

        pending = [thread_pool().submit(part, k) for k in range(1, len(self.blocks))]
        part(0)
        for f in pending:
            f.result()
        return out


class _System:
    """``A = [W; lam*D]`` and ``b = [y; 0]``, applied without copying ``W``."""

    def __init__(self, op: ConvOperator, reg: Any, lam: float) -> None:
        xp = array_namespace(op.matrix)
        # An explicit CSR of W^H (SpMV with a CSC view is slower and cannot be split by
        # rows): written directly when W^H is itself a convolution, else converted.
        wh = op.adjoint_csr()
        if xp is np:  # split over threads on the CPU; cuSPARSE fills the GPU on its own
            threads = default_threads()
            self.w, self.wh = _RowBlocks(op.matrix, threads), _RowBlocks(wh, threads)
        else:
            self.w, self.wh = op.matrix, wh
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
        xw = self._at_matrix_precision(x)
        y = self.w @ xw
        if self.reg is not None:
            y = self.xp.concatenate([y, self.lam * (self.reg @ xw)])
        return y.astype(x.dtype, copy=False) if x.dtype.kind == y.dtype.kind else y

    def rmatvec(self, u: Any) -> Any:
        uw = self._at_matrix_precision(u)
        if self.reg is None:
            v = self.wh @ uw
        else:
            v = self.wh @ uw[: self.m] + self.lam * (self.reg_h @ uw[self.m:])
        return v.astype(u.dtype, copy=False) if u.dtype.kind == v.dtype.kind else v

    def rhs(self, y: Any) -> Any:
        if self.reg is None:
            return y
        return self.xp.concatenate([y, self.xp.zeros(self.k, dtype=y.dtype)])

    def linear_operator(self, tick: Callable[[], None] | None = None) -> Any:
        return _linear_operator(self.xp, self.shape, self.dtype, self.matvec, self.rmatvec,
                                tick)


def _linear_operator(xp: ModuleType, shape: tuple[int, int], dtype: Any,
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


def _stack_damp(matvec: Callable[[Any], Any], rmatvec: Callable[[Any], Any], m: int,
                damp: float, xp: ModuleType) -> tuple[Callable[[Any], Any],
                                                      Callable[[Any], Any]]:
    """Products with ``[A; damp I]`` (``A`` with ``m`` rows), for ``b = [b; 0]``.

    Solved with ``damp=0``, this system damps ``x`` itself from any start ``x0`` (its
    initial residual is ``[b - A x0; -damp x0]``), where SciPy's ``damp`` with ``x0``
    damps the correction ``x - x0``.
    """
    def stacked_matvec(x: Any) -> Any:
        return xp.concatenate([matvec(x), damp * x])

    def stacked_rmatvec(u: Any) -> Any:
        return rmatvec(u[:m]) + damp * u[m:]

    return stacked_matvec, stacked_rmatvec


def _adjoint_of(reg: Any) -> Any:
    if hasattr(reg, "tocsr"):
        return reg.conj().T.tocsr()
    return reg.H  # a LinearOperator


def _regularizer(regularizer: Any, op: ConvOperator) -> Any:
    """``D`` as a sparse matrix or LinearOperator with ``op.shape[1]`` columns."""
    if regularizer is None:
        return None
    if isinstance(regularizer, str):
        if regularizer != "gradient":
            raise ValueError(
                f"regularizer={regularizer!r} is not known; use 'gradient', a sparse matrix, "
                "a ConvOperator or a LinearOperator"
            )
        d = gradient_operator(op.input_shape, ndim=op.geometry.ndim, dtype=op.dtype).matrix
        d.eliminate_zeros()  # unused taps of the 2x...x2 kernel: half the work of D @ x
        return d if op.device == "cpu" else to_gpu(d)
    if isinstance(regularizer, ConvOperator):
        reg = regularizer.matrix
    else:
        reg = regularizer
    if hasattr(reg, "tocsr"):  # a sparse matrix: on the operator's backend
        same_backend("regularizer", reg, array_namespace(op.matrix), "the operator")
    if not hasattr(reg, "shape") or len(reg.shape) != 2 or not (
        hasattr(reg, "tocsr") or hasattr(reg, "matvec")
    ):
        raise TypeError(
            "regularizer must be 'gradient', a scipy.sparse matrix, a ConvOperator or a "
            f"LinearOperator, got {type(regularizer).__name__}"
        )
    if reg.shape[1] != op.shape[1]:
        raise ValueError(
            f"regularizer has {reg.shape[1]} columns but the operator's input has "
            f"{op.shape[1]} entries (input_shape {op.input_shape})"
        )
    return reg


# --------------------------------------------------------------------------- BLAS threads
_BLAS: list[Any] = []


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Hold BLAS to one thread (``threadpoolctl``, if installed) during a solve.

    The controller (which scans the loaded libraries, ~2 ms) is made once per process.
    """
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController())
    controller = _BLAS[0]
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm: pip install tqdm (or convmat[solvers])"
        ) from exc
    return tqdm(total=total, desc=desc, unit="it", leave=False)


# --------------------------------------------------------------------------- CGLS and LSQR
def cgls(
    matvec: Callable[[Any], Any],
    rmatvec: Callable[[Any], Any],
    b: Any,
    x0: Any,
    *,
    damp: float = 0.0,
    atol: float = 1e-6,
    btol: float = 1e-6,
    maxiter: int = 1000,
    callback: Callable[[int, Any], None] | None = None,
    xp: ModuleType = np,
) -> tuple[Any, int, int, dict[str, list[float]]]:
    """CG on the normal equations ``(A^H A + damp^2 I) x = A^H b`` (array-namespace code).

    Minimises ``||A x - b||^2 + damp^2 ||x||^2`` from the start ``x0``; the start changes
    the path, not the problem. Returns ``(x, istop, iterations, history)``; ``istop`` uses
    the codes of SciPy's ``lsqr``: 0 when ``x0`` already solves the normal equations
    exactly (no iteration), 1 when ``||b - A x|| <= btol ||b||``, 2 when the
    normal-equation residual ``||A^H (b - A x) - damp^2 x||`` has dropped below ``atol``
    times its initial value, 7 at the iteration limit. ``callback(k, x)`` is called after
    iteration ``k``.

    Raises
    ------
    FloatingPointError
        When ``||A p||^2 + damp^2 ||p||^2`` or ``||A^H r||^2`` (fourth powers of the scale
        of ``A``) over- or underflows float64, instead of returning NaN.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> x, istop, k, _ = cgls(A.__matmul__, A.T.__matmul__, np.array([2.0, 1.0, 2.0]),
    ...                       np.zeros(2), atol=1e-12, btol=1e-12)
    >>> np.round(x, 12), istop
    (array([1., 1.]), 1)
    """
    d2 = damp * damp
    x = xp.array(x0, copy=True)
    r = b - matvec(x)
    s = rmatvec(r) - d2 * x
    p = s
    gamma = float(xp.vdot(s, s).real)
    s0 = math.sqrt(gamma)
    bnorm = float(xp.linalg.norm(b))
    history: dict[str, list[float]] = {"residual_norm": [], "normal_residual_norm": []}
    if s0 == 0.0:  # x0 solves the normal equations: b = 0 and x0 = 0, or A^H b = 0, ...
        return x, 0, 0, history
    istop, k = 7, 0
    while k < maxiter:
        k += 1
        q = matvec(p)
        delta = float(xp.vdot(q, q).real) + (d2 * float(xp.vdot(p, p).real) if d2 else 0.0)
        if not 0.0 < delta < math.inf or not math.isfinite(gamma):
            # positive in exact arithmetic (p = A^H r != 0); CGLS squares A^H A's scale
            raise FloatingPointError(
                f"cgls: at iteration {k}, ||A p||^2 + damp^2 ||p||^2 = {delta!r} and "
                f"||A^H r||^2 = {gamma!r}: these squares of products with A^H A over- or "
                "underflow float64; A (or damp) is too large or too small: rescale it"
            )
        alpha = gamma / delta
        x = x + alpha * p
        r = r - alpha * q
        s = rmatvec(r) - d2 * x if d2 else rmatvec(r)
        gamma_new = float(xp.vdot(s, s).real)
        rr = float(xp.vdot(r, r).real)
        history["residual_norm"].append(
            math.sqrt(rr + d2 * float(xp.vdot(x, x).real)) if d2 else math.sqrt(rr))
        history["normal_residual_norm"].append(math.sqrt(gamma_new))
        if callback is not None:
            callback(k, x)
        if math.sqrt(rr) <= btol * bnorm:
            istop = 1
            break
        if math.sqrt(gamma_new) <= atol * s0:
            istop = 2
            break
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x, istop, k, history


def lsqr(
    matvec: Callable[[Any], Any],
    rmatvec: Callable[[Any], Any],
    b: Any,
    x0: Any,
    *,
    damp: float = 0.0,
    atol: float = 1e-6,
    btol: float = 1e-6,
    conlim: float = 1e8,
    maxiter: int = 1000,
    callback: Callable[[int, Any], None] | None = None,
    xp: ModuleType = np,
) -> tuple[Any, int, int, dict[str, list[float]]]:
    """LSQR of Paige and Saunders in array-namespace code, with SciPy's stopping rules.

    The recurrences and tests of ``scipy.sparse.linalg.lsqr`` (which exposes no iterates),
    written so that ``callback(k, x_k)`` and a per-iteration history are available and the
    same code runs on CuPy. Returns ``(x, istop, iterations, history)`` with SciPy's codes
    (0: the start already solves the problem, ``b - A x0 = 0`` or
    ``A^H (b - A x0) = 0``, and no iteration ran).

    Unlike SciPy's, it minimises ``||A x - b||^2 + damp^2 ||x||^2`` whatever ``x0`` is
    (SciPy's ``lsqr`` with ``x0`` damps the correction ``x - x0``): with ``damp > 0`` and
    a nonzero ``x0`` it runs on the stacked ``[A; damp I]`` with ``b = [b; 0]``, so ``x0``
    is only a starting point. Norms are accumulated with ``math.hypot`` and no scalar is
    squared, so no recurrence raises ``OverflowError`` (an overflow shows as ``inf``).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> x, istop, k, _ = lsqr(A.__matmul__, A.T.__matmul__, np.array([2.0, 1.0, 2.0]),
    ...                       np.zeros(2), atol=1e-12, btol=1e-12)
    >>> np.round(x, 12), istop
    (array([1., 1.]), 1)
    """
    if damp > 0 and bool(xp.any(x0 != 0)):
        m = b.shape[0]
        smv, srmv = _stack_damp(matvec, rmatvec, m, damp, xp)
        return lsqr(smv, srmv, xp.concatenate([b, xp.zeros(x0.shape[0], dtype=b.dtype)]),
                    x0, damp=0.0, atol=atol, btol=btol, conlim=conlim, maxiter=maxiter,
                    callback=callback, xp=xp)
    eps = float(np.finfo(np.float64).eps)
    history: dict[str, list[float]] = {"residual_norm": [], "normal_residual_norm": []}
    x = xp.array(x0, copy=True)
    u = b - matvec(x)
    bnorm = float(xp.linalg.norm(b))
    beta = float(xp.linalg.norm(u))
    if beta == 0.0:
        return x, 0, 0, history
    u = u / beta
    v = rmatvec(u)
    alfa = float(xp.linalg.norm(v))
    if alfa == 0.0:
        return x, 0, 0, history
    v = v / alfa
    w = v
    rhobar, phibar = alfa, beta
    # res2 and xxnorm are kept as norms (SciPy keeps their squares): hypot never overflows
    anorm = acond = ddnorm = res2 = xxnorm = z = sn2 = 0.0
    cs2 = -1.0
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    istop, itn = 0, 0
    while itn < maxiter:
        itn += 1
        u = matvec(v) - alfa * u
        beta = float(xp.linalg.norm(u))
        if beta > 0:
            u = u / beta
            anorm = math.hypot(anorm, alfa, beta, damp)
            v = rmatvec(u) - beta * v
            alfa = float(xp.linalg.norm(v))
            if alfa > 0:
                v = v / alfa
        # eliminate the damping parameter
        if damp > 0:
            rhobar1 = math.hypot(rhobar, damp)
            cs1, sn1 = rhobar / rhobar1, damp / rhobar1
            psi = sn1 * phibar
            phibar = cs1 * phibar
        else:
            rhobar1, psi = rhobar, 0.0
        # plane rotation to eliminate the subdiagonal element beta
        rho = math.hypot(rhobar1, beta)
        cs, sn = rhobar1 / rho, beta / rho
        theta = sn * alfa
        rhobar = -cs * alfa
        phi = cs * phibar
        phibar = sn * phibar
        tau = sn * phi
        t1, t2 = phi / rho, -theta / rho
        dk = w / rho
        x = x + t1 * w
        w = v + t2 * w
        ddnorm += float(xp.vdot(dk, dk).real)
        # estimates of norms and of cond(Abar)
        delta = sn2 * rho
        gambar = -cs2 * rho
        rhs = phi - delta * z
        zbar = rhs / gambar
        xnorm = math.hypot(xxnorm, zbar)
        gamma = math.hypot(gambar, theta)
        cs2, sn2 = gambar / gamma, theta / gamma
        z = rhs / gamma
        xxnorm = math.hypot(xxnorm, z)
        acond = anorm * math.sqrt(ddnorm)
        res2 = math.hypot(res2, psi)
        rnorm = math.hypot(phibar, res2)
        arnorm = alfa * abs(tau)
        history["residual_norm"].append(rnorm)
        history["normal_residual_norm"].append(arnorm)
        if callback is not None:
            callback(itn, x)
        # SciPy's convergence tests
        test1 = rnorm / bnorm
        test2 = arnorm / (anorm * rnorm + eps)
        test3 = 1.0 / (acond + eps)
        t1_ = test1 / (1 + anorm * xnorm / bnorm)
        rtol = btol + atol * anorm * xnorm / bnorm
        if itn >= maxiter:
            istop = 7
        if 1 + test3 <= 1:
            istop = 6
        if 1 + test2 <= 1:
            istop = 5
        if 1 + t1_ <= 1:
            istop = 4
        if test3 <= ctol:
            istop = 3
        if test2 <= atol:
            istop = 2
        if test1 <= rtol:
            istop = 1
        if istop != 0:
            break
    return x, istop, itn, history


# --------------------------------------------------------------------------- deconvolve
def _as_operator(op: Any, input_shape: Any, conv_options: dict[str, Any]) -> ConvOperator:
    if isinstance(op, ConvOperator):
        if input_shape is not None or conv_options:
            raise TypeError(
                "input_shape and convolution options are for building an operator from a "
                "weight; op is already a ConvOperator (got "
                f"{sorted(conv_options) or 'input_shape'})"
            )
        return op
    if input_shape is None:
        raise TypeError(
            "op must be a ConvOperator, or a weight together with input_shape=... (and the "
            "convolution options)"
        )
    return ConvOperator(op, input_shape, **conv_options)


def _check_number(name: str, value: Any, upper: float | None = None, limit: str = "") -> float:
    """``value`` as a float, refused unless a finite real number in ``[0, upper]``.

    ``limit`` (for the message) says why no problem needs a value above ``upper``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={number!r}")
    if upper is not None and number > upper:
        raise ValueError(
            f"{name}={number!r} exceeds {upper:g} (convmat.solvers.MAX_DAMP): the solvers "
            f"square {name}, and CGLS squares {name}**2 ||x0||, which must stay inside "
            f"float64's range; no problem needs more, since {limit}"
        )
    return number


def _check_maxiter(maxiter: Any) -> int | None:
    if maxiter is None:
        return None
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral) or maxiter < 1:
        raise ValueError(f"maxiter must be a positive int, got maxiter={maxiter!r}")
    return int(maxiter)


def _numeric(name: str, value: Any, op: ConvOperator, use: str) -> Any:
    """``value`` as an array on the operator's backend, refused unless numeric."""
    xp = array_namespace(op.matrix)
    refuse_masked(name, value, use)
    same_backend(name, value, xp, "the operator")
    array = np.asarray(value) if xp is np else value
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def _check_y(y: Any, op: ConvOperator) -> tuple[Any, bool]:
    """``y`` as a batch ``(N, m)`` and whether it was a single output."""
    xp = array_namespace(op.matrix)
    y = _numeric("y", y, op, "the solve")
    out = op.output_shape
    m = op.shape[0]
    if tuple(y.shape) == out or (y.ndim == 1 and y.shape[0] == m):
        batch, single = y.reshape(1, m), True
    elif y.ndim == len(out) + 1 and tuple(y.shape[1:]) == out:
        batch, single = y.reshape(y.shape[0], m), False
    else:
        raise ValueError(
            f"y has shape {tuple(y.shape)} but the operator's output has shape {out} "
            f"(or a batch (N, *{out}), or a flat vector ({m},))"
        )
    bad = int(xp.count_nonzero(~xp.isfinite(batch)))
    if bad:
        raise ValueError(
            f"y contains {bad} NaN or inf value(s); SciPy's solvers would silently return NaN"
        )
    return batch, single


def _check_x0(x0: Any, op: ConvOperator, complex_: bool) -> Any:
    """``x0`` flat, on the operator's backend, with finite entries (or None)."""
    if x0 is None:
        return None
    xp = array_namespace(op.matrix)
    start = _numeric("x0", x0, op, "the warm start")
    if start.dtype.kind == "c" and not complex_:
        raise TypeError(
            f"x0 is complex ({start.dtype}) but the problem is real (the operator and y are); "
            "pass x0.real"
        )
    n = op.shape[1]
    if tuple(start.shape) not in (op.input_shape, (n,)):
        raise ValueError(
            f"x0 has shape {tuple(start.shape)} but the operator's input has shape "
            f"{op.input_shape} ({n} entries; a flat ({n},) is accepted too)"
        )
    bad = int(xp.count_nonzero(~xp.isfinite(start)))
    if bad:
        raise ValueError(f"x0 contains {bad} NaN or inf value(s); a start must be finite")
    return start.reshape(n)


def _bounds(bounds: Any, op: ConvOperator, complex_: bool) -> tuple[Any, Any] | None:
    """``bounds`` as two flat float arrays ``(lower, upper)`` (``+-inf``: no bound)."""
    if bounds is None:
        return None
    if complex_:
        raise TypeError("bounds need a real problem; the operator or y is complex")
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lower, upper), got {bounds!r}")
    n = op.shape[1]
    lo, hi = (_bound(f"bounds[{i}]", value, default, op)
              for i, (value, default) in enumerate(zip(bounds, (-np.inf, np.inf),
                                                        strict=True)))
    crossed = np.flatnonzero(lo >= hi)
    if crossed.size:
        i = int(crossed[0])
        raise ValueError(
            "bounds: lower bound must be < upper bound (scipy.optimize.lsq_linear needs "
            f"lb < ub); lower >= upper at {crossed.size} of {n} entries (first: entry {i}, "
            f"{float(lo[i])!r} >= {float(hi[i])!r})"
        )
    return lo, hi


def _bound(name: str, value: Any, default: float, op: ConvOperator) -> Any:
    """One side of ``bounds``: a scalar or an input-shaped array (``None``: ``default``)."""
    n = op.shape[1]
    if value is None:
        return np.full(n, default)
    if is_cupy_array(value):
        same_backend(name, value, np, "the operator")
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real numbers (or None), got dtype {arr.dtype}")
    if arr.shape not in ((), op.input_shape, (n,)):
        raise ValueError(
            f"{name} has shape {arr.shape} but must be a scalar, the input shape "
            f"{op.input_shape} or flat ({n},)"
        )
    nan = int(np.count_nonzero(np.isnan(arr)))
    if nan:
        raise ValueError(f"{name} contains {nan} NaN value(s); use -inf / inf (or None) "
                         "for no bound")
    return np.broadcast_to(arr.astype(float).reshape(-1) if arr.ndim else float(arr), (n,))


def deconvolve(
    y: Any,
    op: Any,
    *,
    method: str = "lsqr",
    damp: float = 0.0,
    regularizer: Any = None,
    lam: float = 1.0,
    x0: Any = None,
    bounds: Any = None,
    atol: float = 1e-6,
    btol: float = 1e-6,
    maxiter: int | None = None,
    callback: Callable[[int, Any], None] | None = None,
    progress: bool = False,
    history: bool = False,
    input_shape: Any = None,
    **conv_options: Any,
) -> DeconvolutionResult:
    """Solve ``min ||W x - y||^2 + damp^2 ||x||^2 + lam^2 ||D x||^2`` for ``x``.

    Parameters
    ----------
    y : array_like
        Observed output, shaped like ``op.output_shape``, a batch ``(N, *output_shape)``
        (each sample solved on its own; ``N = 0`` gives an empty result) or a flat vector.
        Finite.
    op : ConvOperator or array_like
        The forward operator, or a weight from which ``ConvOperator(op, input_shape,
        **conv_options)`` is built.
    method : {'lsqr', 'lsmr', 'cgls'}
        ``scipy.sparse.linalg.lsqr`` / ``lsmr``, or CG on the normal equations. With
        ``bounds``, ``scipy.optimize.lsq_linear`` (trust-region reflective with LSMR) runs
        instead. On the GPU: ``cupyx.scipy.sparse.linalg.lsmr``, convmat's :func:`lsqr`
        and :func:`cgls`.
    damp : float
        Tikhonov damping: adds ``damp^2 ||x||^2`` (of ``x`` itself, whatever ``x0`` is).
        A real number in ``[0, MAX_DAMP]`` (``1e50``, see Notes).
    regularizer : {'gradient'}, sparse matrix, ConvOperator or LinearOperator, optional
        ``D`` in ``lam^2 ||D x||^2``; ``'gradient'`` is :func:`convmat.gradient_operator`
        (forward differences along every spatial axis). The stacked system ``[W; lam D]``
        is applied as an operator, without copying ``W``.
    lam : float
        Weight of the regularizer, a real number in ``[0, MAX_DAMP]``.
    x0 : array_like, optional
        Initial guess shaped like the input (or flat), finite, on the operator's backend.
        A starting point only: it never changes the problem solved (see Notes). Not used
        with ``bounds`` (``lsq_linear`` takes no start).
    bounds : (lower, upper), optional
        Box constraints (scalars or arrays shaped like the input, ``-inf`` / ``inf`` or
        ``None`` for no bound, never NaN; ``lower < upper``): ``bounds=(0, None)`` asks for
        ``x >= 0``. CPU only.
    atol, btol : float
        Stopping tolerances with SciPy's meaning (``btol``: relative residual of a
        consistent system; ``atol``: relative normal-equation residual), finite and
        ``>= 0``. With ``bounds``, ``atol`` is ``lsq_linear``'s ``tol``.
    maxiter : int, optional
        Iteration limit, any positive integer (``numbers.Integral``, NumPy's included;
        default: SciPy's, ``2*n`` for lsqr, ``min(m, n)`` for lsmr; ``n`` for cgls).
        Stopping on it is reported in ``stop_reason`` and ``converged=False``.
    callback : callable, optional
        ``callback(k, x_k)`` after each iteration ``k`` (``x_k`` flat). SciPy's solvers
        expose no iterates: with a callback (or ``history``), ``lsqr`` runs convmat's
        LSQR (:func:`lsqr`, the same recurrences and stopping rules); ``lsmr`` and
        ``bounds`` do not support it.
    progress : bool
        Show a tqdm progress bar (needs ``tqdm``).
    history : bool
        Record per-iteration residual norms in ``result.history``.
    input_shape, **conv_options
        With a weight as ``op``: the input shape and options of the convolution.

    Returns
    -------
    DeconvolutionResult
        Per-sample fields are tuples for a batch (empty for an empty batch).

    Raises
    ------
    ValueError
        ``y``, ``x0`` or ``bounds`` of the wrong shape or with NaN (``y``, ``x0``: or inf),
        an unknown method, ``damp``, ``lam``, ``atol`` or ``btol`` negative, not finite or
        (``damp``, ``lam``) above ``MAX_DAMP``, ``maxiter`` not a positive integer, crossed
        bounds, bounds on the GPU, an unsupported combination.
    TypeError
        ``y``, ``x0`` or a sparse regularizer on another backend than the operator, a
        non-numeric ``y``, ``x0``, ``bounds``, ``damp``, ``lam``, ``atol`` or ``btol``, a
        complex ``x0`` for a real problem, a bad regularizer, complex data with bounds.
    FloatingPointError
        The solve overflowed float64 (``x`` came back with NaN or inf), or the solution
        or its residual norms are too large for float64.

    Notes
    -----
    Every method (and every start ``x0``) solves the same problem, the stacked least
    squares ``min || [W; lam D; damp I] x - [y; 0; 0] ||``. SciPy's ``lsqr`` and ``lsmr``
    with ``x0`` damp the correction ``x - x0`` instead, so with ``x0`` and ``damp > 0``
    they run on the stacked operator with ``damp=0`` (their initial residual is then
    ``[y - W x0; -lam D x0; -damp x0]``); :func:`cgls` and :func:`lsqr` damp ``x``
    themselves. When the solution is unique (``damp > 0``, or ``W`` of full column rank)
    ``x0`` only changes the path; when it is not (``damp = 0`` and a rank-deficient
    ``[W; lam D]``), the Krylov solvers return the least-squares solution nearest ``x0``
    (the minimum-norm one from ``x0 = 0``).

    Least squares is scale-equivariant: each sample is solved for ``y / s`` (``x0 / s``,
    ``bounds / s``) with ``s`` the power of two just above ``max|y|``, and ``x`` is
    multiplied back. A power of two is exact, so this changes no rounding; it keeps the
    norms the solvers square inside float64's range for any finite ``y``. ``atol`` and
    ``btol`` are relative, so unchanged; ``damp`` and ``lam`` compare with ``W`` and
    ``D``, not with ``y``, so unchanged too; ``lsq_linear``'s ``tol`` (which is
    absolute) thereby applies to ``y`` scaled to ``max|y| < 1``. A zero ``y`` (without
    bounds) returns ``x = 0`` at once.

    ``damp`` and ``lam`` are at most ``MAX_DAMP = 1e50``: the solvers square them, and
    CGLS squares its normal-equation residual, about ``damp^2 ||x0||`` from a start, so
    ``damp^4`` must fit float64 with room for the norms of ``W``, ``x0`` and ``y``. No
    problem needs more: beyond ``damp ~ 1e8 ||W||`` (``||W|| / sqrt(eps)``) the solution
    is ``W^H y / damp^2`` to machine precision. A solve that still over- or underflows
    (a weight near float64's limits) raises ``FloatingPointError``; no NaN or inf is ever
    returned.

    ``stop_reason`` says what holds: when no iteration was needed, it tells apart a zero
    ``y``, ``W^H y = 0`` (``x = 0`` is a least-squares solution although ``y`` is not
    zero), and a start ``x0`` that already solves the problem exactly or in the
    least-squares sense.

    Examples
    --------
    >>> import numpy as np
    >>> import convmat
    >>> op = convmat.ConvOperator(np.array([[0., 1.], [2., 3.]]), (2, 2), padding=1)
    >>> x = np.array([[1., 2.], [3., 4.]])
    >>> res = convmat.deconvolve(op @ x, op, atol=1e-12, btol=1e-12)
    >>> np.round(res.x, 10), res.converged
    (array([[1., 2.],
           [3., 4.]]), True)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
    damp = _check_number("damp", damp, MAX_DAMP,
                         "beyond ~1e8 ||W|| the solution is W^H y / damp^2 to machine "
                         "precision")
    lam = _check_number("lam", lam, MAX_DAMP,
                        "beyond ~1e8 ||W|| / ||D|| the solution is the least-squares one "
                        "restricted to the null space of D to machine precision")
    atol = _check_number("atol", atol)
    btol = _check_number("btol", btol)
    maxiter = _check_maxiter(maxiter)
    op = _as_operator(op, input_shape, conv_options)
    batch, single = _check_y(y, op)
    reg = _regularizer(regularizer, op)
    complex_ = op.dtype.kind == "c" or batch.dtype.kind == "c"
    if bounds is not None and op.device != "cpu":
        raise ValueError(
            "bounds run scipy.optimize.lsq_linear, which works on the CPU only; move the "
            "problem there (op.to_cpu(), convmat.to_cpu(y)) or drop the bounds"
        )
    box = _bounds(bounds, op, complex_)
    wants_iterates = callback is not None or history
    if wants_iterates and (box is not None or method == "lsmr"):
        what = "bounds (lsq_linear)" if box is not None else "method='lsmr' (SciPy's)"
        raise ValueError(
            f"callback and history need the iterates, which {what} does not expose; "
            "use method='lsqr' or 'cgls'"
        )
    start = _check_x0(x0, op, complex_)
    xp = array_namespace(op.matrix)
    name = "lsq_linear" if box is not None else method
    if batch.shape[0] == 0:
        dtype = np.result_type(op.dtype, batch.dtype, np.float32)
        return DeconvolutionResult(xp.zeros((0, *op.input_shape), dtype=dtype), name,
                                   (), (), (), (), (), ())

    system = _System(op, reg, lam)
    results = []
    with _one_blas_thread():
        for b in batch:
            results.append(_solve_one(system, b, method, damp, box, start, atol, btol,
                                      maxiter, callback, progress, history))
    xs = xp.stack([r[0] for r in results]).reshape((len(results), *op.input_shape))
    fields = list(zip(*(r[1:] for r in results), strict=True))
    if single:
        return DeconvolutionResult(xs[0], name, *(f[0] for f in fields))
    return DeconvolutionResult(xs, name, *(tuple(f) for f in fields))


def _times_pow2(a: Any, e: int) -> Any:
    """``a * 2**e``, exact (unless it over- or underflows) for any ``e`` in float64's range.

    Two factors, so that neither ``2.0**e`` nor ``2.0**-e`` overflows for
    ``|e| <= 1074``; an overflowing product is ``inf`` (checked by the caller).
    """
    if e == 0:
        return a
    half = e // 2
    with np.errstate(over="ignore", under="ignore"):
        return a * 2.0**half * 2.0 ** (e - half)


def _norm(v: Any, xp: ModuleType) -> float:
    """``||v||`` without overflow or underflow of its squares (scaled by ``max|v|``)."""
    top = float(xp.max(xp.abs(v))) if v.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return top
    return top * float(xp.linalg.norm(v / top))


def _start_reason(x0_given: bool, exact: bool) -> str:
    """Why a solver stopped before its first iteration (SciPy's ``istop=0``), truly."""
    if not x0_given:  # y is not zero (solved before): the start x = 0 had A^H b = W^H y = 0
        return ("W^H y = 0: x = 0 is a least-squares solution (y is not zero but is "
                "orthogonal to the range of W)")
    if exact:
        return "x0 is an exact solution: the residual of the (stacked) system at x0 is zero"
    return "x0 is a least-squares solution: the normal equations hold at x0"


def _solve_one(system: _System, y: Any, method: str, damp: float, box: Any, x0: Any,
               atol: float, btol: float, maxiter: int | None, callback: Any, progress: bool,
               history: bool) -> tuple[Any, ...]:
    n, xp = system.n, system.xp
    dtype = np.result_type(system.dtype, y.dtype, np.float32)
    y = y.astype(dtype, copy=False)
    limit = maxiter if maxiter is not None else {"lsqr": 2 * n, "lsmr": min(system.shape),
                                                  "cgls": n}[method]
    amax = float(xp.max(xp.abs(y)))
    if amax == 0.0 and box is None:  # x = 0 is exact (x0 cannot improve on it)
        none = {"residual_norm": np.zeros(0), "normal_residual_norm": np.zeros(0)}
        return (xp.zeros(n, dtype=dtype), 0, _Y_IS_ZERO, True, 0.0, 0.0,
                none if history else None)
    # Solve for y / 2**e with max|y / 2**e| in [0.5, 1): see the Notes of deconvolve.
    e = math.frexp(amax)[1] if amax else 0
    b = system.rhs(_times_pow2(y, -e))
    start = xp.zeros(n, dtype=dtype) if x0 is None else _times_pow2(x0.astype(dtype), -e)
    bar = _progress_bar(progress, limit, "lsq_linear" if box is not None else method)
    tick = None if bar is None else (lambda: bar.update(1))
    hist = None
    try:
        if box is not None:
            scaled_box = (_times_pow2(box[0], -e), _times_pow2(box[1], -e))
            x, istop, itn, reason = _bounded(system, b, damp, scaled_box, atol, maxiter, tick)
        elif method == "cgls" or (method == "lsqr" and (
                xp is not np or callback is not None or history)):
            # convmat's CGLS/LSQR: iterates exposed, and the LSQR on the GPU (CuPy's
            # ``lsqr`` is a direct square solver, not LSQR). Both damp x itself from x0.
            solver = cgls if method == "cgls" else lsqr

            def step(k: int, xk: Any) -> None:
                if tick is not None:
                    tick()
                if callback is not None:
                    callback(k, _times_pow2(xk, e))

            x, istop, itn, hist = solver(system.matvec, system.rmatvec, b, start, damp=damp,
                                         atol=atol, btol=btol, maxiter=limit, callback=step,
                                         xp=xp)
            reason = _STOP_REASONS.get(istop, "")
        else:
            x, istop, itn = _scipy_solve(system, b, method, damp, start, x0 is not None,
                                         atol, btol, limit, tick)
            reason = _STOP_REASONS.get(istop, "")
    finally:
        if bar is not None:
            bar.close()
    bad = int(xp.count_nonzero(~xp.isfinite(x)))
    if bad:
        raise FloatingPointError(
            f"{'lsq_linear' if box is not None else method} overflowed float64: x has {bad} "
            f"NaN or inf entries after {itn} iterations (y was scaled to max|y| < 1 by "
            f"2**{-e}); W (its weight), lam * D, damp or x0 is too large for float64"
        )
    # Report norms of the returned x, computed exactly (one product each), scaled back.
    r = b - system.matvec(x)
    residual = _norm(r[: system.m], xp)
    ar = system.rmatvec(r) - damp * (damp * x)
    normal = _norm(ar, xp)
    if box is None and istop == 0:
        exact = not bool(xp.any(r)) and (damp == 0.0 or not bool(xp.any(x)))  # [r; -damp x]
        if not exact and bool(xp.any(ar)):
            raise FloatingPointError(
                f"{method} stopped before its first iteration because a norm underflowed "
                f"float64: neither the residual (max |r| = {float(xp.max(xp.abs(r))):.3g}) "
                f"nor A^H r (max |A^H r| = {float(xp.max(xp.abs(ar))):.3g}) is zero, but "
                "their squares are below float64's range (y was scaled to max|y| < 1); W "
                "(its weight) or lam * D is too small for float64: rescale it"
            )
        reason = _start_reason(x0 is not None, exact)
    if istop == 7:
        reason = f"iteration limit reached (maxiter={limit})"
    converged = (istop in _CONVERGED) if box is None else istop > 0
    scaled = (float(xp.max(xp.abs(x))), residual, normal)
    x = _times_pow2(x, e)
    residual, normal = _times_pow2(residual, e), _times_pow2(normal, e)
    if not (math.isfinite(residual + normal) and bool(xp.isfinite(x).all())):
        raise FloatingPointError(
            f"the solution is too large for float64: the solve for y / 2**{e} gave "
            f"max|x| = {scaled[0]:.3g}, residual_norm {scaled[1]:.3g} and "
            f"normal_residual_norm {scaled[2]:.3g}, which overflow when multiplied back "
            f"by 2**{e}"
        )
    recorded = None
    if hist is not None and history:
        recorded = {k: _times_pow2(np.asarray(v, dtype=float), e) for k, v in hist.items()}
    return x, itn, reason, converged, residual, normal, recorded


def _scipy_solve(system: _System, b: Any, method: str, damp: float, start: Any,
                 has_x0: bool, atol: float, btol: float, limit: int,
                 tick: Any) -> tuple[Any, int, int]:
    """SciPy's ``lsqr`` / ``lsmr`` (or CuPy's ``lsmr``) on the system, from ``start``.

    Their ``damp`` with ``x0`` damps ``x - x0``: with a start and ``damp > 0`` they run on
    ``[A; damp I]`` with ``damp=0``, so that ``x`` itself is damped.
    """
    xp = system.xp
    matvec: Callable[[Any], Any] = system.matvec
    rmatvec: Callable[[Any], Any] = system.rmatvec
    shape = system.shape
    if has_x0 and damp > 0:
        matvec, rmatvec = _stack_damp(matvec, rmatvec, system.shape[0], damp, xp)
        shape = (shape[0] + shape[1], shape[1])
        b = xp.concatenate([b, xp.zeros(shape[1], dtype=b.dtype)])
        damp = 0.0
    a = _linear_operator(xp, shape, system.dtype, matvec, rmatvec, tick)
    x0_ = start if has_x0 else None
    # Their scalar recurrences follow b's dtype: keep them in double precision (the
    # products still run at W's precision, see _System).
    b = b.astype(np.result_type(b.dtype, np.float64), copy=False)
    if method == "lsqr":
        from scipy.sparse.linalg import lsqr as scipy_lsqr

        out = scipy_lsqr(a, b, damp=damp, atol=atol, btol=btol, iter_lim=limit, x0=x0_)
    else:  # SciPy's or CuPy's lsmr (the same algorithm and signature)
        if xp is np:
            from scipy.sparse.linalg import lsmr as backend_lsmr
        else:
            from cupyx.scipy.sparse.linalg import lsmr as backend_lsmr
        out = backend_lsmr(a, b, damp=damp, atol=atol, btol=btol, maxiter=limit, x0=x0_)
    return out[0], int(out[1]), int(out[2])


def _bounded(system: _System, b: Any, damp: float, box: tuple[Any, Any], tol: float,
             maxiter: int | None, tick: Any) -> tuple[Any, int, int, str]:
    """``scipy.optimize.lsq_linear`` on ``[A; damp I]`` with its LSMR inner solver."""
    from scipy.optimize import lsq_linear

    m, n = system.shape
    if damp > 0:
        matvec, rmatvec = _stack_damp(system.matvec, system.rmatvec, m, damp, np)
        a = _linear_operator(np, (m + n, n), system.dtype, matvec, rmatvec)
        b = np.concatenate([b, np.zeros(n, dtype=b.dtype)])
    else:
        a = system.linear_operator()
    res = lsq_linear(a, b, bounds=box, method="trf", lsq_solver="lsmr", tol=tol,
                     max_iter=maxiter, lsmr_tol="auto")
    if tick is not None:
        for _ in range(res.nit):
            tick()
    # status: -1 failure, 0 iteration limit, 1-3 converged (scipy.optimize.lsq_linear)
    return res.x, int(res.status), int(res.nit), str(res.message)
