"""The operator algebra: compositions, sums, scalings, stacks, adjoints and affine maps.

Every matrix is checked against dense products of the naive loop reference's matrices
(tests/reference.py, no convmat code), every application against those dense matrices, and
every adjoint against the conjugate transpose of the reference.
"""

import math
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

import convmat
import convmat.csr
from convmat import (
    ConvMatrixTooLarge,
    ConvOperator,
    MatrixOperator,
    hstack,
    identity_operator,
    vstack,
)

from reference import assert_canonical_csr, conv_matrix_reference, conv_reference
from reference_layers import (
    channel_affine_reference,
    interpolate_reference,
    pad_reference,
    pixel_shuffle_reference,
    pixel_unshuffle_reference,
    pool_reference,
)

EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- layers
@st.composite
def conv_layers(draw, channels, spatial, allow_bias=True):
    """One convolution drawn to fit ``(channels, *spatial)``, with its dense reference."""
    ndim = len(spatial)
    mode = draw(st.sampled_from(["zeros", "replicate", "circular", "reflect", "symmetric"]))
    kernel = tuple(draw(st.integers(1, min(3, n))) for n in spatial)
    stride = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    pads = []
    for n, k in zip(spatial, kernel, strict=True):
        most = min(k - 1, n - 1 if mode == "reflect" else n)
        pads.append(draw(st.integers(0, max(most, 0))))
    groups = draw(st.sampled_from([g for g in (1, 2) if channels % g == 0]))
    c_out = groups * draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, channels // groups, *kernel))
    bias = rng.standard_normal(c_out) if allow_bias and draw(st.booleans()) else None
    padding = [(p, p) for p in pads]
    W, out_shape = conv_matrix_reference(w, (channels, *spatial), stride, padding,
                                         (1,) * ndim, groups, mode)
    op = ConvOperator(w, (channels, *spatial), stride=stride, padding=tuple(pads),
                      groups=groups, padding_mode=mode, bias=bias)
    assert op.output_shape == out_shape

    def apply(x):  # the affine layer on one sample, by loops
        y = conv_reference(x, w, stride, padding, (1,) * ndim, groups, mode)
        return y if bias is None else y + bias.reshape((-1,) + (1,) * ndim)

    return op, W, apply


def dense_of(apply, input_shape):
    """The dense matrix of the linear part of ``apply`` (a loop reference), column by column."""
    n = math.prod(input_shape)
    zero = apply(np.zeros(input_shape))
    cols = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        cols.append((apply(e.reshape(input_shape)) - zero).ravel())
    return np.stack(cols, axis=1)


@st.composite
def other_layers(draw, channels, spatial):
    """A layer around convolutions drawn to fit ``(channels, *spatial)``, with its reference.

    Pooling, upsampling, padding (affine with a constant value), a channel affine map and
    pixel (un)shuffle; the reference is the naive loop of tests/reference_layers.py.
    """
    shape = (channels, *spatial)
    ndim = len(spatial)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kinds = ["pool", "upsample", "pad", "affine"]
    if all(n % 2 == 0 for n in spatial):
        kinds.append("unshuffle")
    if channels % 2**ndim == 0:
        kinds.append("shuffle")
    kind = draw(st.sampled_from(kinds))
    if kind == "pool":
        k = draw(st.integers(1, min(2, *spatial)))
        stride = draw(st.integers(1, 2))
        pad = draw(st.integers(0, k // 2))
        include = draw(st.booleans())
        op = convmat.avg_pool_operator(shape, k, stride, pad, count_include_pad=include)

        def apply(x):
            return pool_reference(x, (k,) * ndim, (stride,) * ndim, (pad,) * ndim,
                                  count_include_pad=include)
    elif kind == "upsample":
        mode = draw(st.sampled_from(["nearest", "linear"]))
        mode = {("linear", 2): "bilinear"}.get((mode, ndim), mode)
        corners = None if mode == "nearest" else draw(st.booleans())
        out = tuple(draw(st.integers(1, 2 * n)) for n in spatial)
        op = convmat.upsample_operator(shape, size=out, mode=mode, align_corners=corners)

        def apply(x):
            return interpolate_reference(x, out, mode, align_corners=bool(corners))
    elif kind == "pad":
        mode = draw(st.sampled_from(["constant", "replicate", "circular"]))
        # F.pad's order: (lo, hi) of the last axis first
        pads = [draw(st.integers(0, min(2, n))) for n in reversed(spatial) for _ in range(2)]
        value = draw(st.sampled_from([0.0, 1.5])) if mode == "constant" else 0.0
        op = convmat.pad_operator(shape, pads, mode=mode, value=value)

        def apply(x):
            return pad_reference(x, pads, mode, value)
    elif kind == "affine":
        scale, shift = rng.standard_normal(channels), rng.standard_normal(channels)
        op = convmat.channel_affine_operator(shape, scale, shift)

        def apply(x):
            return channel_affine_reference(x, scale, shift)
    elif kind == "unshuffle":
        op = convmat.pixel_unshuffle_operator(shape, 2)

        def apply(x):
            return pixel_unshuffle_reference(x, 2)
    else:
        op = convmat.pixel_shuffle_operator(shape, 2)

        def apply(x):
            return pixel_shuffle_reference(x, 2)
    return op, dense_of(apply, shape), apply


@st.composite
def chains(draw, allow_bias=True, layers=False):
    """2-4 convolutions (with ``layers``, also pooling, upsampling, padding, affine maps and
    pixel (un)shuffles), each fitting the previous output."""
    ndim = draw(st.integers(1, 2))
    shape = (draw(st.integers(1, 2)), *[draw(st.integers(3, 6)) for _ in range(ndim)])
    out = []
    for _ in range(draw(st.integers(2, 4))):
        if layers and draw(st.booleans()) and math.prod(shape) <= 200:
            layer = draw(other_layers(shape[0], shape[1:]))
        else:
            layer = draw(conv_layers(shape[0], shape[1:], allow_bias))
        out.append(layer)
        shape = layer[0].output_shape
    return out


def compose(layers):
    op = layers[0][0]
    for layer in layers[1:]:
        op = layer[0] @ op
    return op


def dense_product(layers):
    M = layers[0][1]
    for layer in layers[1:]:
        M = layer[1] @ M
    return M


def assert_dense_close(got, ref, terms):
    """|got - ref| within ``terms`` roundings of the product of absolute values (float64)."""
    scale = np.abs(ref).max(initial=0) + 1
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * terms * EPS * scale)


# --------------------------------------------------------------------------- properties
@settings(deadline=None)
@given(chains(allow_bias=False, layers=True))
def test_product_matrix_equals_the_product_of_reference_matrices(layers):
    """``(B @ A).matrix == B.matrix @ A.matrix``, both against the reference, canonical."""
    P = compose(layers)
    ref = dense_product(layers)
    assert P.shape == ref.shape
    M = P.matrix
    assert_canonical_csr(M)
    terms = max(ref.shape) ** len(layers)
    assert_dense_close(M.toarray(), ref, terms)
    # the same as SciPy's product of the factors' matrices, entry for entry
    direct = layers[-1][0].matrix
    for layer in reversed(layers[:-1]):
        direct = direct @ layer[0].matrix
    assert abs(M - sp.csr_array(direct)).max() <= 4 * terms * EPS * (abs(ref).max() + 1)


@settings(deadline=None)
@given(chains(allow_bias=False, layers=True), st.integers(0, 2**16))
def test_lazy_application_and_adjoint_against_the_reference(layers, seed):
    """``P @ x`` (flat, shaped, batch, columns) and ``P.H @ y`` without forming a product."""
    P = compose(layers)
    ref = dense_product(layers)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, *P.input_shape))
    y = P @ x
    assert y.shape == (3, *P.output_shape)
    terms = max(ref.shape) ** len(layers)
    assert_dense_close(y.reshape(3, -1), x.reshape(3, -1) @ ref.T, terms)
    assert_dense_close(P @ x[0], (ref @ x[0].ravel()).reshape(P.output_shape), terms)
    assert_dense_close(P @ x[0].ravel(), ref @ x[0].ravel(), terms)
    assert_dense_close(P @ x.reshape(3, -1).T, ref @ x.reshape(3, -1).T, terms)
    assert "matrix" not in P.__dict__  # nothing was formed to apply it
    u = rng.standard_normal((2, *P.output_shape))
    # (B @ A).H == A.H @ B.H, applied part by part, against the reference's transpose
    H = P.H
    assert H.input_shape == P.output_shape and H.output_shape == P.input_shape
    assert_dense_close((H @ u).reshape(2, -1), u.reshape(2, -1) @ ref, terms)
    HB = layers[0][0].H
    for layer in layers[1:]:
        HB = HB @ layer[0].H
    assert_dense_close(HB.matrix.toarray(), ref.T, terms)
    assert_dense_close(H.matrix.toarray(), ref.T, terms)
    assert H.H is P.linear  # the adjoint of the adjoint is the linear part


@settings(deadline=None)
@given(chains(allow_bias=True, layers=True), st.integers(0, 2**16))
def test_affine_compositions_compose_their_offsets(layers, seed):
    """``(B o A)(x) = B A x + (B a + b)``: against the layers applied one by one by loops."""
    P = compose(layers)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(P.input_shape)
    expected = x
    for _, _, apply in layers:
        expected = apply(expected)
    terms = max(dense_product(layers).shape) ** len(layers)
    assert_dense_close(P(x), expected, terms)
    assert_dense_close(P(x[None])[0], expected, terms)
    assert_dense_close(P(x.ravel()), expected.ravel(), terms)
    assert_dense_close(P(x.reshape(-1, 1))[:, 0], expected.ravel(), terms)
    # the linear part is the product of the matrices, whatever the biases
    assert_dense_close(P.matrix.toarray(), dense_product(layers), terms)
    if P.offset is None:
        assert all(layer[0].offset is None for layer in layers)
    else:
        assert_dense_close(P.offset, P(np.zeros(P.input_shape)), terms)
        assert P.linear.offset is None
        assert_dense_close(P.linear(x), P @ x, 1)


def test_sum_scale_stack_against_dense():
    rng = np.random.default_rng(1)
    a = ConvOperator(rng.standard_normal((2, 1, 3, 3)), (1, 6, 5), padding=1)
    b = ConvOperator(rng.standard_normal((2, 1, 1, 3)), (1, 6, 5), padding=(0, 1),
                     padding_mode="circular", bias=np.array([1.0, -2.0]))
    A, B = a.matrix.toarray(), b.matrix.toarray()
    x = rng.standard_normal((1, 6, 5))
    S = a + 2.5 * b - a / 4
    np.testing.assert_allclose(S.matrix.toarray(), A + 2.5 * B - A / 4, rtol=1e-14)
    np.testing.assert_allclose(S @ x, ((A + 2.5 * B - A / 4) @ x.ravel()).reshape(2, 6, 5),
                               rtol=1e-13)
    np.testing.assert_allclose(S(x), S @ x + 2.5 * b.offset, rtol=1e-13)
    assert S.H.shape == (30, 60)
    np.testing.assert_allclose(S.T.matrix.toarray(), (A + 2.5 * B - A / 4).T, rtol=1e-14)
    assert sum([a, b]).shape == a.shape  # sum() starts from 0
    np.testing.assert_allclose((-a).matrix.toarray(), -A)
    np.testing.assert_allclose((+a) @ x, a @ x)
    np.testing.assert_allclose((a.T @ a) ** 2 @ x, a.T @ (a @ (a.T @ (a @ x))), rtol=1e-13)
    z = (1 + 2j) * a
    assert z.dtype == np.complex128
    np.testing.assert_allclose(z.H.matrix.toarray(), np.conj((1 + 2j) * A).T)
    # stacks: outputs of the same input, and inputs of the same output
    V = vstack([a, b])
    assert V.output_shape == (4, 6, 5) and V.input_shape == (1, 6, 5)
    np.testing.assert_array_equal(V.matrix.toarray(), np.vstack([A, B]))
    np.testing.assert_allclose(V(x), np.concatenate([a @ x, b(x)]), rtol=1e-14)
    Hs = hstack([a.T, b.T])
    assert Hs.input_shape == (4, 6, 5) and Hs.output_shape == (1, 6, 5)
    np.testing.assert_array_equal(Hs.matrix.toarray(), np.hstack([A.T, B.T]))
    y = rng.standard_normal((4, 6, 5))
    np.testing.assert_allclose(Hs @ y, a.T @ y[:2] + b.T @ y[2:], rtol=1e-13)
    np.testing.assert_array_equal(V.T.matrix.toarray(), Hs.matrix.toarray())
    flat = vstack([a, a.reshape(output_shape=(60,))])  # shapes that do not stack by channel
    assert flat.output_shape == (120,)
    sparse_cols = V @ sp.csr_array(x.reshape(-1, 1))
    np.testing.assert_allclose(sparse_cols.toarray()[:, 0], (V @ x).ravel(), rtol=1e-14)
    np.testing.assert_allclose((Hs @ sp.csr_array(y.reshape(-1, 1))).toarray()[:, 0],
                               (Hs @ y).ravel(), rtol=1e-13)


def test_matrix_operator_identity_and_reshape():
    M = np.arange(12.0).reshape(3, 4)
    op = MatrixOperator(M, (2, 2), (3,), offset=np.ones(3), name="dense")
    assert repr(op).startswith("<dense: (2, 2) -> (3,)") and "affine" in repr(op)
    np.testing.assert_array_equal(op @ np.ones((2, 2)), M.sum(axis=1))
    np.testing.assert_array_equal(op(np.ones((5, 2, 2))), np.tile(M.sum(axis=1) + 1, (5, 1)))
    assert op.nnz == 11 and op.nbytes > 0 and op.device == "cpu"
    eye = identity_operator((3,))
    np.testing.assert_array_equal((eye @ op).matrix.toarray(), M)
    R = op.reshape(input_shape=(4,), output_shape=(1, 3))
    assert R.input_shape == (4,) and R.output_shape == (1, 3)
    np.testing.assert_array_equal(R(np.ones((2, 4))), np.tile(M.sum(axis=1) + 1, (2, 1, 1)))
    np.testing.assert_array_equal(R(np.ones(4)), M.sum(axis=1) + 1)  # flat in, flat out
    np.testing.assert_array_equal(R.T.matrix.toarray(), M.T)
    assert R.reshape(input_shape=(2, 2)).input_shape == (2, 2)
    assert MatrixOperator(np.eye(2, dtype=int)).dtype == np.float64
    assert MatrixOperator(sp.eye(2, format="csc")).matrix.format == "csc"


def test_a_composite_is_a_scipy_linear_operator():
    rng = np.random.default_rng(2)
    a = ConvOperator(rng.standard_normal((2, 1, 3)), (1, 12), padding=1)
    b = ConvOperator(rng.standard_normal((1, 2, 2)), (2, 12), stride=2)
    P = b @ a
    assert isinstance(P, spla.LinearOperator) and P.aslinearoperator() is P
    ref = b.matrix.toarray() @ a.matrix.toarray()
    u = rng.standard_normal(6)
    np.testing.assert_allclose(P.matvec(np.ones(12)), ref @ np.ones(12), rtol=1e-13)
    np.testing.assert_allclose(P.rmatvec(u), ref.T @ u, rtol=1e-13)
    np.testing.assert_allclose(P.matmat(np.eye(12)), ref, rtol=1e-13)
    np.testing.assert_allclose(P.rmatmat(np.eye(6)), ref.T, rtol=1e-13)
    np.testing.assert_allclose(P.adjoint().matvec(u), ref.T @ u, rtol=1e-13)
    np.testing.assert_allclose(P.transpose().matvec(u), ref.T @ u, rtol=1e-13)
    x = spla.lsqr(P, u, atol=1e-12, btol=1e-12)[0]  # SciPy's solver takes it as is
    np.testing.assert_allclose(ref.T @ (ref @ x - u), 0, atol=1e-9)
    clone = pickle.loads(pickle.dumps(P))
    np.testing.assert_array_equal(clone @ np.ones(12), P @ np.ones(12))
    assert P.to_cpu() is P


def test_deconvolve_takes_compositions_and_affine_maps():
    """A blur followed by a 2x downsampling, with a bias: against dense least squares."""
    rng = np.random.default_rng(3)
    blur = ConvOperator(np.full((1, 1, 3, 3), 1 / 9), (1, 8, 8), padding=1,
                        padding_mode="replicate")
    down = ConvOperator(np.ones((1, 1, 1, 1)), (1, 8, 8), stride=2, bias=np.array([0.5]))
    P = down @ blur
    A = P.matrix.toarray()
    x = rng.standard_normal((1, 8, 8))
    y = P(x)
    damp = 0.1
    ref = np.linalg.lstsq(np.vstack([A, damp * np.eye(64)]),
                          np.concatenate([(y - 0.5).ravel(), np.zeros(64)]), rcond=None)[0]
    for method in ("lsqr", "lsmr", "cgls"):
        r = convmat.deconvolve(y, P, damp=damp, method=method, atol=1e-12, btol=1e-12)
        assert r.x.shape == (1, 8, 8)
        np.testing.assert_allclose(r.x.ravel(), ref, atol=1e-8)
        np.testing.assert_allclose(r.residual_norm, np.linalg.norm(A @ r.x.ravel() + 0.5
                                                                   - y.ravel()), rtol=1e-9)
    # a composition as the regularizer (applied part by part), and a plain MatrixOperator
    D = convmat.gradient_operator((1, 8, 8))
    r = convmat.deconvolve(y, P, regularizer=MatrixOperator(D.matrix) @ identity_operator(64)
                           .reshape(input_shape=(1, 8, 8)), lam=0.2, atol=1e-12, btol=1e-12)
    G = D.matrix.toarray()
    ref = np.linalg.lstsq(np.vstack([A, 0.2 * G]),
                          np.concatenate([(y - 0.5).ravel(), np.zeros(G.shape[0])]),
                          rcond=None)[0]
    np.testing.assert_allclose(r.x.ravel(), ref, atol=1e-8)
    r = convmat.deconvolve(y, MatrixOperator(A, (1, 8, 8), (1, 4, 4), offset=np.full(16, .5)),
                           damp=damp, atol=1e-12, btol=1e-12, regularizer="gradient")
    assert r.x.shape == (1, 8, 8)


# --------------------------------------------------------------------------- the guard
def test_matrix_of_a_product_is_guarded_before_allocating(monkeypatch):
    rng = np.random.default_rng(4)
    a = ConvOperator(rng.standard_normal((1, 1, 5, 5)), (1, 20, 20), padding=2)
    P = a @ a
    # the bound (multiply count) is 25*25 per row; the exact nnz 81 per interior row
    exact = sp.csr_array(a.matrix @ a.matrix)
    exact.sum_duplicates()
    need = convmat.csr.csr_bytes(400, 400, exact.nnz, np.float64) + 400 * 16 + 2 * 401 * 8
    with pytest.raises(ConvMatrixTooLarge, match=r"the product of the last 2 factors of shape "
                       r"\(400, 400\) with \d[\d,]* entries needs [\d,]+ bytes at peak"):
        P.to_matrix(max_bytes=need - 1)
    monkeypatch.setattr(convmat.csr, "COUNT_BLOCK", 100)  # count in many blocks
    M = P.to_matrix(max_bytes=need)  # over the bound, within the exact count: built
    assert_canonical_csr(M)
    assert M.nnz == exact.nnz
    np.testing.assert_allclose(M.toarray(), exact.toarray(), rtol=1e-14)
    with pytest.raises(ConvMatrixTooLarge, match=r"the sum of shape \(400, 400\) with at most"):
        (a + a).to_matrix(max_bytes=1000)
    with pytest.raises(ConvMatrixTooLarge, match=r"the scaled matrix of shape \(400, 400\)"):
        (2 * a).to_matrix(max_bytes=1000)
    with pytest.raises(ConvMatrixTooLarge, match=r"the stacked matrix of shape \(800, 400\)"):
        vstack([a, a]).to_matrix(max_bytes=1000)
    with pytest.raises(ConvMatrixTooLarge, match=r"converting W\^H to CSR needs"):
        convmat.csr.as_csr(a.matrix.T, max_bytes=1000, what="W^H")


# --------------------------------------------------------------------------- errors
class _Elsewhere(MatrixOperator):
    """A MatrixOperator that claims another array module (stands in for a GPU one)."""

    @property
    def xp(self):
        return math


def test_shape_and_type_errors_name_both_sides():
    a = ConvOperator(np.ones((2, 1, 3, 3)), (1, 6, 6))  # (1, 6, 6) -> (2, 4, 4)
    b = ConvOperator(np.ones((1, 2, 3, 3)), (2, 5, 5))
    with pytest.raises(ValueError, match=r"cannot compose: the outer operator takes inputs of "
                       r"shape \(2, 5, 5\) \(50 entries\) but the inner one gives outputs of "
                       r"shape \(2, 4, 4\) \(32 entries\)"):
        b @ a
    c = MatrixOperator(sp.eye(32, format="csr"), (4, 8), (32,))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(4, 8\) \(32 entries\) but "
                       r"the inner one gives outputs of shape \(2, 4, 4\) \(32 entries\); "
                       r"reshape one"):
        c @ a
    assert (c.reshape(input_shape=(32,)) @ a).shape == (32, 36)
    with pytest.raises(ValueError, match=r"cannot add operators of shapes \(1, 6, 6\) -> "
                       r"\(2, 4, 4\) and \(2, 5, 5\) -> \(1, 3, 3\)"):
        a + b
    with pytest.raises(ValueError, match=r"cannot vstack operators whose input shapes differ: "
                       r"\(1, 6, 6\) and \(2, 5, 5\)"):
        vstack([a, b])
    with pytest.raises(ValueError, match=r"cannot hstack operators whose output shapes differ"):
        hstack([a, b])
    with pytest.raises(ValueError, match=r"axis must be 0 \(vstack\) or 1 \(hstack\), got 2"):
        convmat.StackedOperator([a], axis=2)
    with pytest.raises(ValueError, match=r"StackedOperator needs at least one operator"):
        vstack([])
    with pytest.raises(TypeError, match=r"part 1 is a ndarray, not a convmat operator"):
        vstack([a, np.ones((2, 2))])
    other = _Elsewhere(sp.eye(36, format="csr"), (1, 6, 6), (1, 6, 6))
    with pytest.raises(TypeError, match=r"part 1 lives on the gpu but part 0 on the cpu; "
                       r"mixing backends is not supported"):
        a @ other
    with pytest.raises(TypeError, match=r"alpha must be a scalar, got ndarray"):
        convmat.ScaledOperator(np.ones(2), a)
    with pytest.raises(ValueError, match=r"an operator's power must be an int >= 1, got 0"):
        a.T @ a ** 0
    with pytest.raises(ValueError, match=r"output_shape=\(5,\) has 5 entries but the "
                       r"operator's output_shape \(2, 4, 4\) has 32"):
        a.reshape(output_shape=(5,))
    assert a.__add__(1) is NotImplemented and a.__mul__(np.ones(2)) is NotImplemented
    assert a.__rmatmul__(np.ones(2)) is NotImplemented
    assert a.__radd__(1) is NotImplemented and a.__sub__(1) is NotImplemented
    assert a.__truediv__("x") is NotImplemented
    assert 0 + a is a
    with pytest.raises(TypeError):
        a * np.ones(3)


def test_matrix_operator_errors():
    with pytest.raises(ValueError, match=r"matrix must be 2-D, got shape \(3,\)"):
        MatrixOperator(np.ones(3))
    with pytest.raises(TypeError, match=r"matrix must be numeric, got dtype <U1"):
        MatrixOperator(np.full((2, 2), "a"))
    with pytest.raises(TypeError, match=r"matrix dtype int64 is not supported"):
        MatrixOperator(sp.csr_array(np.ones((2, 2), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"input_shape=\(3,\) has 3 entries but the matrix has "
                       r"2 columns"):
        MatrixOperator(np.ones((2, 2)), (3,))
    with pytest.raises(ValueError, match=r"output_shape=\(1, 3\) has 3 entries but the matrix "
                       r"has 2 rows"):
        MatrixOperator(np.ones((2, 2)), None, (1, 3))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints, got '2'"):
        MatrixOperator(np.ones((2, 2)), "2")
    with pytest.raises(ValueError, match=r"output_shape=\(-2,\) has a negative size"):
        MatrixOperator(np.ones((2, 2)), None, (-2,))
    with pytest.raises(ValueError, match=r"offset of shape \(3,\) \(3 entries\) does not fit "
                       r"the output shape \(2,\) \(2 entries\)"):
        MatrixOperator(np.ones((2, 2)), offset=np.ones(3))
    with pytest.raises(TypeError, match=r"offset must be a numeric array, got dtype <U1"):
        MatrixOperator(np.ones((2, 2)), offset=np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"matrix is a masked array; the operator would use the "
                       r"values under"):
        MatrixOperator(np.ma.masked_array(np.ones((2, 2))))
    with pytest.raises(TypeError, match=r"shape must be a tuple of ints"):
        identity_operator(2.5)


def test_bias_errors_and_transposed_bias():
    w = np.ones((2, 1, 3))
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not fit: expected \(2,\)"):
        ConvOperator(w, (1, 8), bias=np.ones(3))
    with pytest.raises(ValueError, match=r"bias of shape \(2,\) does not fit: expected a scalar "
                       r"\(one-channel shorthand\)"):
        ConvOperator(np.ones(3), (8,), bias=np.ones(2))
    with pytest.raises(TypeError, match=r"bias must be a numeric array, got dtype <U1"):
        ConvOperator(w, (1, 8), bias=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"bias contains NaN or inf"):
        ConvOperator(w, (1, 8), bias=np.array([1.0, np.nan]))
    op = ConvOperator(np.ones(3), (8,), bias=2.0)
    np.testing.assert_array_equal(op(np.zeros(8)), np.full(6, 2.0))
    t = ConvOperator.transposed(w, (2, 6), bias=np.array([1.0]))
    assert t.output_shape == (1, 8) and t.offset.shape == (1, 8)
    np.testing.assert_array_equal(t(np.zeros((2, 6))), np.ones((1, 8)))
    np.testing.assert_array_equal(t @ np.ones((2, 6)), ConvOperator.transposed(w, (2, 6))
                                  @ np.ones((2, 6)))
    assert t.with_weight(2 * w).offset is t.offset
    assert "affine" in repr(t)
