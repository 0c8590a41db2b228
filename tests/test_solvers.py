"""deconvolve: recovery, damping and gradient regularisation against dense least squares,
agreement of the methods, bounds, errors, and a deblur of a real photograph."""

import sys

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import lsq_linear
from scipy.sparse.linalg import LinearOperator
from scipy.sparse.linalg import lsqr as scipy_lsqr

import convmat
from convmat import ConvOperator, deconvolve
from convmat.solvers import cgls, lsqr

from backends import device, host, on_backends

TIGHT = dict(atol=1e-12, btol=1e-12)


def gaussian(k, sigma):
    g = np.exp(-0.5 * ((np.arange(k) - k // 2) / sigma) ** 2)
    K = np.outer(g, g)
    return K / K.sum()


def dense_lstsq(A, b):
    return np.linalg.lstsq(A, b, rcond=None)[0]


@pytest.fixture
def small():
    """A full-column-rank multi-channel operator (more outputs than inputs)."""
    rng = np.random.default_rng(0)
    op = ConvOperator(rng.standard_normal((4, 2, 3, 3)), (2, 6, 5), padding=1)
    x = rng.standard_normal(op.input_shape)
    return rng, op, x


def _on(xp, op):
    return op if xp is np else op.to_gpu()


@on_backends
@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
def test_recovers_x_on_well_posed_problem(small, xp, method):
    _, op, x = small
    y = op @ x
    res = deconvolve(device(xp, y), _on(xp, op), method=method, maxiter=5000, **TIGHT)
    assert res.converged and res.x.shape == op.input_shape
    np.testing.assert_allclose(host(res.x), x, rtol=0, atol=1e-8 * np.abs(x).max())
    assert res.residual_norm <= 1e-8 * np.linalg.norm(y)


@on_backends
@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
def test_float32_problem_solved_at_float32_accuracy(small, xp, method):
    """Products run at W's precision (the solvers' float64 vectors are cast, W never is)."""
    rng, op64, x = small
    op = op64.with_weight(op64.weight.astype(np.float32))
    W = op.matrix.toarray().astype(np.float64)
    y = (W @ x.ravel()).astype(np.float32)
    res = deconvolve(device(xp, y), _on(xp, op), method=method, maxiter=5000, atol=1e-7,
                     btol=1e-7)
    assert res.x.shape == op.input_shape
    expected = dense_lstsq(W, y.astype(np.float64))
    # forward error of a float32 least-squares solve: a few cond(W) * eps32 * ||x||
    bound = 8 * np.linalg.cond(W) * np.finfo(np.float32).eps * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(host(res.x), dtype=np.float64).ravel(), expected,
                               rtol=0, atol=bound)


def test_identity_like_kernel_recovers_exactly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 7))
    w = np.zeros((3, 3, 3, 3))
    for c in range(3):
        w[c, c, 1, 1] = 2.0
    op = ConvOperator(w, x.shape, padding=1)
    res = deconvolve(op @ x, op, **TIGHT)
    np.testing.assert_allclose(res.x, x, rtol=1e-12, atol=1e-12)
    assert res.iterations == 1


@on_backends
@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
@pytest.mark.parametrize("damp", [0.1, 1.0])
def test_damp_matches_augmented_dense_system(small, xp, method, damp):
    rng, op, _ = small
    y = rng.standard_normal(op.output_shape)
    W = op.matrix.toarray()
    n = W.shape[1]
    expected = dense_lstsq(np.vstack([W, damp * np.eye(n)]),
                           np.concatenate([y.ravel(), np.zeros(n)]))
    res = deconvolve(device(xp, y), _on(xp, op), method=method, damp=damp, maxiter=5000,
                     **TIGHT)
    np.testing.assert_allclose(host(res.x).ravel(), expected, rtol=0,
                               atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
def test_gradient_regularizer_matches_dense_construction(method):
    rng = np.random.default_rng(2)
    shape = (9, 8)
    op = ConvOperator(gaussian(3, 1.0), shape, padding="same")
    y = rng.standard_normal(shape)
    # D by hand: forward differences along each axis, zero at the last index
    n = 72
    idx = np.arange(n).reshape(shape)
    rows = []
    for axis in range(2):
        for i in np.ndindex(shape):
            row = np.zeros(n)
            j = list(i)
            j[axis] += 1
            if j[axis] < shape[axis]:
                row[idx[tuple(j)]] += 1
                row[idx[i]] -= 1
            rows.append(row)
    D = np.array(rows)
    np.testing.assert_array_equal(convmat.gradient_operator(shape, ndim=2).matrix.toarray(), D)
    lam = 0.7
    expected = dense_lstsq(np.vstack([op.matrix.toarray(), lam * D]),
                           np.concatenate([y.ravel(), np.zeros(D.shape[0])]))
    res = deconvolve(y, op, method=method, regularizer="gradient", lam=lam, maxiter=5000,
                     **TIGHT)
    np.testing.assert_allclose(res.x.ravel(), expected, rtol=0,
                               atol=1e-8 * np.abs(expected).max())
    # the same D given as a sparse matrix, a ConvOperator, or a LinearOperator
    for reg in [sp.csr_array(D), convmat.gradient_operator((1, *shape)),
                LinearOperator(D.shape, matvec=D.__matmul__, rmatvec=D.T.__matmul__)]:
        other = deconvolve(y, op, method=method, regularizer=reg, lam=lam, maxiter=5000,
                           **TIGHT)
        np.testing.assert_allclose(other.x, res.x, rtol=0, atol=1e-8 * np.abs(expected).max())


def test_gradient_operator_multichannel_3d():
    D = convmat.gradient_operator((2, 3, 4, 5))
    assert D.input_shape == (2, 3, 4, 5) and D.output_shape == (6, 3, 4, 5)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    out = D @ x
    for c in range(2):
        for d in range(3):
            expected = np.diff(x[c], axis=d, append=np.take(x[c], [-1], axis=d))
            np.testing.assert_allclose(out[c * 3 + d], expected, rtol=1e-15, atol=1e-15)


def test_methods_agree_on_same_problem():
    rng = np.random.default_rng(4)
    op = ConvOperator(gaussian(5, 1.2), (20, 20), padding="same")
    y = op @ rng.uniform(size=(20, 20)) + 1e-3 * rng.standard_normal((20, 20))
    sols = [deconvolve(y, op, method=m, damp=0.05, maxiter=10000, **TIGHT).x
            for m in ("lsqr", "lsmr", "cgls")]
    for s in sols[1:]:
        np.testing.assert_allclose(s, sols[0], rtol=0, atol=1e-7 * np.abs(sols[0]).max())


def test_convmat_lsqr_equals_scipy_lsqr(small):
    """The array-namespace LSQR runs SciPy's recurrences: same iterations, same x.

    Compared on well-conditioned systems (a damped blur, a full-rank operator): on an
    ill-conditioned one, two correct LSQRs drift apart by amplified rounding.
    """
    rng = np.random.default_rng(5)
    blur = ConvOperator(gaussian(5, 1.0), (30, 30), padding="same").matrix
    full_rank = small[1].matrix
    for W, damp in [(blur, 0.1), (blur, 0.3), (full_rank, 0.0)]:
        b = rng.standard_normal(W.shape[0])
        n = W.shape[1]
        ref = scipy_lsqr(W, b, damp=damp, atol=1e-9, btol=1e-9, iter_lim=400)
        x, istop, itn, hist = lsqr(W.__matmul__, W.T.__matmul__, b, np.zeros(n), damp=damp,
                                   atol=1e-9, btol=1e-9, maxiter=400)
        assert (istop, itn) == (ref[1], ref[2])
        np.testing.assert_allclose(x, ref[0], rtol=0, atol=1e-10 * np.abs(ref[0]).max())
        assert hist["residual_norm"][-1] == pytest.approx(ref[4], rel=1e-10)
        # ||A^H r|| comes from cancellation: its rounding scales with ||A|| ||r||
        scale = ref[5] * ref[3]
        assert abs(hist["normal_residual_norm"][-1] - ref[7]) <= 1e-9 * scale


def test_history_callback_and_iteration_limit():
    rng = np.random.default_rng(6)
    op = ConvOperator(gaussian(5, 1.5), (16, 16), padding="same")
    y = op @ rng.uniform(size=(16, 16))
    seen = []
    for method in ("lsqr", "cgls"):
        seen.clear()
        res = deconvolve(y, op, method=method, maxiter=7, history=True,
                         callback=lambda k, xk: seen.append((k, xk.shape)))
        assert res.iterations == 7 and not res.converged
        assert res.stop_reason == "iteration limit reached (maxiter=7)"
        assert seen == [(k, (256,)) for k in range(1, 8)]
        h = res.history["residual_norm"]
        assert h.shape == (7,) and np.all(np.diff(h) <= 1e-12 * h[0])  # monotone residual
        # the last recorded residual is that of the returned x
        assert h[-1] == pytest.approx(res.residual_norm, rel=1e-8)
    assert deconvolve(y, op, maxiter=7).history is None


def test_bounds_nonnegativity_matches_dense_lsq_linear():
    rng = np.random.default_rng(7)
    op = ConvOperator(gaussian(3, 1.0), (8, 8), padding="same")
    x_true = np.maximum(rng.standard_normal((8, 8)), 0)
    y = op @ x_true + 0.05 * rng.standard_normal((8, 8))
    res = deconvolve(y, op, bounds=(0, None), atol=1e-12, maxiter=500)
    assert res.method == "lsq_linear" and res.converged
    assert res.x.min() >= 0
    ref = lsq_linear(op.matrix.toarray(), y.ravel(), bounds=(0, np.inf), tol=1e-12,
                     method="bvls").x
    np.testing.assert_allclose(res.x.ravel(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # box bounds and damping (stacked [W; damp I])
    res = deconvolve(y, op, bounds=(0.1, np.full((8, 8), 0.5)), damp=0.3, atol=1e-12,
                     maxiter=500)
    n = 64
    ref = lsq_linear(np.vstack([op.matrix.toarray(), 0.3 * np.eye(n)]),
                     np.concatenate([y.ravel(), np.zeros(n)]), bounds=(0.1, 0.5), tol=1e-12,
                     method="bvls").x
    assert res.x.min() >= 0.1 - 1e-12 and res.x.max() <= 0.5 + 1e-12
    np.testing.assert_allclose(res.x.ravel(), ref, rtol=0, atol=1e-6)


def test_batch_x0_and_inputs_not_mutated(small):
    rng, op, x = small
    ys = np.stack([op @ x, op @ (2 * x)])
    before = ys.copy()
    x0 = np.ones(op.input_shape)
    x0_before = x0.copy()
    res = deconvolve(ys, op, x0=x0, maxiter=5000, **TIGHT)
    np.testing.assert_array_equal(ys, before)
    np.testing.assert_array_equal(x0, x0_before)
    assert res.x.shape == (2, *op.input_shape)
    assert isinstance(res.iterations, tuple) and len(res.iterations) == 2
    np.testing.assert_allclose(res.x[1], 2 * x, rtol=0, atol=1e-8 * np.abs(x).max())
    # a flat y works too, and a weight with input_shape builds the operator
    flat = deconvolve((op @ x).ravel(), op, **TIGHT)
    assert flat.x.shape == op.input_shape
    w = rng.standard_normal((1, 1, 3))
    built = deconvolve(np.ones((1, 8)), w, input_shape=(1, 10), padding=0)
    assert built.x.shape == (1, 10)


def test_complex_problem():
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((2, 1, 3)) + 1j * rng.standard_normal((2, 1, 3)))
    op = ConvOperator(w, (1, 12), padding=1)
    x = rng.standard_normal((1, 12)) + 1j * rng.standard_normal((1, 12))
    for method in ("lsqr", "lsmr", "cgls"):
        res = deconvolve(op @ x, op, method=method, maxiter=5000, **TIGHT)
        np.testing.assert_allclose(res.x, x, rtol=0, atol=1e-8)


def test_repr_is_short(small):
    _, op, x = small
    text = repr(deconvolve(op @ x, op, maxiter=3))
    assert text.startswith("DeconvolutionResult(method='lsqr', x.shape=(2, 6, 5), iterations=3")


class _RecordingBar:
    """Stands in for tqdm: records what convmat asks of its progress bar."""

    made = []

    def __init__(self, total, desc, unit, leave):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        _RecordingBar.made.append(self)

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
def test_progress_bar_ticks_once_per_iteration(small, monkeypatch, method):
    import types

    _, op, x = small
    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=_RecordingBar))
    _RecordingBar.made.clear()
    res = deconvolve(op @ x + 0.1, op, method=method, maxiter=6, progress=True)
    (bar,) = _RecordingBar.made
    assert (bar.total, bar.desc, bar.closed) == (6, method, True)
    assert bar.n == res.iterations == 6


def test_progress_bar_renders_with_tqdm(small, capsys):
    pytest.importorskip("tqdm")
    _, op, x = small
    deconvolve(op @ x, op, maxiter=4, progress=True)
    assert "lsqr" in capsys.readouterr().err


def test_cgls_zero_rhs():
    x, istop, k, _ = cgls(lambda v: v, lambda v: v, np.zeros(3), np.zeros(3))
    assert (istop, k) == (0, 0) and not x.any()
    x, istop, k, _ = lsqr(lambda v: v, lambda v: v, np.zeros(3), np.zeros(3))
    assert (istop, k) == (0, 0)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="gmres"), ValueError, r"method='gmres' is not one of 'lsqr', 'lsmr', 'cgls'"),
        (dict(damp=-1.0), ValueError, r"damp must be a finite number >= 0, got damp=-1\.0"),
        (dict(lam=np.nan), ValueError, r"lam must be a finite number >= 0, got lam=nan"),
        (dict(atol=-1e-3), ValueError, r"atol must be a finite number >= 0"),
        (dict(maxiter=0), ValueError, r"maxiter must be a positive int, got maxiter=0"),
        (dict(maxiter=2.5), ValueError, r"maxiter must be a positive int, got maxiter=2\.5"),
        (dict(regularizer="tv"), ValueError, r"regularizer='tv' is not known"),
        (dict(regularizer=np.ones(3)), TypeError, r"regularizer must be 'gradient', a "
                                                  r"scipy.sparse matrix"),
        (dict(regularizer=sp.eye(5)), ValueError, r"regularizer has 5 columns but the "
                                                  r"operator's input has 60 entries"),
        (dict(bounds=(0,)), ValueError, r"bounds must be a pair \(lower, upper\)"),
        (dict(bounds=(1, 0)), ValueError, r"bounds: lower bound exceeds upper bound"),
        (dict(bounds=(0, None), history=True), ValueError,
         r"callback and history need the iterates, which bounds \(lsq_linear\) does not "
         r"expose"),
        (dict(method="lsmr", callback=print), ValueError,
         r"which method='lsmr' \(SciPy's\) does not expose; use method='lsqr' or 'cgls'"),
        (dict(x0=np.ones(7)), ValueError, r"x0 has shape \(7,\) but the operator's input has "
                                          r"shape \(2, 6, 5\) \(60 entries\)"),
        (dict(input_shape=(2, 6, 5)), TypeError, r"op is already a ConvOperator \(got "
                                                 r"input_shape\)"),
        (dict(padding=1), TypeError, r"op is already a ConvOperator \(got \['padding'\]\)"),
    ],
)
def test_argument_errors(small, kwargs, exc, match):
    _, op, x = small
    with pytest.raises(exc, match=match):
        deconvolve(op @ x, op, **kwargs)


def test_y_errors(small):
    _, op, x = small
    y = op @ x
    y[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"y contains 1 NaN or inf value\(s\); SciPy's solvers "
                                         r"would silently return NaN"):
        deconvolve(y, op)
    with pytest.raises(ValueError, match=r"y has shape \(4, 6\) but the operator's output has "
                                         r"shape \(4, 6, 5\) \(or a batch \(N, \*\(4, 6, 5\)\), "
                                         r"or a flat vector \(120,\)\)"):
        deconvolve(np.ones((4, 6)), op)
    with pytest.raises(TypeError, match=r"y must be a numeric array, got dtype <U1"):
        deconvolve(np.full(op.output_shape, "a"), op)
    with pytest.raises(TypeError, match=r"bounds need a real problem"):
        deconvolve((op @ x).astype(complex), op, bounds=(0, 1))
    with pytest.raises(TypeError, match=r"op must be a ConvOperator, or a weight together "
                                        r"with input_shape"):
        deconvolve(op @ x, np.ones((4, 2, 3, 3)))


def test_gradient_operator_ndim_error():
    with pytest.raises(ValueError, match=r"ndim=5 spatial axes does not fit "
                                         r"input_shape=\(2, 3\)"):
        convmat.gradient_operator((2, 3), ndim=5)


def test_progress_without_tqdm(small, monkeypatch):
    _, op, x = small
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"progress=True needs tqdm: pip install tqdm"):
        deconvolve(op @ x, op, progress=True)


# ------------------------------------------------------------------ a real photograph
def psnr(ref, img):
    return 10 * np.log10(np.ptp(ref) ** 2 / np.mean((ref - img) ** 2))


def test_deblur_real_photograph_gains_psnr():
    data = pytest.importorskip("skimage.data")
    img = data.camera()[::4, ::4].astype(np.float64) / 255.0  # 128x128, shipped with skimage
    K = gaussian(5, 1.5)
    op = ConvOperator(K, img.shape, padding="same", padding_mode="replicate")
    rng = np.random.default_rng(9)
    blurred = op @ img + 1e-3 * rng.standard_normal(img.shape)
    res = deconvolve(blurred, op, method="lsmr", damp=2e-2, maxiter=300)
    before, after = psnr(img, blurred), psnr(img, res.x)
    # the gain is measured on this run, not taken from an earlier one: the restored image
    # must be closer to the truth than the blurred one by a clear margin (1 dB), and closer
    # than a plain Tikhonov-free solve stopped after one iteration
    assert after > before + 1.0, (before, after)
    early = deconvolve(blurred, op, method="lsmr", damp=2e-2, maxiter=1)
    assert after > psnr(img, early.x)
