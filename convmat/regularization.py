"""Choosing the regularisation weight from the data: discrepancy, GCV, L-curve; noise level.

:func:`convmat.deconvolve` takes ``damp="discrepancy"`` (or ``"gcv"``, ``"lcurve"``; the
same for ``lam`` with a regularizer) and hands this module a black box, ``solve(value,
rhs, start) -> x``, with the products it needs. Each rule searches ``value = scale *
10**t`` on a logarithmic axis, warm-starting every solve from the nearest solution found,
and returns a :class:`ParameterChoice`: the value, the curve it came from, and why.

* **Discrepancy principle** (Morozov): the value whose residual ``||W x - y||`` equals
  ``tau sigma sqrt(m)`` (``m`` outputs, noise of standard deviation ``sigma``): the residual
  grows with the weight, so a bracket and a safeguarded secant in ``t`` find it.
* **Generalised cross-validation** (Golub, Heath and Wahba 1979): the minimiser of
  ``V = m ||W x - y||^2 / (m - tr A)^2``, ``A`` the influence matrix ``y -> W x``; its trace
  by Hutchinson's estimator ``z^T A z`` over Rademacher probes ``z`` (Hutchinson 1989; with
  ``m`` outputs one probe's relative error is about ``sqrt(2 tr A) / (m - tr A)``), each a
  solve with ``rhs = z``. A decade grid brackets the minimum, golden-section search refines.
  GCV is known to under-regularise (it minimises the predictive risk, README's table).
* **Robust GCV** (Lukas 2006): ``V (gamma + (1 - gamma) tr(A^2) / m)``, ``gamma = 0.1``, which
  penalises the small weights GCV favours; ``tr(A^2) = E ||A z||^2`` comes from the same probes.
* **L-curve** (Hansen 1992): the corner of ``(log ||W x - y||, log ||L x||)``, the point of
  largest curvature of a cubic spline through a grid of three values per decade (down to
  the first solve that does not converge).

:func:`estimate_noise` estimates ``sigma`` from the data alone: the median absolute
deviation of the finest diagonal Haar wavelet coefficients over 0.6745 (Donoho and
Johnstone 1994), a robust estimator that a smooth (blurred) signal hardly reaches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["RULES", "ParameterChoice", "choose_parameter", "estimate_noise"]

#: The rules :func:`choose_parameter` knows.
RULES = ("discrepancy", "gcv", "rgcv", "lcurve")
#: Robust GCV's ``gamma`` (Lukas 2006 suggests 0.1-0.3; 0.1 did best in README's benchmark).
RGCV_GAMMA = 0.1
#: The search covers ``scale * 10**t`` for ``t`` in this range (``scale`` ~ ``||W||``).
T_RANGE = (-8.0, 2.0)


@dataclasses.dataclass(frozen=True)
class ParameterChoice:
    """The regularisation weight a rule chose, and the curve it came from.

    Attributes
    ----------
    value : float
        The weight chosen (``damp`` or ``lam``).
    parameter : str
        ``'damp'`` or ``'lam'``.
    rule : str
        ``'discrepancy'``, ``'gcv'`` or ``'lcurve'``.
    values, residual_norms, penalty_norms, criterion : ndarray
        Every weight tried (ascending), with ``||W x - y||``, the penalised norm (``||x||``
        for ``damp``, ``||D x||`` for ``lam``) and the rule's criterion there: the residual
        over its target (discrepancy), ``V`` (GCV) or the L-curve's curvature.
    noise_level : float or None
        The ``sigma`` used (given or estimated; None for rules that need none).
    reason : str
        Why this value, in words.
    solves : int
        Solves run to choose it (probes included).
    """

    value: float
    parameter: str
    rule: str
    values: np.ndarray
    residual_norms: np.ndarray
    penalty_norms: np.ndarray
    criterion: np.ndarray
    noise_level: float | None
    reason: str
    solves: int


def estimate_noise(y: Any, axes: Sequence[int] | None = None) -> float:
    """The standard deviation of white noise in ``y``: Donoho's wavelet MAD estimator.

    ``sigma = median |d| / 0.6745`` over the finest diagonal Haar detail coefficients ``d``
    (orthonormal: each is ``sum_c (+-1) y_c / 2^(k/2)`` over a ``2 x ... x 2`` cell of the
    ``k`` axes, the signs alternating along every axis), which keep the noise's variance
    and cancel every signal that is linear along some axis of the cell. 0.6745 is the
    median of ``|N(0, 1)|``. The signal's own finest-scale detail biases it up when it
    rivals the noise: a phantom blurred by a Gaussian of 1.5 pixels reads 2e-3 as about
    2.3e-3, 1e-2 within 10%.

    Parameters
    ----------
    y : array_like
        Real data (an image, a batch of channels, ...), NumPy or CuPy.
    axes : sequence of int, optional
        The axes the signal is smooth along (default: every axis of length >= 2).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``y`` complex, not finite, or without an axis of length >= 2.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u = np.linspace(0, 1, 256)
    >>> smooth = np.sin(4 * u)[:, None] * np.cos(3 * u)[None, :]
    >>> sigma = estimate_noise(smooth + 0.05 * rng.standard_normal((256, 256)))
    >>> bool(abs(sigma - 0.05) < 0.005)
    True
    """
    y = y.get() if hasattr(y, "get") else np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"estimate_noise needs real data, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError("estimate_noise needs finite data: y has NaN or inf")
    axes = [a for a in range(y.ndim) if y.shape[a] >= 2] if axes is None else [
        a % y.ndim for a in axes]
    if not axes or any(y.shape[a] < 2 for a in axes):
        raise ValueError(f"estimate_noise needs axes of length >= 2; y has shape {y.shape} "
                         f"and axes={axes}")
    d = y.astype(np.float64)
    for a in axes:
        even = d.shape[a] - d.shape[a] % 2
        first = np.take(d, np.arange(0, even, 2), axis=a)
        second = np.take(d, np.arange(1, even, 2), axis=a)
        d = (first - second) / math.sqrt(2)
    return float(np.median(np.abs(d)) / 0.6744897501960817)


def choose_parameter(rule: str, solve: Callable[[float, Any, Any], Any],
                     penalty: Callable[[Any], float],
                     forward: Callable[[Any], Any], y: Any, *, scale: float,
                     parameter: str = "damp", noise_level: float | None = None,
                     tau: float = 1.0, probes: int = 1, seed: int = 0,
                     tick: Callable[[], None] | None = None) -> tuple[ParameterChoice, Any]:
    """Choose the weight by ``rule``; return the choice and the solution at it.

    Parameters
    ----------
    rule : {'discrepancy', 'gcv', 'rgcv', 'lcurve'}
    solve : callable
        ``solve(value, rhs, start) -> (x, converged, residual)``: the regularised solution
        for data ``rhs`` (flat, like ``y``) from the start ``start`` (None: zeros), whether
        the solver converged, and ``||W x - rhs||``.
    penalty : callable
        The penalised norm of a solution (``||x||`` or ``||D x||``).
    forward : callable
        ``x -> W x`` (GCV's trace).
    y : ndarray
        The flat data.
    scale : float
        The weights' natural scale (``||W||``, or ``||W|| / ||D||`` for ``lam``).
    noise_level : float
        ``sigma``, for the discrepancy principle.
    tau : float
        The discrepancy's safety factor: the target residual is ``tau sigma sqrt(m)``.
    probes, seed : int
        Hutchinson probes for GCV and their seed.
    tick : callable, optional
        Called once per solve (a progress bar).
    """
    xp = _namespace(y)
    m = int(y.size)
    found: dict[float, tuple[Any, float, float, bool]] = {}  # t -> (x, res, penalty, ok)
    extra = [0]

    def at(t: float) -> tuple[Any, float, float, bool]:
        t = round(t, 6)
        if t not in found:
            near = _nearest(found, t)
            x, ok, res = solve(scale * 10.0 ** t, y, None if near is None else near[0])
            found[t] = (x, res, penalty(x), ok)
            if tick is not None:
                tick()
        return found[t]

    if rule == "discrepancy":
        assert noise_level is not None
        target = tau * noise_level * math.sqrt(m)
        t, reason, crit = _discrepancy(at, target, float(xp.linalg.norm(y)))
    elif rule in ("gcv", "rgcv"):
        rng = np.random.default_rng(seed)
        zs = [xp.asarray(rng.choice([-1.0, 1.0], size=m).astype(y.dtype)) for _ in
              range(probes)]
        probe_x: dict[int, dict[float, Any]] = {i: {} for i in range(probes)}

        def gcv(t: float) -> float:
            _, res, _, _ = at(t)
            trace = trace2 = 0.0
            for i, z in enumerate(zs):
                xz, _, _ = solve(scale * 10.0 ** t, z, _nearest(probe_x[i], t))
                probe_x[i][round(t, 6)] = xz
                extra[0] += 1
                if tick is not None:
                    tick()
                az = forward(xz)
                trace += float(xp.vdot(z, az).real) / probes
                trace2 += float(xp.vdot(az, az).real) / probes  # z^T A^2 z (A symmetric)
            v = m * res ** 2 / max(m - trace, 1e-300) ** 2
            if rule == "rgcv":
                v *= RGCV_GAMMA + (1 - RGCV_GAMMA) * trace2 / m
            return v

        t, reason, crit = _gcv(gcv, rule)
    elif rule == "lcurve":
        t, reason, crit = _lcurve(at)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(rule)
    t = round(t, 6)
    x = at(t)[0]
    ts = sorted(found)
    choice = ParameterChoice(
        value=scale * 10.0 ** t, parameter=parameter, rule=rule,
        values=np.array([scale * 10.0 ** s for s in ts]),
        residual_norms=np.array([found[s][1] for s in ts]),
        penalty_norms=np.array([found[s][2] for s in ts]),
        criterion=np.array([crit.get(s, np.nan) for s in ts]),
        noise_level=noise_level if rule == "discrepancy" else None,
        reason=reason, solves=len(found) + extra[0])
    return choice, x


def _nearest(known: dict[float, Any], t: float) -> Any:
    """The entry of ``known`` (keyed by ``t``) nearest ``t``: a warm start (None if empty)."""
    return known[min(known, key=lambda s: abs(s - t))] if known else None


def _discrepancy(at: Callable[[float], tuple[Any, float, float, bool]], target: float,
                 ynorm: float) -> tuple[float, str, dict[float, float]]:
    """``t`` with ``residual(t) = target``.

    Decades down (or up) from ``t = 0`` to a sign change, then the secant in ``(t, log
    residual)``, kept inside the bracket (Illinois).
    """
    lo_t, hi_t = T_RANGE
    crit: dict[float, float] = {}

    def f(t: float) -> float:
        r = at(t)[1]
        crit[round(t, 6)] = r / target
        return math.log(max(r, 1e-300) / target)

    if target <= 0:
        at(lo_t)
        return lo_t, ("noise_level 0: the target residual is 0, the smallest weight tried "
                      "is chosen"), crit
    if ynorm <= target:
        f(hi_t)
        return hi_t, (f"||y|| = {ynorm:.4g} is within the discrepancy target {target:.4g}: "
                      "the data are all noise, the largest weight tried is chosen"), crit
    t, ft = 0.0, f(0.0)
    step = -1.0 if ft > 0 else 1.0
    while True:
        t2 = t + step
        if not lo_t <= t2 <= hi_t:
            edge = "smallest" if step < 0 else "largest"
            return t, (f"the residual never reached the target {target:.4g} "
                       f"(tau sigma sqrt(m)) over the weights tried; the {edge} is chosen"), crit
        f2 = f(t2)
        if (f2 > 0) != (ft > 0):
            break
        t, ft = t2, f2
    a, fa, b, fb = t, ft, t2, f2  # fa, fb of opposite signs
    side = 0
    for _ in range(30):
        c = b - fb * (b - a) / (fb - fa)
        fc = f(c)
        if abs(fc) < 1e-3 or abs(b - a) < 1e-4:
            return c, (f"the residual ||W x - y|| = {math.exp(fc) * target:.4g} meets the "
                       f"target tau sigma sqrt(m) = {target:.4g}"), crit
        if (fc > 0) == (fb > 0):
            b, fb = c, fc
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
    return c, f"the secant stopped after 30 steps with residual/target {math.exp(fc):.4f}", crit


def _gcv(v: Callable[[float], float], rule: str) -> tuple[float, str, dict[float, float]]:
    """The minimiser of ``V(t)``.

    Decades down from ``t = 0`` until ``V`` rises, then golden-section search on the
    bracket of the lowest decade to 0.05 in ``t`` (12% in the weight; ``V`` is flat there).
    """
    crit: dict[float, float] = {}

    def g(t: float) -> float:
        value = v(t)
        crit[round(t, 6)] = value
        return value

    ts = [0.0]
    vals = [g(0.0)]
    while ts[-1] - 1 >= T_RANGE[0]:
        ts.append(ts[-1] - 1)
        vals.append(g(ts[-1]))
        if len(vals) >= 3 and vals[-1] > vals[-2] and vals[-2] < min(vals[:-2]):
            break
    i = int(np.argmin(vals))
    a, b = ts[min(i + 1, len(ts) - 1)], ts[max(i - 1, 0)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    gc, gd = g(c), g(d)
    while b - a > 0.05:
        if gc < gd:
            b, d, gd = d, c, gc
            c = b - ratio * (b - a)
            gc = g(c)
        else:
            a, c, gc = c, d, gd
            d = a + ratio * (b - a)
            gd = g(d)
    t = c if gc < gd else d
    edge = " (at the edge of the weights tried)" if i in (0, len(ts) - 1) else ""
    what = ("the GCV function V = m ||W x - y||^2 / (m - tr A)^2" if rule == "gcv" else
            f"robust GCV, V ({RGCV_GAMMA} + {1 - RGCV_GAMMA:g} tr(A^2) / m),")
    return t, f"{what} is smallest here ({min(gc, gd):.4g}){edge}", crit


def _lcurve(at: Callable[[float], tuple[Any, float, float, bool]]) -> tuple[
        float, str, dict[float, float]]:
    """The point of largest curvature of ``(log residual, log penalty)`` over ``t``.

    Three values a decade from ``t = 1`` down to ``-6``, stopping at the first solve that
    does not converge (its point would be noise), a cubic spline in ``t`` through each
    coordinate.
    """
    from scipy.interpolate import CubicSpline

    ts = []
    for t in np.linspace(1.0, -6.0, 22):
        if not at(float(t))[3]:
            break
        ts.append(float(t))
    if len(ts) < 5:
        raise RuntimeError(
            f"the L-curve needs converged solves at 5 weights at least; only {len(ts)} "
            "converged (raise maxiter, or loosen atol/btol)")
    ts = ts[::-1]
    rho = np.array([math.log(max(at(t)[1], 1e-300)) for t in ts])
    eta = np.array([math.log(max(at(t)[2], 1e-300)) for t in ts])
    sr, se = CubicSpline(ts, rho), CubicSpline(ts, eta)
    fine = np.linspace(ts[1], ts[-2], 701)  # the ends of a spline are the least reliable
    dr, de, ddr, dde = sr(fine, 1), se(fine, 1), sr(fine, 2), se(fine, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (dr * dde - ddr * de) / (dr ** 2 + de ** 2) ** 1.5
    kappa = np.nan_to_num(kappa, nan=-np.inf)
    k = int(np.argmax(kappa))
    crit = {round(float(t), 6): float(np.interp(t, fine, kappa)) for t in ts}
    if kappa[k] <= 0:
        return float(fine[k]), (
            f"the L-curve has no corner over the {len(ts)} weights whose solves converged (its "
            f"curvature is never positive); the point of largest curvature ({kappa[k]:.4g}) "
            "is chosen: raise maxiter, or prefer 'gcv' or 'discrepancy'"), crit
    return float(fine[k]), (f"the L-curve (log ||W x - y||, log penalty) bends most here "
                            f"(curvature {kappa[k]:.4g})"), crit


def _namespace(a: Any) -> Any:
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
