"""Structured products (``method='direct'`` and ``'fft'``) against independent references.

The references are the naive loops of ``reference.py`` (``conv_reference`` gathers,
``trans_conv_reference`` scatters), which share no code with convmat. Tolerances follow what
each path guarantees:

* ``direct`` forms every output as a sum of the same products as the loop (im2col and a
  GEMM, or the GEMM transposed and an overlap-add), so each entry is within
  ``2 gamma(terms + 2) * sum |w| |x|`` (Higham 3.1), and integer-valued data is exact.
* ``fft`` computes a circular convolution through three transforms. With
  ``|fft(w)|_inf <= ||w||_1``, each channel pair's result is within
  ``c u log2(F) ||w_oc||_1 ||x_c||_2`` in the 2-norm (Higham, *Accuracy and Stability*,
  Thm 24.2, applied to each transform), ``c = 20`` covering the three transforms and the
  pointwise product; the padding gather repeats each input at most ``m`` times per axis,
  which multiplies ``||x_c||_2`` by at most ``sqrt(prod m)``.
"""

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import example, given, settings
from hypothesis import strategies as st

import convmat
from convmat import structured
from convmat.structured import choose_method, estimate_costs

from reference import assert_close, case_adjoint, case_apply, eps, gamma
from strategies import DTYPES, cases, make_case, random_array

SEEDS = st.integers(0, 2**32 - 1)
ANY_CASE = st.one_of(cases(), cases(transposed=True))
PATHS = ("direct", "fft")


def _operator(case, w, method, **extra):
    make = convmat.ConvOperator.transposed if case.transposed else convmat.ConvOperator
    return make(w, case.input_shape, **{**case.options, **extra}, method=method)


def _multiplicity(case, sizes):
    """Most times the padding gather copies one input value, over all axes (``prod m``)."""
    if case.mode == "zeros":
        return 1
    return math.prod(math.ceil((n + lo + hi) / n) + 1
                     for n, (lo, hi) in zip(sizes, case.pads, strict=True))


def _fft_bound(case, w, v, gather):
    """2-norm bound of the fft path's error for one sample ``v`` (with channel axis).

    ``gather``: the forward convolution (``v`` the input, channels ``c`` summed into
    outputs ``o``); else its transpose (``v`` the output of the forward convolution).
    """
    fw = case.full(w).astype(np.complex128)
    G = case.groups
    cout_g, cin_g = fw.shape[0] // G, fw.shape[1]
    l1 = np.abs(fw).reshape(G, cout_g, cin_g, -1).sum(axis=-1)  # ||w_oc||_1, (G, o, c)
    norms = np.sqrt((np.abs(v.astype(np.complex128)) ** 2).reshape(v.shape[0], -1).sum(1))
    forward_in = case.out_size if case.transposed else case.full_input_shape[1:]
    F = 2 * math.prod(n + lo + hi for n, (lo, hi) in zip(forward_in, case.pads, strict=True))
    if gather:  # output o of group g: sum over c of ||w_oc||_1 ||v_c||_2
        per = np.einsum("goc,gc->go", l1, norms.reshape(G, cin_g))
    else:
        per = np.einsum("goc,go->gc", l1, norms.reshape(G, cout_g))
    mult = math.sqrt(_multiplicity(case, forward_in))
    return 20 * (math.log2(F) + 1) * eps(w.dtype) * mult * float(np.linalg.norm(per))


def _check(got, ref, scale, terms, dtype, method, integer, bound=None, what=""):
    got = np.asarray(got).reshape(ref.shape)
    assert got.dtype == np.dtype(dtype), (what, got.dtype)
    if method == "direct":
        try:
            assert_close(got, ref, scale, terms, dtype, exact=integer)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
        return
    err = float(np.linalg.norm((got.astype(np.complex128) - ref).ravel()))
    assert err <= bound, f"{what}: ||error||_2 = {err:.3g} > bound {bound:.3g}"


# --------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(case=ANY_CASE, method=st.sampled_from(PATHS), dtype=st.sampled_from(DTYPES),
       integer=st.booleans(), seed=SEEDS)
@example(case=make_case((2, 1, 3, 3), (2, 5, 5), padding=((2, 0), (1, 3)), groups=2,
                        stride=2, padding_mode="reflect"),
         method="fft", dtype="complex64", integer=False, seed=1)
@example(case=make_case((1, 1, 2), (1, 3), transposed=True, dilation=3, output_padding=2,
                        padding_mode="reflect", padding=1),
         method="direct", dtype="float64", integer=True, seed=3)
@example(case=make_case((3, 2, 1, 2, 1, 2), (2, 2, 3, 2, 3), padding=1,
                        padding_mode="circular"),  # four spatial axes
         method="direct", dtype="float32", integer=False, seed=5)
def test_structured_products_match_the_naive_loops(case, method, dtype, integer, seed):
    """``op @ x``, ``op.T @ y`` and ``op.H @ y`` on each structured path, one sample and a
    batch, against the gather and scatter loops; the operator never builds ``W``."""
    integer = integer and method == "direct"  # an FFT is not exact on integers
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype, integer=integer)
    x = random_array(rng, (2, *case.input_shape), dtype, integer=integer)
    y = random_array(rng, (2, *case.output_shape), dtype, integer=integer)
    xf = x.reshape(2, *case.full_input_shape)
    yf = y.reshape(2, case.output_channels, *case.out_size)
    w128 = w.astype(np.complex128)
    aw = np.abs(w).astype(float)
    op = _operator(case, w, method)
    transposed = case.transposed

    # forward: the operator (a transposed operator's forward is the scatter)
    ref = np.stack([case_apply(case, w128, xf[i].astype(np.complex128)) for i in range(2)])
    scale = np.stack([case_apply(case, aw, np.abs(xf[i]).astype(float)) for i in range(2)]).real
    bounds = [_fft_bound(case, w, xf[i], gather=not transposed) for i in range(2)]
    if method == "fft":
        bounds = [b * 2 for b in bounds]  # the batch adds the two samples' errors
    got = op @ x
    assert got.shape == (2, *case.output_shape)
    _check(got, ref, scale, case.terms, dtype, method, integer, sum(bounds), "op @ batch")
    _check(op @ x[0], ref[:1], scale[:1], case.terms, dtype, method, integer, bounds[0],
           "op @ one")

    # the transpose and the adjoint
    ref_t = np.stack([case_adjoint(case, w128, yf[i].astype(np.complex128)) for i in range(2)])
    ref_h = np.stack([case_adjoint(case, w128.conj(), yf[i].astype(np.complex128))
                      for i in range(2)])
    scale_t = np.stack([case_adjoint(case, aw, np.abs(yf[i]).astype(float))
                        for i in range(2)]).real
    bound_t = sum(_fft_bound(case, w, yf[i], gather=transposed) for i in range(2)) * 2
    _check(op.T @ y, ref_t, scale_t, case.adjoint_terms, dtype, method, integer, bound_t,
           "op.T @ batch")
    _check(op.H @ y, ref_h, scale_t, case.adjoint_terms, dtype, method, integer, bound_t,
           "op.H @ batch")
    assert not op.built and op.method == method


@settings(max_examples=60, deadline=None)
@given(case=ANY_CASE, method=st.sampled_from(PATHS), dtype=st.sampled_from(DTYPES),
       seed=SEEDS)
def test_dot_test_of_the_structured_path_itself(case, method, dtype, seed):
    """``<A x, y> = <x, A^H y>`` with both products on the structured path (not ``W``).

    Each side is off by at most ``||y|| e_fwd + ||x|| e_adj`` plus the inner products' own
    rounding, with ``e`` the path's error bound (elementwise ``2 gamma(terms + 2) sum |w||x|``
    for ``direct``, the 2-norm bound for ``fft``).
    """
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype)
    x = random_array(rng, case.input_shape, dtype)
    y = random_array(rng, case.output_shape, dtype)
    op = _operator(case, w, method)
    ax = (op @ x).astype(np.complex128).ravel()
    ahy = (op.H @ y).astype(np.complex128).ravel()
    lhs, rhs = np.vdot(y.ravel(), ax), np.vdot(ahy, x.ravel())
    xf = x.reshape(case.full_input_shape)
    yf = y.reshape(case.output_channels, *case.out_size)
    aw = np.abs(w).astype(float)
    if method == "direct":
        fwd = 2 * gamma(case.terms + 2, dtype) * np.abs(
            case_apply(case, aw, np.abs(xf).astype(float)))
        adj = 2 * gamma(case.adjoint_terms + 2, dtype) * np.abs(
            case_adjoint(case, aw, np.abs(yf).astype(float)))
        e = float(np.abs(y).ravel() @ fwd.ravel() + np.abs(x).ravel() @ adj.ravel())
    else:
        e = (np.linalg.norm(y) * _fft_bound(case, w, xf, gather=not case.transposed)
             + np.linalg.norm(x) * _fft_bound(case, w, yf, gather=case.transposed))
    n = x.size + y.size
    rounding = 2 * gamma(n + 2, "float64") * float(
        np.abs(y).ravel() @ np.abs(ax) + np.abs(ahy) @ np.abs(x).ravel())
    assert abs(lhs - rhs) <= e + rounding, (lhs, rhs, e + rounding)
    assert not op.built


# --------------------------------------------------------------------------- options the
# strategies do not draw: flip, channels last, origin, negative padding; against the CSR
# (whose entries the builder tests check against the loops) and, for flip, the loop.
OPTIONS = [
    dict(flip=True, padding=1, padding_mode="reflect"),
    dict(flip=True, stride=2, dilation=2, padding=2),
    dict(layout="channels_last", padding=1, stride=2),
    dict(layout="channels_last", padding=2, padding_mode="circular", groups=2),
    dict(origin=(0, 1), padding="same"),
    dict(dilation=(1, 2), padding="valid", stride=(3, 1)),
    dict(padding=((3, 0), (0, 4)), padding_mode="symmetric", dilation=(2, 1)),
    dict(padding=((2, 1), (1, 2)), padding_mode="replicate", stride=(1, 3)),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                     o.items()))
@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("dtype", ["float64", "complex64"])
def test_options_outside_the_strategies_match_the_csr(options, method, dtype):
    rng = np.random.default_rng(7)
    groups = options.get("groups", 1)
    last = options.get("layout") == "channels_last"
    w = random_array(rng, (4, 4 // groups, 3, 3), dtype)
    shape = (4, 9, 10)
    if last:
        w = np.moveaxis(w, (0, 1), (-1, -2))
        shape = (9, 10, 4)
    for make in (convmat.ConvOperator, convmat.ConvOperator.transposed):
        ref = make(w, shape, **options, method="csr")
        op = make(w, shape, **options, method=method)
        x = random_array(rng, (3, *ref.input_shape), dtype)
        y = random_array(rng, (3, *ref.output_shape), dtype)
        tol = 50 * eps(dtype) * math.log2(x.size + y.size)
        for got, want in [(op @ x, ref @ x), (op.T @ y, ref.T @ y), (op.H @ y, ref.H @ y)]:
            assert got.shape == want.shape and got.dtype == want.dtype
            assert np.linalg.norm(got - want) <= tol * np.linalg.norm(np.abs(w)) * max(
                np.linalg.norm(x), np.linalg.norm(y))
        assert not op.built


@pytest.mark.parametrize("method", PATHS)
def test_flip_is_the_reversed_kernel(method):
    """``flip=True`` is the true convolution: the loop with the kernel reversed."""
    rng = np.random.default_rng(3)
    case = make_case((3, 2, 3, 4), (2, 7, 8), padding=1, padding_mode="reflect", stride=2)
    w = random_array(rng, case.weight_shape, "float64")
    x = random_array(rng, case.input_shape, "float64")
    op = convmat.ConvOperator(w, case.input_shape, **case.options, flip=True, method=method)
    ref = case_apply(case, np.flip(w, axis=(2, 3)).astype(np.complex128), x).real
    np.testing.assert_allclose(op @ x, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_the_one_channel_shorthand_keeps_its_shapes():
    K = np.array([[0., 1.], [2., 3.]])
    for method in PATHS:
        op = convmat.ConvOperator(K, (3, 3), method=method)
        assert (op @ np.arange(9.0).reshape(3, 3)).shape == (2, 2)
        np.testing.assert_allclose(op @ np.arange(9.0).reshape(3, 3), [[19, 25], [37, 43]])
        np.testing.assert_allclose(op.T @ K, [[0, 0, 1], [0, 4, 6], [4, 12, 9]], atol=1e-12)
        np.testing.assert_allclose(op @ np.arange(9.0), [19, 25, 37, 43])  # a flat vector


# --------------------------------------------------------------------------- tiles
@pytest.mark.parametrize("tile", [1, 600, 5000])
def test_direct_tiles_split_batches_and_rows(monkeypatch, tile):
    """The im2col columns are formed in tiles of samples, or of rows of one sample."""
    monkeypatch.setattr(structured, "TILE_BYTES", tile)
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 2, 3, 3))
    opts = dict(padding=1, stride=(2, 1), groups=2, padding_mode="reflect")
    op = convmat.ConvOperator(w, (4, 9, 7), **opts, method="direct")
    ref = convmat.ConvOperator(w, (4, 9, 7), **opts, method="csr")
    x = rng.standard_normal((5, 4, 9, 7))
    y = rng.standard_normal((5, *op.output_shape))
    np.testing.assert_allclose(op @ x, ref @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.T @ y, ref.T @ y, rtol=1e-12, atol=1e-12)


def test_tiles_cover_every_sample_and_row_once(monkeypatch):
    g = convmat.conv_geometry(np.ones((2, 1, 3, 3)), (1, 10, 4))
    s = structured.StructuredConv(g, np.ones((2, 1, 3, 3)), np)
    per_sample = 1 * 9 * 8 * 2 * 8  # C_in * K * positions * itemsize
    for tile in (1, per_sample // 3, per_sample, 3 * per_sample):
        monkeypatch.setattr(structured, "TILE_BYTES", tile)
        seen = [(n, r) for n0, n1, r0, r1 in s._tiles(4, per_sample)
                for n in range(n0, n1) for r in range(r0, r1)]
        assert sorted(seen) == [(n, r) for n in range(4) for r in range(8)]
    assert s._tiles(0, per_sample) == []


# --------------------------------------------------------------------------- the choice
def test_the_cost_model_picks_the_clear_cases():
    """The choice, not timings: a wide layer is a GEMM, a large one-channel kernel an FFT,
    a small one-channel kernel the CSR (whose W is then built on first use)."""
    wide = convmat.conv_geometry(np.ones((256, 256, 3, 3)), (256, 28, 28), padding=1)
    blur31 = convmat.conv_geometry(np.ones((31, 31)), (1024, 1024), padding="same")
    blur3 = convmat.conv_geometry(np.ones((3, 3)), (1024, 1024), padding="same")
    for threads in (1, 2):
        for g, want in [(wide, "direct"), (blur31, "fft"), (blur3, "csr")]:
            costs = estimate_costs(g, threads=threads)
            assert min(costs, key=costs.get) == want, (g.describe(), threads, costs)
    assert choose_method(wide) == "direct" and choose_method(blur31) == "fft"
    assert choose_method(blur3) == "csr"
    op = convmat.ConvOperator(np.ones((3, 3)), (64, 64), padding=1)
    assert op.method == "csr" and not op.built
    op @ np.ones((64, 64))
    assert op.built


def test_a_tiny_problem_prefers_the_csr_and_batches_may_differ():
    op = convmat.ConvOperator(np.ones((2, 2)), (3, 3))
    assert op.method == "csr"  # the per-call overhead of the structured paths dominates
    wide = convmat.ConvOperator(np.ones((64, 64, 3, 3)), (64, 16, 16), padding=1)
    assert wide.method_for(1) == "direct" and wide.method_for(16) in ("direct", "fft")
    assert convmat.ConvOperator(np.ones((2, 2)), (3, 3), method="fft").method_for(16) == "fft"


def test_the_choice_respects_memory():
    """A path whose workspace (or W's build) does not fit is not chosen."""
    g = convmat.conv_geometry(np.ones((31, 31)), (1024, 1024), padding="same")
    need = structured.structured_bytes(g, "fft")
    assert choose_method(g, max_bytes=need) == "fft"
    assert choose_method(g, max_bytes=need - 1) in ("direct", "csr")
    assert structured.structured_bytes(g, "direct") > 0


def test_the_repr_says_the_path():
    op = convmat.ConvOperator(np.ones((8, 8, 3, 3)), (8, 32, 32), padding=1, method="fft")
    assert "method=fft" in repr(op) and "not built" in repr(op)
    assert "fft" in op._repr_html_()
    assert op.with_method("auto").method in ("csr", "direct", "fft")
    assert op.with_method("direct").method == "direct"


# --------------------------------------------------------------------------- laziness
def test_an_operator_only_applied_never_builds_w():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 4, 3, 3))
    for method in PATHS:
        op = convmat.ConvOperator(w, (4, 12, 12), padding=1, method=method)
        x = rng.standard_normal((3, 4, 12, 12))
        y = op @ x
        op.T @ y, op.H @ y[0]
        A = op.aslinearoperator()
        A.matvec(x[0].ravel()), A.rmatvec(y[0].ravel())
        res = convmat.deconvolve(y[0], op, maxiter=5)
        assert res.x.shape == (4, 12, 12)
        assert not op.built, method
        spla.lsqr(A, y[0].ravel(), iter_lim=3)
        assert not op.built
        assert op.matrix.nnz == op.nnz and op.built  # built on demand, then kept


def test_structured_and_csr_deconvolution_agree():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 3))
    x = rng.standard_normal((20, 20))
    ops = [convmat.ConvOperator(w, (20, 20), padding="same", method=m)
           for m in ("csr", "direct", "fft")]
    y = ops[0] @ x
    sols = [convmat.deconvolve(y, op, maxiter=30, atol=0, btol=0).x for op in ops]
    for s in sols[1:]:
        np.testing.assert_allclose(s, sols[0], rtol=0, atol=1e-8 * np.abs(sols[0]).max())


# --------------------------------------------------------------------------- errors
def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match=r"method='gemm' is not one of 'auto', 'csr', "
                                         r"'direct', 'fft'"):
        convmat.ConvOperator(np.ones((3, 3)), (8, 8), method="gemm")
    with pytest.raises(ValueError, match=r"method='sparse' is not one of"):
        convmat.ConvOperator(np.ones((3, 3)), (8, 8)).with_method("sparse")


def test_a_structured_workspace_over_max_bytes_is_refused():
    op = convmat.ConvOperator(np.ones((4, 4, 3, 3)), (4, 16, 16), method="direct",
                              max_bytes=1000)
    with pytest.raises(convmat.ConvMatrixTooLarge,
                       match=r"the direct product of a batch of 2 through .* needs [\d,]+ "
                             r"bytes at peak .* over the limit of 1,000 bytes \(max_bytes\)"):
        op @ np.ones((2, 4, 16, 16))
    assert not op.built


# --------------------------------------------------------------------------- functional
@settings(max_examples=40, deadline=None)
@given(case=st.one_of(cases(shorthand=False), cases(transposed=True, shorthand=False)),
       method=st.sampled_from(("auto", "csr", *PATHS)), seed=SEEDS)
def test_the_functional_forms_take_every_path(case, method, seed):
    """``convmat.conv`` / ``conv_transpose`` with ``method=`` against the loops."""
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, "float64")
    x = random_array(rng, (2, *case.input_shape), "float64")
    fn = convmat.conv_transpose if case.transposed else convmat.conv
    options = {k: v for k, v in case.options.items() if k != "max_bytes"}
    got = fn(x, w, **options, method=method)
    ref = np.stack([case_apply(case, w, x[i]) for i in range(2)]).real
    scale = np.stack([case_apply(case, np.abs(w), np.abs(x[i])) for i in range(2)]).real
    bound = 2 * gamma(case.terms + 2, "float64") * scale
    if method in ("fft", "auto"):  # the fft path's 2-norm bound covers each entry
        bound = bound + 2 * sum(_fft_bound(case, w, x[i], gather=not case.transposed)
                                for i in range(2))
    assert got.shape == ref.shape
    assert (np.abs(got - ref) <= bound).all()
    one = fn(x[0], w, **options, method=method)
    np.testing.assert_allclose(one, got[0], rtol=0, atol=float(bound.max()) * 2)


def test_the_functional_forms_refuse_an_unknown_method():
    with pytest.raises(ValueError, match=r"method='blas' is not one of 'auto', 'csr'"):
        convmat.conv(np.ones((1, 4, 4)), np.ones((1, 1, 3, 3)), method="blas")
    with pytest.raises(convmat.ConvMatrixTooLarge, match=r"the fft product of a batch of 1 "):
        convmat.conv_transpose(np.ones((1, 4, 4)), np.ones((1, 1, 3, 3)), method="fft",
                               max_bytes=10)


# --------------------------------------------------------------------------- the CSR path
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_the_csr_path_splits_rows_over_threads(monkeypatch, dtype):
    """``op @ x``, ``op.T @ y`` and ``op.H @ y`` on the CSR path run on row blocks (the
    adjoint adds the blocks' partial sums); they equal SciPy's products with ``W``."""
    from convmat import products

    monkeypatch.setattr(products, "PARALLEL_MIN_NNZ", 0)
    monkeypatch.setattr(convmat.operator, "default_threads", lambda: 3)
    rng = np.random.default_rng(4)
    w = random_array(rng, (3, 2, 3, 3), dtype)
    op = convmat.ConvOperator(w, (2, 11, 9), padding=1, stride=(2, 1), method="csr")
    assert len(op._core.row_blocks().blocks) == 3
    W = op.matrix
    x = random_array(rng, (4, *op.input_shape), dtype)
    y = random_array(rng, (4, *op.output_shape), dtype)
    xs, ys = x.reshape(4, -1).T, y.reshape(4, -1).T
    tol = 20 * eps(dtype) * np.abs(w).sum() * max(np.abs(x).max(), np.abs(y).max())
    pairs = [(op @ x, (W @ xs).T), (op @ x[0], W @ xs[:, 0]), (op.T @ y, (W.T @ ys).T),
             (op.H @ y[1], W.conj().T @ ys[:, 1]), (op.H.H @ x, (W @ xs).T),
             (op.T.H @ x, (W.conj() @ xs).T), (op.aslinearoperator().rmatvec(ys[:, 2]),
                                               W.conj().T @ ys[:, 2])]
    for got, want in pairs:
        got = np.asarray(got).reshape(want.shape)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_calibrate_measures_every_constant(monkeypatch):
    """``calibrate`` replaces each rate with a measured, finite, positive one."""
    monkeypatch.setattr(structured, "COSTS", dict(structured.COSTS))
    before = dict(structured.COSTS)
    for key in ("csr_read", "copy", "gemm", "fft"):
        structured.COSTS[key] = -1.0
    got = structured.calibrate(seconds=0.05)
    assert got == structured.COSTS
    for key in ("csr_read", "copy", "gemm", "fft"):
        assert math.isfinite(got[key]) and got[key] > 0, key
    for key in ("call_csr", "call_direct", "call_fft"):  # fixed, not measured
        assert got[key] == before[key]


def test_solver_products_get_the_blas_threads_back(monkeypatch):
    """``deconvolve`` holds BLAS to one thread for its vector work, not for the GEMMs."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []
    flat = convmat.ConvOperator._flat

    def spy(self, x):
        seen.append({i["num_threads"] for i in threadpoolctl.threadpool_info()
                     if i["user_api"] == "blas"})
        return flat(self, x)

    monkeypatch.setattr(convmat.ConvOperator, "_flat", spy)
    monkeypatch.setattr(convmat.system, "default_threads", lambda: 3)
    rng = np.random.default_rng(8)
    op = convmat.ConvOperator(rng.standard_normal((4, 4, 3, 3)), (4, 10, 10), padding=1,
                              method="direct")
    y = op @ rng.standard_normal((4, 10, 10))
    seen.clear()
    convmat.deconvolve(y, op, maxiter=3)
    assert seen and all(s == {3} for s in seen), seen


def test_fft_batches_run_in_chunks(monkeypatch):
    """A batch whose spectra exceed ``TILE_BYTES`` is transformed a few samples at a time."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((3, 2, 4, 4))
    opts = dict(padding=2, stride=2, padding_mode="circular")
    ref = convmat.ConvOperator(w, (2, 9, 9), **opts, method="csr")
    x = rng.standard_normal((5, 2, 9, 9))
    y = rng.standard_normal((5, *ref.output_shape))
    g = ref.geometry
    whole = structured.structured_bytes(g, "fft", 5)
    monkeypatch.setattr(structured, "TILE_BYTES", 1)  # one sample at a time
    op = convmat.ConvOperator(w, (2, 9, 9), **opts, method="fft")
    assert op._core.plan()._fft_samples(np.dtype(np.float64)) == 1
    np.testing.assert_allclose(op @ x, ref @ x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(op.T @ y, ref.T @ y, rtol=0, atol=1e-12)
    assert structured.structured_bytes(g, "fft", 5) < whole
    assert structured.structured_bytes(g, "fft", 0) >= 0
    assert (op @ np.ones((0, 2, 9, 9))).shape == (0, 3, *ref.output_shape[1:])
