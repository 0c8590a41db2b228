"""Least-squares deconvolution with any convmat operator: :func:`deconvolve`.

``deconvolve(y, op)`` solves ``min ||W x - y||^2 + damp^2 ||x||^2 + lam^2 ||D x||^2`` (and,
with ``bounds``, subject to ``lb <= x <= ub``) with SciPy's ``lsqr`` / ``lsmr``, with CGLS,
with a spectral projected gradient (``spg``, the default with bounds) or with
``scipy.optimize.lsq_linear``, and returns a small frozen :class:`DeconvolutionResult`.
``damp`` or ``lam`` may name a rule that chooses it (:mod:`convmat.regularization`).
This module checks the arguments, scales each sample, runs the
method named in :data:`REGISTRY` and words the outcome; the parts it runs live in their own
modules: :mod:`convmat.system` (the stacked system ``[W; lam D]``), :mod:`convmat.krylov`
(:func:`cgls` and :func:`lsqr`), :mod:`convmat.products` (threaded products, BLAS threads,
the progress bar) and :mod:`convmat.result` (:class:`DeconvolutionResult`).

:data:`REGISTRY` maps each ``method`` to a :class:`Method`: its ``run(problem)``, which
solves one sample's :class:`Problem` and returns an :class:`Outcome`, and its default
iteration limit. A new method is one entry; :data:`METHODS` lists them.

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

import dataclasses
import math
import numbers
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from .algebra import Operator
from .backend import is_cupy_array, refuse_masked, same_backend
from .krylov import cgls, lsqr, stack_damp
from .operator import ConvOperator
from .products import one_blas_thread, progress_bar
from .result import CONVERGED, STOP_REASONS, Y_IS_ZERO, DeconvolutionResult, start_reason
from .system import StackedSystem, linear_operator, resolve_regularizer

__all__ = ["DeconvolutionResult", "cgls", "deconvolve", "lsqr"]


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


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class Problem:
    """One sample's problem, as every solver of :data:`REGISTRY` receives it.

    The problem is ``min ||A x - b||^2 + damp^2 ||x||^2`` (with ``bounds``: subject to
    them), ``A`` the stacked ``system``; ``b``, ``start`` and ``bounds`` are scaled so that
    ``max|y| < 1`` (see :func:`deconvolve`'s Notes).

    Attributes
    ----------
    system : StackedSystem
        ``A = [W; lam D]``.
    b : ndarray
        ``[y; 0]``, scaled.
    start : ndarray
        The flat start: ``x0`` scaled, or zeros.
    x0_given : bool
        Whether ``start`` is the caller's ``x0`` (SciPy's solvers then take it as ``x0``).
    damp, atol, btol : float
        As given to :func:`deconvolve`.
    limit : int
        The iteration limit: ``maxiter``, or the method's default.
    maxiter : int or None
        ``maxiter`` as given (``lsq_linear`` has its own default).
    bounds : (ndarray, ndarray) or None
        The scaled box ``(lower, upper)``, for the bounded path.
    tick : callable or None
        ``tick()`` once per iteration (the progress bar), for solvers that hide their
        iterates.
    callback : callable
        ``callback(k, x_k)`` after each iteration, for solvers that expose their iterates:
        ticks, and calls the caller's callback with ``x_k`` scaled back.
    iterates : bool
        The caller asked for a callback or a history: the iterates must be exposed.
    """

    system: StackedSystem
    b: Any
    start: Any
    x0_given: bool
    damp: float
    atol: float
    btol: float
    limit: int
    maxiter: int | None
    bounds: tuple[Any, Any] | None
    tick: Callable[[], None] | None
    callback: Callable[[int, Any], None]
    iterates: bool


class Outcome(NamedTuple):
    """What a solver of :data:`REGISTRY` returns for one :class:`Problem`.

    ``x`` is the (scaled) solution after ``iterations`` iterations; ``reason`` says why the
    solver stopped and ``converged`` whether that counts as converged; ``at_start`` is
    true when it stopped before its first iteration because the start already solves the
    problem (SciPy's ``istop=0``, which :func:`deconvolve` words); ``history`` holds the
    per-iteration norms of a solver that exposes its iterates.
    """

    x: Any
    iterations: int
    reason: str
    converged: bool
    at_start: bool
    history: dict[str, list[float]] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A ``method`` of :func:`deconvolve`: an entry of :data:`REGISTRY`.

    Attributes
    ----------
    run : callable
        ``run(problem: Problem) -> Outcome``: solve one sample.
    default_maxiter : callable
        ``default_maxiter(m, n)``: the iteration limit without ``maxiter``, from the shape
        ``(m, n)`` of the stacked system.
    iterates : bool
        Whether it can expose its iterates (``callback``, ``history``); False for a
        library solver that hides them.
    """

    run: Callable[[Problem], Outcome]
    default_maxiter: Callable[[int, int], int]
    iterates: bool = True


def _coded(x: Any, istop: int, itn: int, limit: int,
           history: dict[str, list[float]] | None = None) -> Outcome:
    """The outcome of a solver that stops with SciPy's ``lsqr`` / ``lsmr`` codes."""
    reason = (f"iteration limit reached (maxiter={limit})" if istop == 7
              else STOP_REASONS.get(istop, ""))
    return Outcome(x, itn, reason, istop in CONVERGED, istop == 0, history)


def _run_convmat(solver: Callable[..., tuple[Any, int, int, dict[str, list[float]]]],
                 p: Problem) -> Outcome:
    """Run convmat's :func:`cgls` or :func:`lsqr`: iterates exposed, ``x`` itself damped."""
    system = p.system
    x, istop, itn, hist = solver(system.matvec, system.rmatvec, p.b, p.start, damp=p.damp,
                                 atol=p.atol, btol=p.btol, maxiter=p.limit,
                                 callback=p.callback, xp=system.xp)
    return _coded(x, istop, itn, p.limit, hist)


def _library_inputs(p: Problem) -> tuple[Any, Any, float, Any]:
    """The operator, ``b``, ``damp`` and ``x0`` for SciPy's ``lsqr`` / ``lsmr`` (or CuPy's).

    Their ``damp`` with ``x0`` damps ``x - x0``: with a start and ``damp > 0`` they run on
    ``[A; damp I]`` with ``damp=0``, so that ``x`` itself is damped.
    """
    system, b, damp = p.system, p.b, p.damp
    xp = system.xp
    matvec: Callable[[Any], Any] = system.matvec
    rmatvec: Callable[[Any], Any] = system.rmatvec
    shape = system.shape
    if p.x0_given and damp > 0:
        matvec, rmatvec = stack_damp(matvec, rmatvec, system.shape[0], damp, xp)
        shape = (shape[0] + shape[1], shape[1])
        b = xp.concatenate([b, xp.zeros(shape[1], dtype=b.dtype)])
        damp = 0.0
    a = linear_operator(xp, shape, system.dtype, matvec, rmatvec, p.tick)
    # Their scalar recurrences follow b's dtype: keep them in double precision (the
    # products still run at W's precision, see StackedSystem).
    b = b.astype(np.result_type(b.dtype, np.float64), copy=False)
    return a, b, damp, p.start if p.x0_given else None


def _run_lsqr(p: Problem) -> Outcome:
    """SciPy's ``lsqr``, or convmat's :func:`lsqr` for the iterates and on the GPU.

    CuPy's ``lsqr`` is a direct solver for square systems, not LSQR, and is never called.
    """
    if p.system.xp is not np or p.iterates:
        return _run_convmat(lsqr, p)
    from scipy.sparse.linalg import lsqr as scipy_lsqr

    a, b, damp, x0 = _library_inputs(p)
    out = scipy_lsqr(a, b, damp=damp, atol=p.atol, btol=p.btol, iter_lim=p.limit, x0=x0)
    return _coded(out[0], int(out[1]), int(out[2]), p.limit)


def _run_lsmr(p: Problem) -> Outcome:
    """SciPy's or CuPy's ``lsmr`` (the same algorithm and signature)."""
    if p.system.xp is np:
        from scipy.sparse.linalg import lsmr as backend_lsmr
    else:
        from cupyx.scipy.sparse.linalg import lsmr as backend_lsmr
    a, b, damp, x0 = _library_inputs(p)
    out = backend_lsmr(a, b, damp=damp, atol=p.atol, btol=p.btol, maxiter=p.limit, x0=x0)
    return _coded(out[0], int(out[1]), int(out[2]), p.limit)


def _run_cgls(p: Problem) -> Outcome:
    """Run convmat's :func:`cgls` (CG on the normal equations)."""
    return _run_convmat(cgls, p)


def _run_bounded(p: Problem) -> Outcome:
    """``scipy.optimize.lsq_linear`` on ``[A; damp I]`` with its LSMR inner solver.

    The path of every method when ``bounds`` are given (not a method of its own).
    """
    from scipy.optimize import lsq_linear

    system, b = p.system, p.b
    m, n = system.shape
    if p.damp > 0:
        matvec, rmatvec = stack_damp(system.matvec, system.rmatvec, m, p.damp, np)
        a = linear_operator(np, (m + n, n), system.dtype, matvec, rmatvec)
        b = np.concatenate([b, np.zeros(n, dtype=b.dtype)])
    else:
        a = system.linear_operator()
    res = lsq_linear(a, b, bounds=p.bounds or (-np.inf, np.inf), method="trf",
                     lsq_solver="lsmr", tol=p.atol, max_iter=p.maxiter, lsmr_tol="auto")
    if p.tick is not None:
        for _ in range(res.nit):
            p.tick()
    # status: -1 failure, 0 iteration limit, 1-3 converged (scipy.optimize.lsq_linear)
    return Outcome(res.x, int(res.nit), str(res.message), int(res.status) > 0, False)


def _side(bound: Any, xp: ModuleType) -> Any:
    """One side of the box for :func:`_run_spg`: None, a scalar or the array.

    None when unbounded, a scalar when constant (no array read), else the array.
    """
    bound = np.asarray(bound)
    if np.all(np.isinf(bound)):
        return None
    first = float(bound.flat[0])
    if bound.strides == (0,) or np.all(bound == first):
        return first
    return xp.asarray(bound)


def _run_spg(p: Problem) -> Outcome:
    """Spectral projected gradient (projected Barzilai-Borwein) for the box.

    Minimises ``f(x) = ||A x - b||^2 / 2 + damp^2 ||x||^2 / 2`` over ``lower <= x <=
    upper`` (Birgin, Martinez and Raydan 2000, SPG2): the step ``d = P(x - alpha g) - x``
    with the Barzilai-Borwein ``alpha = s^T s / s^T y``, accepted whole when ``f`` stays
    below the largest of its last 10 values (Grippo, Lampariello and Lucidi's nonmonotone
    rule), else cut to the exact minimiser of the quadratic along ``d``. ``A x - b`` and
    ``A d`` are carried, so an iteration costs one product with ``A`` and one with ``A^H``.
    Stops when the projected gradient ``||P(x - g) - x||`` is at most ``atol ||A^H b||``,
    when ``||W x - y|| <= btol ||y||`` (the discrepancy, with ``stop``), or at ``limit``.
    """
    system, b, damp, xp = p.system, p.b, p.damp, p.system.xp
    m = system.m
    lo, hi = (None, None) if p.bounds is None else (_side(p.bounds[0], xp),
                                                     _side(p.bounds[1], xp))

    def project(v: Any) -> Any:  # in place: v is always a temporary
        if lo is not None:
            xp.maximum(v, lo, out=v)
        if hi is not None:
            xp.minimum(v, hi, out=v)
        return v

    def sq(v: Any) -> float:
        return float(xp.vdot(v, v).real)

    x = project(p.start.astype(b.dtype, copy=True))
    r = system.matvec(x) - b
    g = system.rmatvec(r) + damp * damp * x
    scale = _norm(system.rmatvec(b), xp) if p.atol > 0 else 0.0  # ||A^H b||, for atol
    target = p.btol * _norm(b[:m], xp)
    watch = p.atol > 0 or p.iterates  # the projected gradient: for atol, or the history
    history: dict[str, list[float]] = {"residual_norm": [], "normal_residual_norm": []}
    ag = system.matvec(g)  # a Cauchy step to start: alpha = g^T g / ||A g||^2
    gg = sq(g)
    curvature = sq(ag) + damp * damp * gg
    alpha = gg / curvature if curvature > 0 else 1.0
    f = 0.5 * sq(r) + 0.5 * damp * damp * sq(x)  # carried exactly: f is quadratic along d
    recent = [f]
    reason, converged, k = f"iteration limit reached (maxiter={p.limit})", False, 0
    for k in range(1, p.limit + 1):
        pg = _norm(project(x - g) - x, xp) if watch else math.nan
        if p.atol > 0 and pg <= p.atol * scale:
            reason = (f"projected gradient small: ||P(x - g) - x|| = {pg:.3g} <= atol "
                      "||A^H b|| (a solution in the box)")
            converged, k = True, k - 1
            break
        if float(xp.linalg.norm(r[:m])) <= target:
            reason = "discrepancy reached"
            converged, k = True, k - 1
            break
        d = alpha * g
        xp.subtract(x, d, out=d)
        d = project(d)
        d -= x
        ad = system.matvec(d)
        gd = float(xp.vdot(g, d).real)
        d2 = sq(d)
        dd = sq(ad) + damp * damp * d2
        if gd >= 0 or dd == 0:  # no descent direction left at this precision
            reason = "no descent direction left (stationary to rounding)"
            converged, k = True, k - 1
            break
        step = 1.0
        if f + gd + 0.5 * dd > max(recent) + 1e-4 * gd:
            step = min(1.0, -gd / dd)  # the exact minimiser along d
        f += step * gd + 0.5 * step * step * dd
        x = x + step * d  # a new array: a callback may keep the iterates
        r += step * ad
        if k % 50 == 0:  # refresh the carried residual and objective
            r = system.matvec(x) - b
            f = 0.5 * sq(r) + 0.5 * damp * damp * sq(x)
        g_new = system.rmatvec(r)
        if damp:
            g_new += damp * damp * x
        sy = step * (float(xp.vdot(d, g_new).real) - gd)
        g = g_new
        alpha = step * step * d2 / sy if sy > 0 else 1e10 * alpha
        alpha = min(max(alpha, 1e-30), 1e30)
        recent = (recent + [f])[-10:]
        if p.iterates:
            history["residual_norm"].append(math.sqrt(max(2 * f, 0.0)))
            history["normal_residual_norm"].append(pg)
            p.callback(k, x)
        elif p.tick is not None:
            p.tick()
    return Outcome(x, k, reason, converged, False, history)


#: The methods of :func:`deconvolve` by name, with SciPy's default iteration limits
#: (``2 n`` for lsqr, ``min(m, n)`` for lsmr; ``n`` for cgls); ``spg`` (the box's fast
#: path) stops at 1000 iterations by default.
REGISTRY: dict[str, Method] = {
    "lsqr": Method(_run_lsqr, lambda m, n: 2 * n),
    "lsmr": Method(_run_lsmr, lambda m, n: min(m, n), iterates=False),
    "cgls": Method(_run_cgls, lambda m, n: n),
    "spg": Method(_run_spg, lambda m, n: 1000),
    "lsq_linear": Method(_run_bounded, lambda m, n: n, iterates=False),
}
METHODS = tuple(REGISTRY)


# --------------------------------------------------------------------------- deconvolve
def _as_operator(op: Any, input_shape: Any, conv_options: dict[str, Any]) -> Operator:
    if isinstance(op, Operator):
        if input_shape is not None or conv_options:
            raise TypeError(
                "input_shape and convolution options are for building an operator from a "
                f"weight; op is already an operator ({type(op).__name__}; got "
                f"{sorted(conv_options) or 'input_shape'})"
            )
        return op
    if input_shape is None:
        raise TypeError(
            "op must be a convmat operator (ConvOperator, a composition, a layer, ...), or a "
            "weight together with input_shape=... (and the convolution options)"
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


def _numeric(name: str, value: Any, op: Operator, use: str) -> Any:
    """``value`` as an array on the operator's backend, refused unless numeric."""
    xp = op.xp
    refuse_masked(name, value, use)
    same_backend(name, value, xp, "the operator")
    array = np.asarray(value) if xp is np else value
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def _check_y(y: Any, op: Operator) -> tuple[Any, bool]:
    """``y`` as a batch ``(N, m)`` and whether it was a single output."""
    xp = op.xp
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


def _check_x0(x0: Any, op: Operator, complex_: bool) -> Any:
    """``x0`` flat, on the operator's backend, with finite entries (or None)."""
    if x0 is None:
        return None
    xp = op.xp
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


def _bounds(bounds: Any, op: Operator, complex_: bool) -> tuple[Any, Any] | None:
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


def _bound(name: str, value: Any, default: float, op: Operator) -> Any:
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
    damp: float | str = 0.0,
    regularizer: Any = None,
    lam: float | str = 1.0,
    noise_level: float | str | None = None,
    tau: float = 1.0,
    stop: str | None = None,
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
    op : Operator or array_like
        The forward operator (a :class:`ConvOperator`, a composition of operators, a layer
        such as :func:`convmat.avg_pool_operator`; an affine one is solved as
        ``op(x) = W x + b ~ y``), or a weight from which ``ConvOperator(op, input_shape,
        **conv_options)`` is built.
    method : {'lsqr', 'lsmr', 'cgls', 'spg', 'lsq_linear'}
        ``scipy.sparse.linalg.lsqr`` / ``lsmr``, CG on the normal equations, the spectral
        projected gradient (projected Barzilai-Borwein, two products an iteration) or
        ``scipy.optimize.lsq_linear`` (trust-region reflective with LSMR: exact, for small
        problems). With ``bounds``, ``spg`` runs unless ``'lsq_linear'`` is asked. On the
        GPU: ``cupyx.scipy.sparse.linalg.lsmr``, convmat's :func:`lsqr` and :func:`cgls`.
    damp : float or {'discrepancy', 'gcv', 'rgcv', 'lcurve'}
        Tikhonov damping: adds ``damp^2 ||x||^2`` (of ``x`` itself, whatever ``x0`` is).
        A real number in ``[0, MAX_DAMP]`` (``1e50``, see Notes), or a rule that chooses it
        from the data (:mod:`convmat.regularization`): the discrepancy principle (needs
        ``noise_level``), generalised cross-validation (Hutchinson's trace), robust GCV
        (Lukas 2006) or the L-curve's corner. The choice, with the curve it came from, is
        in ``result.choice``.
    regularizer : {'gradient'}, sparse matrix, ConvOperator or LinearOperator, optional
        ``D`` in ``lam^2 ||D x||^2``; ``'gradient'`` is :func:`convmat.gradient_operator`
        (forward differences along every spatial axis). The stacked system ``[W; lam D]``
        is applied as an operator, without copying ``W``.
    lam : float or {'discrepancy', 'gcv', 'rgcv', 'lcurve'}
        Weight of the regularizer, a real number in ``[0, MAX_DAMP]``, or a rule as for
        ``damp`` (one of the two at most).
    noise_level : float or 'estimate', optional
        The standard deviation ``sigma`` of the noise in ``y``, for the discrepancy
        principle (``damp``/``lam`` or ``stop``); ``'estimate'`` estimates it from each
        sample (:func:`convmat.estimate_noise`: the wavelet MAD).
    tau : float
        The discrepancy's safety factor (>= 1 in theory): the target residual is
        ``||W x - y|| = tau sigma sqrt(m)``, ``m`` the outputs.
    stop : {'discrepancy'}, optional
        Stop the Krylov iterations once ``||W x - y|| <= tau sigma sqrt(m)`` (early
        stopping regularises: the iterates first approach the truth, then fit the noise).
        Sets ``btol`` to that ratio and ``atol`` to 0.
    x0 : array_like, optional
        Initial guess shaped like the input (or flat), finite, on the operator's backend.
        A starting point only: it never changes the problem solved (see Notes). Not used
        with ``bounds`` (``lsq_linear`` takes no start).
    bounds : (lower, upper), optional
        Box constraints (scalars or arrays shaped like the input, ``-inf`` / ``inf`` or
        ``None`` for no bound, never NaN; ``lower < upper``): ``bounds=(0, None)`` asks for
        ``x >= 0``. CPU only. Solved by ``spg`` (or ``lsq_linear`` when asked).
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

    The damping chosen by the discrepancy principle: the residual meets ``sigma sqrt(m)``.
    A symmetric (reflexive) boundary models a scene that continues past the frame.

    >>> rng = np.random.default_rng(0)
    >>> blur = convmat.ConvOperator(np.full((3, 3), 1 / 9), (32, 32), padding="same",
    ...                             padding_mode="symmetric")
    >>> y = blur @ convmat.data.phantom(32) + 0.01 * rng.standard_normal((32, 32))
    >>> res = convmat.deconvolve(y, blur, damp="discrepancy", noise_level=0.01)
    >>> res.choice.rule, bool(abs(res.residual_norm / (0.01 * 32) - 1) < 1e-2)
    ('discrepancy', True)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
    rule, parameter = _rule(damp, lam, regularizer, noise_level, stop)
    damp_value = 0.0 if parameter == "damp" else _check_number(
        "damp", damp, MAX_DAMP,
        "beyond ~1e8 ||W|| the solution is W^H y / damp^2 to machine precision")
    lam_value = 0.0 if parameter == "lam" else _check_number(
        "lam", lam, MAX_DAMP,
        "beyond ~1e8 ||W|| / ||D|| the solution is the least-squares one restricted to the "
        "null space of D to machine precision")
    tau = _check_number("tau", tau)
    if isinstance(noise_level, numbers.Real) and not isinstance(noise_level, bool):
        noise_level = _check_number("noise_level", noise_level)
    atol = _check_number("atol", atol)
    btol = _check_number("btol", btol)
    maxiter = _check_maxiter(maxiter)
    op = _as_operator(op, input_shape, conv_options)
    batch, single = _check_y(y, op)
    if op.offset is not None:  # an affine map: solve W x = y - b
        batch = batch - op.offset.reshape(1, -1)
    reg = resolve_regularizer(regularizer, op)
    complex_ = op.dtype.kind == "c" or batch.dtype.kind == "c"
    if (bounds is not None or method in ("spg", "lsq_linear")) and op.device != "cpu":
        raise ValueError(
            "bounds (spg, lsq_linear) run on the CPU only; move the problem there "
            "(op.to_cpu(), convmat.to_cpu(y)) or drop the bounds"
        )
    if (method in ("spg", "lsq_linear")) and complex_:
        raise TypeError(f"method={method!r} needs a real problem; the operator or y is complex")
    box = _bounds(bounds, op, complex_)
    name = _bounded_name(method) if box is not None else method
    wants_iterates = callback is not None or history
    if wants_iterates and not REGISTRY[name].iterates:
        exposing = " or ".join(repr(k) for k, m in REGISTRY.items() if m.iterates)
        raise ValueError(
            f"callback and history need the iterates, which method={name!r} (SciPy's) does "
            f"not expose; use method={exposing}"
        )
    if rule is not None and wants_iterates:
        raise ValueError(f"callback and history follow one solve, but {parameter}={rule!r} "
                         "runs many; fix the weight (the value in result.choice) to follow it")
    start = _check_x0(x0, op, complex_)
    xp = op.xp
    if batch.shape[0] == 0:
        dtype = np.result_type(op.dtype, batch.dtype, np.float32)
        return DeconvolutionResult(xp.zeros((0, *op.input_shape), dtype=dtype), name,
                                   (), (), (), (), (), ())

    system = StackedSystem(op, reg, lam_value)
    results, choices = [], []
    with one_blas_thread():
        for b in batch:
            sigma = _sigma(noise_level, b, op)
            if rule is not None and parameter is not None:
                out, choice = _choose(rule, parameter, system, op, reg, b, method, damp_value,
                                      box, start, atol, btol, maxiter, sigma, tau, progress)
                results.append(out)
                choices.append(choice)
                continue
            b_atol, b_btol = atol, btol
            if stop is not None and sigma is not None:  # LSQR's test 1 with atol = 0
                b_atol = 0.0
                b_btol = tau * sigma * math.sqrt(b.size) / max(_norm(b, xp), 1e-300)
            out = _solve_one(system, b, method, damp_value, box, start, b_atol, b_btol,
                             maxiter, callback, progress, history)
            if stop is not None and out[2] == STOP_REASONS[1]:
                out = (*out[:2], (f"discrepancy reached: ||W x - y|| = {out[4]:.6g} <= tau "
                                  f"sigma sqrt(m) = {b_btol * _norm(b, xp):.6g}"), *out[3:])
            results.append(out)
    xs = xp.stack([r[0] for r in results]).reshape((len(results), *op.input_shape))
    fields = list(zip(*(r[1:] for r in results), strict=True))
    if single:
        result = DeconvolutionResult(xs[0], name, *(f[0] for f in fields))
        return dataclasses.replace(result, choice=choices[0] if choices else None)
    result = DeconvolutionResult(xs, name, *(tuple(f) for f in fields))
    return dataclasses.replace(result, choice=tuple(choices) if choices else None)


def _rule(damp: Any, lam: Any, regularizer: Any, noise_level: Any,
          stop: Any) -> tuple[str | None, str | None]:
    """The rule asked for ``damp`` or ``lam`` (at most one), checked with its needs."""
    from .regularization import RULES

    asked = [(name, value) for name, value in (("damp", damp), ("lam", lam))
             if isinstance(value, str)]
    if len(asked) > 1:
        raise ValueError("damp and lam cannot both be chosen by a rule; fix one of them")
    rule, parameter = asked[0][1] if asked else None, asked[0][0] if asked else None
    if rule is not None and rule not in RULES:
        raise ValueError(f"{parameter}={rule!r} is not a number nor one of "
                         f"{', '.join(map(repr, RULES))}")
    if parameter == "lam" and regularizer is None:
        raise ValueError(f"lam={rule!r} chooses the regularizer's weight: pass regularizer=")
    if stop is not None and stop != "discrepancy":
        raise ValueError(f"stop={stop!r} is not known; use stop='discrepancy' (or None)")
    if stop is not None and rule is not None:
        raise ValueError("stop='discrepancy' stops the iterations instead of choosing a "
                         f"weight; drop {parameter}={rule!r} or stop")
    needs = "discrepancy" in (rule, stop)
    if needs and noise_level is None:
        raise ValueError("the discrepancy principle needs noise_level=sigma (the noise's "
                         "standard deviation) or noise_level='estimate'")
    if isinstance(noise_level, str) and noise_level != "estimate":
        raise ValueError(f"noise_level={noise_level!r} must be a number or 'estimate'")
    return rule, parameter


def _sigma(noise_level: Any, b: Any, op: Operator) -> float | None:
    """``noise_level``, or its estimate from the sample ``b`` (the spatial axes)."""
    if noise_level is None:
        return None
    if noise_level != "estimate":
        return float(noise_level)
    from .regularization import estimate_noise
    from .system import spatial_axes

    out = op.output_shape
    spatial = min(spatial_axes(op), len(out))
    return estimate_noise(b.real.reshape(out), axes=range(len(out) - spatial, len(out)))


def _power_norm(matvec: Callable[[Any], Any], rmatvec: Callable[[Any], Any], n: int,
                xp: ModuleType, dtype: Any, steps: int = 12) -> float:
    """``||A||`` estimated by power iteration on ``A^H A`` (the rules' scale, not a bound)."""
    v = xp.asarray(np.random.default_rng(0).standard_normal(n)).astype(dtype)
    norm = 0.0
    for _ in range(steps):
        w = rmatvec(matvec(v))
        wn = float(xp.linalg.norm(w))
        if wn == 0:
            return 0.0
        norm, v = math.sqrt(wn / float(xp.linalg.norm(v))), w / wn
    return norm


def _choose(rule: str, parameter: str, system: StackedSystem, op: Operator, reg: Any, y: Any,
            method: str, damp: float, box: Any, start: Any, atol: float, btol: float,
            maxiter: int | None, sigma: float | None, tau: float,
            progress: bool) -> tuple[tuple[Any, ...], Any]:
    """Choose ``damp`` or ``lam`` for one sample by ``rule``; the solve at the choice."""
    from .regularization import choose_parameter

    xp = system.xp
    dtype = np.result_type(system.dtype, y.dtype, np.float32)
    y = y.astype(dtype, copy=False)
    w_norm = _power_norm(lambda v: system.w @ v, lambda u: system.wh @ u, system.n, xp, dtype)
    scale = w_norm
    if parameter == "lam":
        reg_h = system.reg_h
        d_norm = _power_norm(lambda v: reg @ v, lambda u: reg_h @ u, system.n, xp, dtype)
        scale = w_norm / d_norm if d_norm > 0 else w_norm
    full: dict[float, tuple[Any, ...]] = {}

    def solve(value: float, rhs: Any, x0: Any) -> tuple[Any, bool, float]:
        if parameter == "lam":
            system.lam = value
        if x0 is None and rhs is y:  # the first solve starts from the caller's x0
            x0 = start
        out = _solve_one(system, rhs, method, value if parameter == "damp" else damp, box,
                         x0, atol, btol, maxiter, None, False, False)
        if rhs is y:
            full[value] = out
        return out[0], bool(out[3]), out[4]  # x, converged, ||W x - rhs||

    def penalty(x: Any) -> float:
        return _norm(x if parameter == "damp" else reg @ x, xp)

    bar = progress_bar(progress, None, f"{parameter}={rule} (solves)")
    try:
        choice, _ = choose_parameter(
            rule, solve, penalty,
            lambda x: system.w @ system._at_matrix_precision(x), y, scale=scale,
            parameter=parameter, noise_level=sigma, tau=tau,
            tick=None if bar is None else (lambda: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    if parameter == "lam":
        system.lam = choice.value
    return full[choice.value], choice


def _bounded_name(method: str) -> str:
    """The method that runs with bounds: ``lsq_linear`` when asked, else ``spg``."""
    return "lsq_linear" if method == "lsq_linear" else "spg"


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


def _solve_one(system: StackedSystem, y: Any, method: str, damp: float, box: Any, x0: Any,
               atol: float, btol: float, maxiter: int | None, callback: Any, progress: bool,
               history: bool) -> tuple[Any, ...]:
    n, xp = system.n, system.xp
    dtype = np.result_type(system.dtype, y.dtype, np.float32)
    y = y.astype(dtype, copy=False)
    name = _bounded_name(method) if box is not None else method
    limit = maxiter if maxiter is not None else REGISTRY[name].default_maxiter(*system.shape)
    amax = float(xp.max(xp.abs(y)))
    if amax == 0.0 and box is None:  # x = 0 is exact (x0 cannot improve on it)
        none = {"residual_norm": np.zeros(0), "normal_residual_norm": np.zeros(0)}
        return (xp.zeros(n, dtype=dtype), 0, Y_IS_ZERO, True, 0.0, 0.0,
                none if history else None)
    # Solve for y / 2**e with max|y / 2**e| in [0.5, 1): see the Notes of deconvolve.
    e = math.frexp(amax)[1] if amax else 0
    b = system.rhs(_times_pow2(y, -e))
    start = xp.zeros(n, dtype=dtype) if x0 is None else _times_pow2(x0.astype(dtype), -e)
    scaled_box = None if box is None else (_times_pow2(box[0], -e), _times_pow2(box[1], -e))
    run = REGISTRY[name].run
    bar = progress_bar(progress, limit, name)
    tick = None if bar is None else (lambda: bar.update(1))

    def step(k: int, xk: Any) -> None:
        if tick is not None:
            tick()
        if callback is not None:
            callback(k, _times_pow2(xk, e))

    problem = Problem(system, b, start, x0 is not None, damp, atol, btol, limit, maxiter,
                      scaled_box, tick, step, callback is not None or history)
    try:
        x, itn, reason, converged, at_start, hist = run(problem)
    finally:
        if bar is not None:
            bar.total = bar.n  # the bar ends at the iterations that ran, not at maxiter
            bar.refresh()
            bar.close()
    bad = int(xp.count_nonzero(~xp.isfinite(x)))
    if bad:
        raise FloatingPointError(
            f"{name} overflowed float64: x has {bad} "
            f"NaN or inf entries after {itn} iterations (y was scaled to max|y| < 1 by "
            f"2**{-e}); W (its weight), lam * D, damp or x0 is too large for float64"
        )
    # Report norms of the returned x, computed exactly (one product each), scaled back.
    r = b - system.matvec(x)
    residual = _norm(r[: system.m], xp)
    ar = system.rmatvec(r) - damp * (damp * x)
    normal = _norm(ar, xp)
    if at_start:
        exact = not bool(xp.any(r)) and (damp == 0.0 or not bool(xp.any(x)))  # [r; -damp x]
        if not exact and bool(xp.any(ar)):
            raise FloatingPointError(
                f"{name} stopped before its first iteration because a norm underflowed "
                f"float64: neither the residual (max |r| = {float(xp.max(xp.abs(r))):.3g}) "
                f"nor A^H r (max |A^H r| = {float(xp.max(xp.abs(ar))):.3g}) is zero, but "
                "their squares are below float64's range (y was scaled to max|y| < 1); W "
                "(its weight) or lam * D is too small for float64: rescale it"
            )
        reason = start_reason(x0 is not None, exact)
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

