"""Krylov least-squares solvers written against an array namespace ``xp``.

:func:`cgls` (CG on the normal equations) and :func:`lsqr` (Paige and Saunders' LSQR with
SciPy's stopping rules) take the products ``matvec`` and ``rmatvec`` of any ``A``, expose
their iterates (a callback, a per-iteration history) and run unchanged on NumPy and CuPy,
where CuPy has no LSQR of its own. Both minimise ``||A x - b||^2 + damp^2 ||x||^2`` from any
start; :func:`stack_damp` gives the products of ``[A; damp I]`` that let a solver damp ``x``
itself rather than the correction ``x - x0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["cgls", "lsqr", "stack_damp"]


def stack_damp(matvec: Callable[[Any], Any], rmatvec: Callable[[Any], Any], m: int,
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
        smv, srmv = stack_damp(matvec, rmatvec, m, damp, xp)
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
