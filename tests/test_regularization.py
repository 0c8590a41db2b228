"""Choosing the weight (discrepancy, GCV, L-curve), the noise estimate, early stopping and
the projected solver for bounds, against dense references written with NumPy's SVD.

For Tikhonov ``min ||W x - y||^2 + d^2 ||x||^2`` with ``W = U diag(s) V^T`` and
``beta = U^T y``, everything is closed form (Hansen, *Rank-deficient and discrete ill-posed
problems*, 1998): the filter factors ``f = s^2 / (s^2 + d^2)``, the residual
``||(1 - f) beta||`` (plus the part of ``y`` outside ``range(U)``), the solution norm
``||f beta / s||`` and the influence matrix's trace ``sum f``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq, lsq_linear, minimize_scalar

import convmat
from convmat import ConvOperator, deconvolve, estimate_noise


def gaussian(size, sigma):
    u = np.arange(size) - (size - 1) / 2
    g = np.exp(-u[:, None] ** 2 / (2 * sigma ** 2) - u[None, :] ** 2 / (2 * sigma ** 2))
    return g / g.sum()


@pytest.fixture(scope="module")
def problem():
    """A 24x24 phantom blurred by a 5x5 Gaussian ('same' zero padding), with noise."""
    rng = np.random.default_rng(11)
    truth = convmat.data.phantom(24)
    op = ConvOperator(gaussian(5, 1.2), (24, 24), padding="same")
    sigma = 1e-2
    y = op @ truth + sigma * rng.standard_normal((24, 24))
    w = op.matrix.toarray()
    u, s, vt = np.linalg.svd(w)
    return op, truth, y, sigma, (u, s, vt)


def tikhonov(svd, y, d):
    """Residual norm, solution norm, trace of the influence matrix, at damping ``d``."""
    u, s, _ = svd
    beta = u.T @ y.ravel()
    f = s ** 2 / (s ** 2 + d ** 2)
    outside = np.linalg.norm(y.ravel()) ** 2 - np.linalg.norm(beta) ** 2
    residual = math.sqrt(np.sum(((1 - f) * beta) ** 2) + max(outside, 0.0))
    return residual, np.linalg.norm(f * beta / s), float(f.sum())


def lcurve_curvature(svd, y, ts):
    """The curvature of ``(log ||W x - y||, log ||x||)`` over ``t = log10 d``, by finite
    differences of the closed forms on the grid ``ts``."""
    norms = np.array([tikhonov(svd, y, 10 ** t)[:2] for t in ts])
    rho, eta = np.log(norms[:, 0]), np.log(norms[:, 1])
    dr, de = np.gradient(rho, ts), np.gradient(eta, ts)
    ddr, dde = np.gradient(dr, ts), np.gradient(de, ts)
    return (dr * dde - ddr * de) / (dr ** 2 + de ** 2) ** 1.5


# --------------------------------------------------------------------------- noise
@pytest.mark.parametrize("sigma", [1e-3, 1e-2, 1e-1])
@pytest.mark.parametrize("shape", [(4096,), (128, 160), (2, 96, 96), (24, 24, 24)])
def test_estimate_noise_within_ten_percent(sigma, shape):
    rng = np.random.default_rng(len(shape) + int(1e4 * sigma))
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    smooth = np.prod([np.sin(3 * g + k) for k, g in enumerate(grids)], axis=0)
    noisy = smooth + sigma * rng.standard_normal(shape)
    assert abs(estimate_noise(noisy) - sigma) <= 0.1 * sigma


def test_estimate_noise_of_a_blurred_phantom():
    """Edges blurred by the PSF leave the finest diagonal coefficients to the noise; below
    about 5e-3 the blurred edges' own detail biases the estimate up (the docstring's note)."""
    rng = np.random.default_rng(5)
    op = ConvOperator(gaussian(7, 1.5), (256, 256), padding="same")
    y = op @ convmat.data.phantom(256)
    for sigma in (1e-2, 5e-2):
        noisy = y + sigma * rng.standard_normal(y.shape)
        assert abs(estimate_noise(noisy) - sigma) <= 0.1 * sigma
    low = estimate_noise(y + 2e-3 * rng.standard_normal(y.shape))
    assert 2e-3 < low < 1.3 * 2e-3


def test_estimate_noise_errors():
    with pytest.raises(ValueError, match=r"estimate_noise needs real data, got dtype complex128"):
        estimate_noise(np.ones((4, 4), complex))
    with pytest.raises(ValueError, match=r"estimate_noise needs finite data: y has NaN or inf"):
        estimate_noise(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match=r"estimate_noise needs axes of length >= 2; y has "
                                         r"shape \(1, 5\) and axes=\[0\]"):
        estimate_noise(np.ones((1, 5)), axes=[0])
    with pytest.raises(ValueError, match=r"needs axes of length >= 2; y has shape \(1,\)"):
        estimate_noise(np.ones(1))


# --------------------------------------------------------------------------- the rules
def test_discrepancy_meets_the_target_and_matches_the_dense_root(problem):
    op, _, y, sigma, svd = problem
    res = deconvolve(y, op, damp="discrepancy", noise_level=sigma, atol=1e-10, btol=1e-10)
    choice = res.choice
    target = sigma * math.sqrt(y.size)
    assert choice.rule == "discrepancy" and choice.parameter == "damp"
    assert abs(res.residual_norm / target - 1) <= 2e-3
    d_ref = brentq(lambda d: tikhonov(svd, y, d)[0] - target, 1e-6, 10)
    assert abs(choice.value / d_ref - 1) <= 0.02
    assert "meets the target" in choice.reason and choice.noise_level == sigma
    assert np.all(np.diff(choice.values) > 0) and choice.solves == len(choice.values)
    # the curve: the residual grows with the weight (the dense formula says so too)
    assert np.all(np.diff(choice.residual_norms) > 0)


def test_gcv_is_at_the_dense_minimum(problem):
    op, _, y, _, svd = problem
    m = y.size

    def v(logd):
        r, _, trace = tikhonov(svd, y, 10 ** logd)
        return m * r ** 2 / (m - trace) ** 2

    best = minimize_scalar(v, bounds=(-5, 1), method="bounded", options={"xatol": 1e-6})
    res = deconvolve(y, op, damp="gcv", atol=1e-10, btol=1e-10)
    choice = res.choice
    # one Hutchinson probe on 576 outputs: V is known to a few percent, so the chosen
    # weight's exact V is within 5% of the minimum
    assert v(math.log10(choice.value)) <= 1.05 * best.fun
    assert abs(math.log10(choice.value) - best.x) <= 0.3
    assert choice.solves == 2 * len(choice.values)  # a probe solve for each weight


def test_robust_gcv_is_at_the_dense_minimum(problem):
    """Lukas' robust GCV, ``V (0.1 + 0.9 tr(A^2) / m)``, written with the filter factors."""
    op, _, y, _, svd = problem
    m = y.size
    u, s, _ = svd

    def vr(logd):
        r, _, trace = tikhonov(svd, y, 10 ** logd)
        f = s ** 2 / (s ** 2 + 10 ** (2 * logd))
        return m * r ** 2 / (m - trace) ** 2 * (0.1 + 0.9 * np.sum(f ** 2) / m)

    best = minimize_scalar(vr, bounds=(-5, 1), method="bounded", options={"xatol": 1e-6})
    res = deconvolve(y, op, damp="rgcv", atol=1e-10, btol=1e-10)
    assert vr(math.log10(res.choice.value)) <= 1.05 * best.fun
    assert res.choice.rule == "rgcv" and "robust GCV" in res.choice.reason
    gcv = deconvolve(y, op, damp="gcv", atol=1e-10, btol=1e-10)
    assert res.choice.value >= gcv.choice.value  # it damps at least as much as GCV


def test_lcurve_is_at_the_dense_corner(problem):
    op, _, y, _, svd = problem
    grid = np.linspace(-6, 1, 7001)
    kappa = lcurve_curvature(svd, y, grid)
    corner = grid[100 + int(np.argmax(kappa[100:-100]))]
    res = deconvolve(y, op, damp="lcurve", atol=1e-12, btol=1e-12)
    assert abs(math.log10(res.choice.value) - corner) <= 0.1
    assert 5 <= res.choice.solves <= 22 and "bends most" in res.choice.reason


def test_the_rules_restore_near_the_oracle(problem):
    """PSNR within 1 dB of the best damping on a fine grid (the truth known here only)."""
    op, truth, y, sigma, svd = problem

    def psnr(x):
        return 10 * math.log10(1 / np.mean((x - truth) ** 2))

    u, s, vt = svd
    beta = u.T @ y.ravel()

    def x_at(d):
        return (vt.T @ (s / (s ** 2 + d ** 2) * beta)).reshape(truth.shape)

    oracle = max(psnr(x_at(d)) for d in np.logspace(-4, 0, 400))
    for rule in ("discrepancy", "gcv"):
        res = deconvolve(y, op, damp=rule, noise_level=sigma, atol=1e-10, btol=1e-10)
        assert psnr(res.x) >= oracle - 1.0, rule


def test_lam_for_the_gradient_by_the_discrepancy(problem):
    op, _, y, sigma, _ = problem
    res = deconvolve(y, op, regularizer="gradient", lam="discrepancy", noise_level=sigma,
                     atol=1e-10, btol=1e-10)
    assert res.choice.parameter == "lam"
    assert abs(res.residual_norm / (sigma * math.sqrt(y.size)) - 1) <= 2e-3
    d = convmat.gradient_operator((24, 24), ndim=2).matrix
    assert np.isclose(res.choice.penalty_norms[list(res.choice.values).index(res.choice.value)],
                      np.linalg.norm(d @ res.x.ravel()), rtol=1e-8)


def test_noise_estimate_and_a_batch():
    rng = np.random.default_rng(2)
    big = ConvOperator(gaussian(5, 1.2), (96, 96), padding="same")
    ys = np.stack([big @ convmat.data.phantom(96) + s * rng.standard_normal((96, 96))
                   for s in (2e-2, 6e-2)])
    res = deconvolve(ys, big, damp="discrepancy", noise_level="estimate", atol=1e-8,
                     btol=1e-8)
    assert len(res.choice) == 2
    for c, s in zip(res.choice, (2e-2, 6e-2), strict=True):
        assert abs(c.noise_level / s - 1) <= 0.1
    assert res.choice[0].value < res.choice[1].value  # more noise, more damping


def test_all_noise_and_never_reached():
    op = ConvOperator(np.ones((1, 2)), (1, 8))
    y = np.full(op.output_shape, 1e-3)
    res = deconvolve(y, op, damp="discrepancy", noise_level=1.0)
    assert "the data are all noise" in res.choice.reason
    res = deconvolve(np.eye(1, 7), op, damp="discrepancy", noise_level=0.0, maxiter=50)
    assert "noise_level 0: the target residual is 0" in res.choice.reason
    res = deconvolve(np.eye(1, 7), op, damp="discrepancy", noise_level=1e-30, maxiter=50)
    assert "never reached the target" in res.choice.reason


# --------------------------------------------------------------------------- early stopping
@pytest.mark.parametrize("method", ["lsqr", "cgls", "lsmr"])
def test_stop_at_the_discrepancy(problem, method):
    op, _, y, sigma, _ = problem
    target = sigma * math.sqrt(y.size)
    res = deconvolve(y, op, method=method, stop="discrepancy", noise_level=sigma)
    full = deconvolve(y, op, method=method, maxiter=500)
    assert res.residual_norm <= target * (1 + 1e-9) and res.converged
    assert res.stop_reason.startswith("discrepancy reached: ||W x - y|| = ")
    assert res.iterations < full.iterations
    early = deconvolve(y, op, method=method, maxiter=max(res.iterations - 1, 1))
    assert early.residual_norm > target  # it stopped at the first iterate that got there


# --------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("case", range(5))
def test_spg_matches_lsq_linear(case):
    rng = np.random.default_rng(40 + case)
    op = ConvOperator(gaussian(3, 1.0), (10, 9), padding="same")
    truth = np.maximum(rng.standard_normal((10, 9)), 0)
    y = op @ truth + 0.05 * rng.standard_normal(op.output_shape)
    kw = [dict(bounds=(0, None)), dict(bounds=(0.1, 0.8), damp=0.3),
          dict(bounds=(None, 0.5), regularizer="gradient", lam=0.2),
          dict(bounds=(np.zeros((10, 9)), np.full((10, 9), 2.0)), damp=0.05),
          dict(bounds=(np.where(np.arange(90).reshape(10, 9) % 3, -np.inf,
                                np.linspace(0, 0.5, 90).reshape(10, 9)),
                       np.linspace(0.6, 1.5, 90).reshape(10, 9)))][case]  # varying, some -inf
    w = op.matrix.toarray()
    a, b = w, y.ravel()
    if "damp" in kw:
        a, b = np.vstack([a, kw["damp"] * np.eye(90)]), np.concatenate([b, np.zeros(90)])
    if "lam" in kw:
        d = convmat.gradient_operator((10, 9), ndim=2).matrix.toarray()
        a, b = np.vstack([a, kw["lam"] * d]), np.concatenate([b, np.zeros(d.shape[0])])
    lo, hi = (np.broadcast_to(np.asarray(v if v is not None else s * np.inf, float).ravel(), 90)
              for v, s in zip(kw["bounds"], (-1, 1), strict=True))
    ref = lsq_linear(a, b, bounds=(lo, hi), method="bvls", tol=1e-14).x
    res = deconvolve(y, op, atol=1e-12, maxiter=20000, **kw)
    assert res.method == "spg" and res.converged, res.stop_reason
    x = res.x.ravel()
    assert np.all(x >= lo) and np.all(x <= hi)
    cond = np.linalg.cond(a)
    assert np.linalg.norm(x - ref) <= 1e-9 * cond * np.linalg.norm(ref)


def test_spg_stops_at_the_discrepancy_and_reports(problem):
    op, _, y, sigma, _ = problem
    seen = []
    res = deconvolve(y, op, bounds=(0, None), stop="discrepancy", noise_level=sigma,
                     history=True, callback=lambda k, x: seen.append(k))
    assert res.method == "spg" and res.stop_reason == "discrepancy reached"
    assert res.residual_norm <= sigma * math.sqrt(y.size) and res.x.min() >= 0
    assert seen == list(range(1, res.iterations + 1))
    assert len(res.history["residual_norm"]) == res.iterations
    capped = deconvolve(y, op, bounds=(0, None), maxiter=3)
    assert not capped.converged and capped.stop_reason == ("iteration limit reached "
                                                           "(maxiter=3)")


def test_lsq_linear_stays_the_exact_option():
    small = ConvOperator(gaussian(3, 1.0), (6, 6), padding="same")
    y = small @ np.ones((6, 6))
    res = deconvolve(y, small, method="lsq_linear", atol=1e-12)
    assert res.method == "lsq_linear" and np.allclose(res.x, 1, atol=1e-6)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(damp="gcv", lam="gcv", regularizer="gradient"), ValueError,
     r"damp and lam cannot both be chosen by a rule; fix one of them"),
    (dict(damp="best"), ValueError,
     r"damp='best' is not a number nor one of 'discrepancy', 'gcv', 'rgcv', 'lcurve'"),
    (dict(lam="gcv"), ValueError, r"lam='gcv' chooses the regularizer's weight: pass "
                                  r"regularizer="),
    (dict(stop="early"), ValueError, r"stop='early' is not known; use stop='discrepancy'"),
    (dict(stop="discrepancy", damp="gcv", noise_level=0.1), ValueError,
     r"stop='discrepancy' stops the iterations instead of choosing a weight; drop "
     r"damp='gcv' or stop"),
    (dict(damp="discrepancy"), ValueError, r"the discrepancy principle needs "
                                           r"noise_level=sigma .* or noise_level='estimate'"),
    (dict(stop="discrepancy"), ValueError, r"the discrepancy principle needs noise_level"),
    (dict(damp="discrepancy", noise_level="guess"), ValueError,
     r"noise_level='guess' must be a number or 'estimate'"),
    (dict(damp="discrepancy", noise_level=-1.0), ValueError,
     r"noise_level must be a finite number >= 0, got noise_level=-1.0"),
    (dict(tau=-1.0), ValueError, r"tau must be a finite number >= 0"),
    (dict(damp="gcv", history=True), ValueError,
     r"callback and history follow one solve, but damp='gcv' runs many; fix the weight"),
])
def test_errors(problem, kwargs, error, match):
    op, _, y, _, _ = problem
    with pytest.raises(error, match=match):
        deconvolve(y, op, **kwargs)


def test_spg_needs_a_real_problem(problem):
    op, _, y, _, _ = problem
    with pytest.raises(TypeError, match=r"method='spg' needs a real problem; the operator or "
                                        r"y is complex"):
        deconvolve(y.astype(complex), op, method="spg")


def test_lcurve_needs_converged_solves(problem):
    op, _, y, _, _ = problem
    with pytest.raises(RuntimeError, match=r"the L-curve needs converged solves at 5 weights "
                                           r"at least; only 0 converged \(raise maxiter"):
        deconvolve(y, op, damp="lcurve", maxiter=1, atol=1e-14, btol=1e-14)


def test_a_rules_progress_bar_counts_its_solves(problem, monkeypatch):
    """One bar for the search, counting its solves (probes included); no total ahead."""
    import sys
    import types

    from test_solvers import _RecordingBar

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=_RecordingBar))
    _RecordingBar.made.clear()
    op, _, y, _, _ = problem
    res = deconvolve(y, op, damp="gcv", progress=True)
    (bar,) = _RecordingBar.made
    assert (bar.desc, bar.total, bar.n, bar.closed) == ("damp=gcv (solves)", None,
                                                         res.choice.solves, True)


def test_a_rule_starts_from_the_callers_x0(problem):
    """x0 starts the first solve only: the choice, and the solution, are the same."""
    op, truth, y, sigma, _ = problem
    cold = deconvolve(y, op, damp="discrepancy", noise_level=sigma, atol=1e-12, btol=1e-12)
    warm = deconvolve(y, op, damp="discrepancy", noise_level=sigma, atol=1e-12, btol=1e-12,
                      x0=truth)
    assert warm.choice.value == pytest.approx(cold.choice.value, rel=1e-6)
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-8 * np.abs(cold.x).max())
