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
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .backend import array_namespace, linear_operator_class, same_backend, to_gpu
from .indices import default_threads, thread_pool
from .operator import ConvOperator, gradient_operator

__all__ = ["DeconvolutionResult", "cgls", "deconvolve", "lsqr"]

METHODS = ("lsqr", "lsmr", "cgls")

# SciPy's istop codes for lsqr and lsmr (and ours), in words.
_STOP_REASONS = {
    0: "y is zero: x = 0 is the exact solution",
    1: "residual small: W x = y to within atol and btol (a consistent system)",
    2: "least-squares solution: normal-equation residual within atol",
    3: "condition number estimate of the system exceeds conlim",
    4: "residual small to machine precision (a consistent system)",
    5: "least-squares solution to machine precision",
    6: "condition number estimate too large for machine precision",
    7: "iteration limit reached (maxiter)",
}
_CONVERGED = {0, 1, 2, 4, 5}


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
        LinearOperator = linear_operator_class(self.xp)  # noqa: N806 - a class
        rmatvec = self.rmatvec
        if tick is not None:
            calls = [0]

            def rmatvec(u: Any) -> Any:
                # SciPy's lsqr and lsmr apply A^H once before their loop, then once per
                # iteration: tick from the second call on.
                if calls[0]:
                    tick()
                calls[0] += 1
                return self.rmatvec(u)

        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=rmatvec,
                              dtype=self.dtype)


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

    Returns ``(x, istop, iterations, history)``; ``istop`` uses the codes of SciPy's
    ``lsqr``: 1 when ``||b - A x|| <= btol ||b||``, 2 when the normal-equation residual
    ``||A^H (b - A x) - damp^2 x||`` has dropped below ``atol`` times its initial value,
    7 at the iteration limit. ``callback(k, x)`` is called after iteration ``k``.

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
    if bnorm == 0.0 and s0 == 0.0:
        return x, 0, 0, history
    istop, k = 7, 0
    while k < maxiter:
        if s0 == 0.0:
            istop = 2
            break
        k += 1
        q = matvec(p)
        delta = float(xp.vdot(q, q).real) + (d2 * float(xp.vdot(p, p).real) if d2 else 0.0)
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
    same code runs on CuPy. Returns ``(x, istop, iterations, history)`` with SciPy's codes.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> x, istop, k, _ = lsqr(A.__matmul__, A.T.__matmul__, np.array([2.0, 1.0, 2.0]),
    ...                       np.zeros(2), atol=1e-12, btol=1e-12)
    >>> np.round(x, 12), istop
    (array([1., 1.]), 1)
    """
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
    anorm = acond = ddnorm = res2 = xxnorm = z = sn2 = 0.0
    cs2 = -1.0
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    dampsq = damp * damp
    istop, itn = 0, 0
    while itn < maxiter:
        itn += 1
        u = matvec(v) - alfa * u
        beta = float(xp.linalg.norm(u))
        if beta > 0:
            u = u / beta
            anorm = math.sqrt(anorm**2 + alfa**2 + beta**2 + dampsq)
            v = rmatvec(u) - beta * v
            alfa = float(xp.linalg.norm(v))
            if alfa > 0:
                v = v / alfa
        # eliminate the damping parameter
        if damp > 0:
            rhobar1 = math.sqrt(rhobar**2 + dampsq)
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
        xnorm = math.sqrt(xxnorm + zbar**2)
        gamma = math.hypot(gambar, theta)
        cs2, sn2 = gambar / gamma, theta / gamma
        z = rhs / gamma
        xxnorm += z**2
        acond = anorm * math.sqrt(ddnorm)
        res1 = phibar**2
        res2 += psi**2
        rnorm = math.sqrt(res1 + res2)
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


def _check_y(y: Any, op: ConvOperator) -> tuple[Any, bool]:
    """``y`` as a batch ``(N, m)`` and whether it was a single output."""
    xp = array_namespace(op.matrix)
    same_backend("y", y, xp, "the operator")
    y = np.asarray(y) if xp is np else y
    if y.dtype.kind not in "biufc":
        raise TypeError(f"y must be a numeric array, got dtype {y.dtype}")
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


def _bounds(bounds: Any, n: int, complex_: bool) -> tuple[Any, Any] | None:
    if bounds is None:
        return None
    if complex_:
        raise TypeError("bounds need a real problem; the operator or y is complex")
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lower, upper), got {bounds!r}")
    lo, hi = (-np.inf if bounds[0] is None else bounds[0],
              np.inf if bounds[1] is None else bounds[1])
    lo = np.broadcast_to(np.asarray(lo, dtype=float).reshape(-1) if np.ndim(lo) else lo, (n,))
    hi = np.broadcast_to(np.asarray(hi, dtype=float).reshape(-1) if np.ndim(hi) else hi, (n,))
    if np.any(lo > hi):
        raise ValueError("bounds: lower bound exceeds upper bound at some entries")
    return lo, hi


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
        (each sample solved on its own) or a flat vector.
    op : ConvOperator or array_like
        The forward operator, or a weight from which ``ConvOperator(op, input_shape,
        **conv_options)`` is built.
    method : {'lsqr', 'lsmr', 'cgls'}
        ``scipy.sparse.linalg.lsqr`` / ``lsmr``, or CG on the normal equations. With
        ``bounds``, ``scipy.optimize.lsq_linear`` (trust-region reflective with LSMR) runs
        instead. On the GPU: ``cupyx.scipy.sparse.linalg.lsmr``, convmat's :func:`lsqr`
        and :func:`cgls`.
    damp : float
        Tikhonov damping: adds ``damp^2 ||x||^2``.
    regularizer : {'gradient'}, sparse matrix, ConvOperator or LinearOperator, optional
        ``D`` in ``lam^2 ||D x||^2``; ``'gradient'`` is :func:`convmat.gradient_operator`
        (forward differences along every spatial axis). The stacked system ``[W; lam D]``
        is applied as an operator, without copying ``W``.
    lam : float
        Weight of the regularizer.
    x0 : array_like, optional
        Initial guess shaped like the input (or flat).
    bounds : (lower, upper), optional
        Box constraints (scalars or arrays shaped like the input; ``None`` for no bound):
        ``bounds=(0, None)`` asks for ``x >= 0``.
    atol, btol : float
        Stopping tolerances with SciPy's meaning (``btol``: relative residual of a
        consistent system; ``atol``: relative normal-equation residual). With ``bounds``,
        ``atol`` is ``lsq_linear``'s ``tol``.
    maxiter : int, optional
        Iteration limit (default: SciPy's, ``2*n`` for lsqr, ``min(m, n)`` for lsmr; ``n``
        for cgls). Stopping on it is reported in ``stop_reason`` and ``converged=False``.
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

    Raises
    ------
    ValueError
        ``y`` of the wrong shape or with NaN/inf, an unknown method, negative ``damp`` or
        ``lam``, inconsistent bounds, bounds on the GPU, an unsupported combination.
    TypeError
        ``y``, ``x0`` or a sparse regularizer on another backend than the operator, a bad
        regularizer, complex data with bounds.

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
    for name, value in (("damp", damp), ("lam", lam), ("atol", atol), ("btol", btol)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, int)
                                or maxiter < 1):
        raise ValueError(f"maxiter must be a positive int, got maxiter={maxiter!r}")
    op = _as_operator(op, input_shape, conv_options)
    batch, single = _check_y(y, op)
    reg = _regularizer(regularizer, op)
    n = op.shape[1]
    complex_ = op.dtype.kind == "c" or batch.dtype.kind == "c"
    if bounds is not None and op.device != "cpu":
        raise ValueError(
            "bounds run scipy.optimize.lsq_linear, which works on the CPU only; move the "
            "problem there (op.to_cpu(), convmat.to_cpu(y)) or drop the bounds"
        )
    box = _bounds(bounds, n, complex_)
    wants_iterates = callback is not None or history
    if wants_iterates and (box is not None or method == "lsmr"):
        what = "bounds (lsq_linear)" if box is not None else "method='lsmr' (SciPy's)"
        raise ValueError(
            f"callback and history need the iterates, which {what} does not expose; "
            "use method='lsqr' or 'cgls'"
        )
    start = None
    xp = array_namespace(op.matrix)
    if x0 is not None:
        same_backend("x0", x0, xp, "the operator")
        start = np.asarray(x0) if xp is np else x0
        if start.size != n:
            raise ValueError(
                f"x0 has shape {tuple(start.shape)} but the operator's input has shape "
                f"{op.input_shape} ({n} entries)"
            )
        start = start.reshape(n)

    system = _System(op, reg, lam)
    results = []
    with _one_blas_thread():
        for b in batch:
            results.append(_solve_one(system, b, method, damp, box, start, atol, btol,
                                      maxiter, callback, progress, history))
    xs = xp.stack([r[0] for r in results]).reshape((len(results), *op.input_shape))
    fields = list(zip(*(r[1:] for r in results), strict=True))
    name = "lsq_linear" if box is not None else method
    if single:
        return DeconvolutionResult(xs[0], name, *(f[0] for f in fields))
    return DeconvolutionResult(xs, name, *(tuple(f) for f in fields))


def _solve_one(system: _System, y: Any, method: str, damp: float, box: Any, x0: Any,
               atol: float, btol: float, maxiter: int | None, callback: Any, progress: bool,
               history: bool) -> tuple[Any, ...]:
    n, xp = system.n, system.xp
    dtype = np.result_type(system.dtype, y.dtype, np.float32)
    b = system.rhs(y.astype(dtype, copy=False))
    start = xp.zeros(n, dtype=dtype) if x0 is None else x0.astype(dtype)
    limit = maxiter if maxiter is not None else {"lsqr": 2 * n, "lsmr": min(system.shape),
                                                  "cgls": n}[method]
    bar = _progress_bar(progress, limit, "lsq_linear" if box is not None else method)
    tick = None if bar is None else (lambda: bar.update(1))
    hist = None
    try:
        if box is not None:
            x, istop, itn, reason = _bounded(system, b, damp, box, atol, maxiter, tick)
        elif method == "cgls" or (method == "lsqr" and (
                xp is not np or callback is not None or history)):
            # convmat's CGLS/LSQR: iterates exposed, and the LSQR on the GPU (CuPy's
            # ``lsqr`` is a direct square solver, not LSQR)
            solver = cgls if method == "cgls" else lsqr

            def step(k: int, xk: Any) -> None:
                if tick is not None:
                    tick()
                if callback is not None:
                    callback(k, xk)

            x, istop, itn, hist = solver(system.matvec, system.rmatvec, b, start, damp=damp,
                                         atol=atol, btol=btol, maxiter=limit, callback=step,
                                         xp=xp)
            reason = _STOP_REASONS[istop]
        else:
            a = system.linear_operator(tick)
            x0_ = x0 if x0 is None else start
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
                out = backend_lsmr(a, b, damp=damp, atol=atol, btol=btol, maxiter=limit,
                                   x0=x0_)
            x, istop, itn = out[0], int(out[1]), int(out[2])
            reason = _STOP_REASONS[istop]
    finally:
        if bar is not None:
            bar.close()
    if istop == 7:
        reason = f"iteration limit reached (maxiter={limit})"
    converged = (istop in _CONVERGED) if box is None else istop > 0
    # Report norms of the returned x, computed exactly (one product each).
    r = b - system.matvec(x)
    residual = float(xp.linalg.norm(r[: system.m]))
    normal = float(xp.linalg.norm(system.rmatvec(r) - damp * damp * x))
    recorded = {k: np.asarray(v) for k, v in hist.items()} if hist and history else None
    return x, itn, reason, converged, residual, normal, recorded


def _bounded(system: _System, b: Any, damp: float, box: tuple[Any, Any], tol: float,
             maxiter: int | None, tick: Any) -> tuple[Any, int, int, str]:
    """``scipy.optimize.lsq_linear`` on ``[A; damp I]`` with its LSMR inner solver."""
    from scipy.optimize import lsq_linear
    from scipy.sparse.linalg import LinearOperator

    m, n = system.shape
    if damp > 0:
        def matvec(x: Any) -> Any:
            return np.concatenate([system.matvec(x), damp * x])

        def rmatvec(u: Any) -> Any:
            return system.rmatvec(u[:m]) + damp * u[m:]

        a = LinearOperator((m + n, n), matvec=matvec, rmatvec=rmatvec, dtype=system.dtype)
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
