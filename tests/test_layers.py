"""The layers around convolutions (``convmat.layers``) and the separable generator.

Every layer is checked three ways: against the naive loop references of
``reference_layers.py`` (no torch, 1-3 spatial axes), against PyTorch in float64 where it
is installed, and its transpose ``op.T`` against a naive *scatter* reference (an explicit
matrix is always adjoint to its SciPy transpose, so ``<Ax, y> = <x, A^T y>`` would prove
nothing). Matrices are checked canonical from their raw arrays; spies prove which generator
builds each layer; every ``raise`` has a ``pytest.raises`` test.

Tolerances. Sum pooling, nearest interpolation, shuffles, pads and crops copy or add the
same numbers in the same order as the references: exact. Averages and interpolation
weights are rounded differently (the matrix holds ``1/divisor`` or a product of per-axis
weights where PyTorch divides a sum or nests the weighted sums): each entry then differs by
at most a few roundings per term, so the bound is ``c * eps * (|A| @ |x|)`` per output
(``eps`` of the dtype, ``c`` a small multiple of the terms per row).
"""

import math
import types

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convmat
import convmat.layers as layers
import convmat.separable as separable
from convmat import (
    ConvMatrixTooLarge,
    adaptive_avg_pool_operator,
    avg_pool_operator,
    batch_norm_operator,
    channel_affine_operator,
    crop_operator,
    kron_matrix,
    kron_operator,
    pad_operator,
    pixel_shuffle_operator,
    pixel_unshuffle_operator,
    sum_pool_operator,
    upsample_operator,
)

from reference import assert_canonical_csr
from reference_layers import (
    adaptive_avg_pool_reference,
    adaptive_transpose_reference,
    batch_norm_reference,
    channel_affine_reference,
    crop_reference,
    interpolate_reference,
    interpolate_transpose_reference,
    pad_reference,
    pad_transpose_reference,
    pixel_shuffle_reference,
    pixel_shuffle_transpose_reference,
    pixel_unshuffle_reference,
    pool_out_size,
    pool_reference,
    pool_transpose_reference,
)

SETTINGS = settings(max_examples=30, deadline=None)
MODES_BY_NDIM = {1: ("nearest", "nearest-exact", "linear"),
                 2: ("nearest", "nearest-exact", "bilinear"),
                 3: ("nearest", "nearest-exact", "trilinear")}
#: Scale factors drawn: integers (the transposed-convolution path), non-integers up and down.
SCALES = (0.3, 0.5, 0.6, 0.75, 1.0, 1.2, 1.5, 1.7, 2.0, 2.5, 3.0)


def assert_within(z, y, A, x, terms, dtype=np.float64):
    """``|z - y| <= 4 * (terms + 1) * eps * (|A| @ |x|)`` elementwise (see module notes)."""
    eps = np.finfo(dtype).eps
    columns = np.abs(x).reshape(-1, A.shape[1]).T  # one column per sample
    bound = 4 * (terms + 1) * eps * (abs(A) @ columns).T.reshape(np.shape(z))
    err = np.abs(np.asarray(z) - np.asarray(y))
    assert np.all(err <= bound), f"max error {err.max()} over bound {bound[err > bound]}"


def rng_x(seed, shape, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def torch_or_skip():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------- strategies
@st.composite
def pool_cases(draw):
    d = draw(st.integers(1, 3))
    kmax = {1: 5, 2: 3, 3: 2}[d]
    k = tuple(draw(st.integers(1, kmax)) for _ in range(d))
    s = tuple(draw(st.integers(1, 3)) for _ in range(d))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    n = tuple(max(1, kk - 2 * pp) + draw(st.integers(0, {1: 6, 2: 3, 3: 2}[d]))
              for kk, pp in zip(k, p, strict=True))
    return dict(
        c=draw(st.integers(1, 3)), n=n, k=k, s=s, p=p,
        ceil=draw(st.booleans()), include=draw(st.booleans()),
        divisor=draw(st.one_of(st.none(), st.integers(1, 5), st.just(-3))),
    )


@st.composite
def interp_cases(draw):
    d = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(MODES_BY_NDIM[d]))
    nmax = {1: 9, 2: 5, 3: 3}[d]
    n = tuple(draw(st.integers(1, nmax)) for _ in range(d))
    aligned = None if mode.startswith("nearest") else draw(st.sampled_from([None, True, False]))
    recompute = None
    if draw(st.booleans()):
        size = tuple(draw(st.integers(1, 2 * nmax)) for _ in range(d))
        factors = None
    else:
        size = None
        factors = tuple(draw(st.sampled_from(SCALES).filter(lambda f, m=m: math.floor(m * f) >= 1))
                        for m in n)
        recompute = draw(st.sampled_from([None, False, True]))
    return dict(c=draw(st.integers(1, 2)), n=n, mode=mode, aligned=aligned, size=size,
                factors=factors, recompute=recompute)


def _interp_out(case):
    if case["size"] is not None:
        return case["size"], None
    out = tuple(math.floor(m * f) for m, f in zip(case["n"], case["factors"], strict=True))
    return out, (None if case["recompute"] else list(case["factors"]))


def _upsample(case, **kw):
    return upsample_operator((case["c"], *case["n"]), case["size"], case["factors"],
                             case["mode"], case["aligned"],
                             recompute_scale_factor=case["recompute"], **kw)


# --------------------------------------------------------------------------- separable
@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31), st.booleans())
def test_kron_matrix_matches_numpy_kron(d, channels, seed, dense):
    rng = np.random.default_rng(seed)
    factors = []
    for _ in range(d):
        shape = (int(rng.integers(0, 5)), int(rng.integers(1, 5)))
        f = sp.random_array(shape, density=0.6, random_state=rng, format="coo")
        f.data = rng.integers(-3, 4, f.nnz).astype(float)  # small ints: exact products
        if not dense and f.nnz:  # a duplicate entry (summed)
            f = sp.coo_array((np.concatenate([f.data, [1.0]]),
                              (np.concatenate([f.row, f.row[:1]]),
                               np.concatenate([f.col, f.col[:1]]))), shape=shape)
        factors.append(f.toarray() if dense else f)
    before = [f.copy() for f in factors]
    K = kron_matrix(factors, channels)
    expected = np.eye(channels)
    for f in factors:
        expected = np.kron(expected, f.toarray() if sp.issparse(f) else f)
    np.testing.assert_array_equal(K.toarray(), expected)
    assert_canonical_csr(K)
    for f, b in zip(factors, before, strict=True):  # inputs unmutated
        np.testing.assert_array_equal(f.toarray() if sp.issparse(f) else f,
                                      b.toarray() if sp.issparse(b) else b)


def test_kron_matrix_blocks_and_dtypes(monkeypatch):
    monkeypatch.setattr(separable, "KRON_BLOCK", 5)  # many blocks, rows split across them
    A = sp.csr_array(np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 4.0], [5.0, 0.0, 6.0]]))
    B = sp.csr_array(np.array([[1j, 0.0], [2.0, 3.0]]))
    K = kron_matrix([A, B], 3, dtype=np.complex64)
    assert K.dtype == np.complex64
    np.testing.assert_array_equal(K.toarray(), np.kron(np.eye(3), np.kron(A.toarray(),
                                                                         B.toarray())))
    assert_canonical_csr(K)
    assert kron_matrix([np.array([[1, 2]])]).dtype == np.float64  # ints give float64
    zero = sp.csr_array((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    assert kron_matrix([zero, zero], 2).nnz == 8  # explicit zeros are kept


def test_kron_operator_shapes_and_offset():
    A = np.array([[0.5, 0.5]])
    op = kron_operator([A, np.eye(3)], 2, offset=np.ones((2, 1, 3)), name="half")
    assert (op.input_shape, op.output_shape) == ((2, 2, 3), (2, 1, 3))
    x = rng_x(0, (4, 2, 2, 3))
    np.testing.assert_allclose(op(x), x.mean(axis=2, keepdims=True) + 1, rtol=1e-15)
    assert "half" in repr(op)


def test_kron_refuses_before_allocating():
    with pytest.raises(ConvMatrixTooLarge, match="Kronecker product of shape"):
        kron_matrix([np.ones((100, 100))] * 2, 4, max_bytes=10_000)


# --------------------------------------------------------------------------- pooling
@SETTINGS
@given(pool_cases(), st.sampled_from(["float64", "float32", "complex128"]),
       st.integers(0, 2**31))
def test_avg_and_sum_pool_match_reference(case, dtype, seed):
    c, n, k, s, p = case["c"], case["n"], case["k"], case["s"], case["p"]
    x = rng_x(seed, (c, *n), dtype)
    x_copy = x.copy()
    op = avg_pool_operator((c, *n), k, s, p, case["ceil"], case["include"], case["divisor"],
                           dtype=dtype)
    out = [pool_out_size(*a, case["ceil"]) for a in zip(n, k, s, p, strict=True)]
    assert op.output_shape == (c, *out) and op.dtype == np.dtype(dtype)
    ref = pool_reference(x.astype(np.complex128), k, s, p, case["ceil"], case["include"],
                         case["divisor"])
    assert_within(op @ x, ref, op.matrix, x, math.prod(k), dtype)
    assert_canonical_csr(op.matrix)
    total = sum_pool_operator((c, *n), k, s, p, case["ceil"], dtype=dtype)
    ref_sum = pool_reference(x, k, s, p, case["ceil"], average=False)
    if dtype == "float64":  # the same terms added in the same order
        np.testing.assert_array_equal(total @ x, ref_sum)
    else:
        assert_within(total @ x, ref_sum, total.matrix, x, math.prod(k), dtype)
    np.testing.assert_array_equal(x, x_copy)


@SETTINGS
@given(pool_cases(), st.integers(0, 2**31))
def test_avg_pool_transpose_matches_scatter(case, seed):
    c, n, k, s, p = case["c"], case["n"], case["k"], case["s"], case["p"]
    op = avg_pool_operator((c, *n), k, s, p, case["ceil"], case["include"], case["divisor"])
    y = rng_x(seed, op.output_shape)
    ref = pool_transpose_reference(y, (c, *n), k, s, p, case["include"], case["divisor"])
    assert_within(op.T @ y, ref, op.matrix.T, y, math.prod(k))


def test_pools_are_depthwise_convolutions(monkeypatch):
    calls = []
    real = layers.conv_matrix

    def spy(weight, input_shape, **kw):
        calls.append((weight.shape, kw["groups"], kw["padding"]))
        return real(weight, input_shape, **kw)

    monkeypatch.setattr(layers, "conv_matrix", spy)
    avg_pool_operator((3, 5, 5), 3, 2, 1, ceil_mode=True)
    sum_pool_operator((2, 7), 2)
    assert calls == [((3, 1, 3, 3), 3, ((1, 1), (1, 1))), ((2, 1, 2), 2, ((0, 0),))]


def test_avg_pool_ceil_mode_window_past_padding():
    # n=5, k=2, s=2, ceil: the third window starts at 4 and ends past the input: its
    # divisor counts the one sample inside (PyTorch clips to the padded input).
    op = avg_pool_operator((1, 5), 2, ceil_mode=True)
    np.testing.assert_array_equal(op @ np.array([[1., 2., 3., 4., 5.]]), [[1.5, 3.5, 5.]])


@SETTINGS
@given(pool_cases(), st.integers(0, 2**31))
def test_avg_pool_matches_torch(case, seed):
    torch = torch_or_skip()
    F = torch.nn.functional
    c, n, k, s, p = case["c"], case["n"], case["k"], case["s"], case["p"]
    d = len(n)
    # avg_pool3d (only) also wants the unpadded input to hold a kernel; convmat does not.
    assume(d != 3 or all(nn >= kk for nn, kk in zip(n, k, strict=True)))
    op = avg_pool_operator((c, *n), k, s, p, case["ceil"], case["include"], case["divisor"])
    x = rng_x(seed, (2, c, *n))
    kw = dict(ceil_mode=case["ceil"], count_include_pad=case["include"],
              divisor_override=case["divisor"])
    t = torch.from_numpy(x)
    if d == 1:  # avg_pool1d has no divisor_override: the 2-D kernel with a unit last axis
        y = F.avg_pool2d(t[..., None], (k[0], 1), (s[0], 1), (p[0], 0), **kw)[..., 0].numpy()
    else:
        y = [F.avg_pool2d, F.avg_pool3d][d - 2](t, k, s, p, **kw).numpy()
    assert_within(op @ x, y, op.matrix, x, math.prod(k))          # batched
    assert_within(op @ x[1], y[1], op.matrix, x[1], math.prod(k))  # one sample
    if case["divisor"] == 1:
        np.testing.assert_array_equal(
            sum_pool_operator((c, *n), k, s, p, case["ceil"]) @ x, y)


def test_avg_pool1d_matches_torch_module():
    torch = torch_or_skip()
    x = rng_x(1, (2, 3, 11))
    y = torch.nn.AvgPool1d(4, 3, 2, ceil_mode=True, count_include_pad=False)(
        torch.from_numpy(x)).numpy()
    op = avg_pool_operator((3, 11), 4, 3, 2, True, False)
    assert_within(op @ x, y, op.matrix, x, 4)


# --------------------------------------------------------------------------- adaptive pooling
@pytest.mark.parametrize("n, out", [((7,), (3,)), ((5,), (8,)), ((6, 5), (4, 2)),
                                    ((3, 4, 5), (2, 3, 4)), ((4, 4), (None, 3))])
def test_adaptive_avg_pool_matches_reference_and_scatter(n, out):
    c = 2
    op = adaptive_avg_pool_operator((c, *n), out if len(out) > 1 else out[0])
    resolved = tuple(nn if o is None else o for nn, o in zip(n, out, strict=True))
    x = rng_x(3, (c, *n))
    terms = math.prod(math.ceil(nn / o) + 1 for nn, o in zip(n, resolved, strict=True))
    assert op.output_shape == (c, *resolved)
    assert_within(op @ x, adaptive_avg_pool_reference(x, resolved), op.matrix, x, terms)
    y = rng_x(4, op.output_shape)
    assert_within(op.T @ y, adaptive_transpose_reference(y, (c, *n)), op.matrix.T, y, terms)
    assert_canonical_csr(op.matrix)


@pytest.mark.parametrize("n, out", [((9,), 4), ((5,), 7), ((6, 7), (4, 3)), ((5, 4, 6), 3),
                                    ((5, 6), (None, 4))])
def test_adaptive_avg_pool_matches_torch(n, out):
    torch = torch_or_skip()
    F = torch.nn.functional
    fn = [F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d][len(n) - 1]
    x = rng_x(5, (2, 3, *n))
    y = fn(torch.from_numpy(x), out).numpy()
    op = adaptive_avg_pool_operator((3, *n), out)
    assert_within(op @ x, y, op.matrix, x, math.prod(nn for nn in n))
    assert_within(op @ x[1], y[1], op.matrix, x[1], math.prod(nn for nn in n))  # one sample


# --------------------------------------------------------------------------- interpolation
@SETTINGS
@given(interp_cases(), st.integers(0, 2**31))
def test_upsample_matches_reference_and_scatter(case, seed):
    op = _upsample(case)
    out, factors = _interp_out(case)
    assert op.output_shape == (case["c"], *out)
    x = rng_x(seed, (case["c"], *case["n"]))
    ref = interpolate_reference(x, out, case["mode"], bool(case["aligned"]), factors)
    y = rng_x(seed + 1, op.output_shape)
    ref_t = interpolate_transpose_reference(y, (case["c"], *case["n"]), case["mode"],
                                            bool(case["aligned"]), factors)
    if case["mode"].startswith("nearest"):  # copies: exact
        np.testing.assert_array_equal(op @ x, ref)
        assert_within(op.T @ y, ref_t, op.matrix.T, y, max(out))
    else:
        assert_within(op @ x, ref, op.matrix, x, 2 ** len(out))
        assert_within(op.T @ y, ref_t, op.matrix.T, y, math.prod(out))
    assert_canonical_csr(op.matrix)


@SETTINGS
@given(interp_cases(), st.integers(0, 2**31))
def test_upsample_matches_torch(case, seed):
    torch = torch_or_skip()
    x = rng_x(seed, (2, case["c"] + 1, *case["n"]))  # C >= 2: PyTorch's contiguous kernels
    op = _upsample(dict(case, c=case["c"] + 1))
    y = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=case["size"], scale_factor=case["factors"],
        mode=case["mode"], align_corners=case["aligned"],
        recompute_scale_factor=case["recompute"]).numpy()
    if case["mode"].startswith("nearest"):
        np.testing.assert_array_equal(op @ x, y)
        np.testing.assert_array_equal(op @ x[0], y[0])
    else:
        assert_within(op @ x, y, op.matrix, x, 2 ** len(case["n"]))
        assert_within(op @ x[0], y[0], op.matrix, x[0], 2 ** len(case["n"]))


@pytest.mark.parametrize("mode, n, kw", [
    ("nearest", (3, 100), dict(scale_factor=(1.2, 1.3))),        # sizes sum past 128
    ("nearest", (3, 40), dict(scale_factor=(1.2, 1.3))),         # at most 128: nearest_idx
    ("nearest", (5, 7), dict(scale_factor=(2.1, 1.0))),          # out == 2n, scale 2.1
    ("nearest-exact", (5, 70), dict(scale_factor=(2.1, 0.9))),
    ("nearest", (7,), dict(scale_factor=2.1)),                   # 1-D: never nearest_idx
    ("bilinear", (4, 70), dict(size=(4, 100), align_corners=False)),
])
def test_upsample_torch_kernel_rules(mode, n, kw):
    torch = torch_or_skip()
    x = rng_x(6, (2, 2, *n))
    y = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode, **kw).numpy()
    op = upsample_operator((2, *n), kw.get("size"), kw.get("scale_factor"), mode,
                           kw.get("align_corners"))
    sf = kw.get("scale_factor")
    factors = None if sf is None else list(sf) if isinstance(sf, tuple) else [sf]
    ref = interpolate_reference(x[0], op.output_shape[1:], mode, False, factors)
    if mode.startswith("nearest"):
        np.testing.assert_array_equal(op @ x, y)
        np.testing.assert_array_equal(op @ x[0], ref)
    else:
        assert_within(op @ x, y, op.matrix, x, 4)
        assert_within(op @ x[0], ref, op.matrix, x[0], 4)


GRID_SHAPES = {"nearest": (5, 4), "nearest-exact": (5, 4), "linear": (5,), "bilinear": (5, 4),
               "trilinear": (3, 4, 2)}


@pytest.mark.parametrize("mode", list(GRID_SHAPES))
@pytest.mark.parametrize("aligned", [None, False, True])
@pytest.mark.parametrize("how", [dict(size=9), dict(size=3), dict(scale_factor=1.5),
                                 dict(scale_factor=0.6), dict(scale_factor=2),
                                 dict(scale_factor=0.5), dict(scale_factor=1.5,
                                                              recompute_scale_factor=True)])
def test_upsample_grid_matches_torch(mode, aligned, how):
    """Every mode x align_corners x size / scale factor, up and down, against PyTorch."""
    torch = torch_or_skip()
    if mode.startswith("nearest") and aligned is not None:
        with pytest.raises(ValueError, match="can only be set with the linear modes"):
            upsample_operator((2, *GRID_SHAPES[mode]), mode=mode, align_corners=aligned, **how)
        return
    n = GRID_SHAPES[mode]
    x = rng_x(25, (2, 2, *n))
    y = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode, align_corners=aligned,
                                        **how).numpy()
    op = upsample_operator((2, *n), mode=mode, align_corners=aligned, **how)
    if mode.startswith("nearest"):
        np.testing.assert_array_equal(op @ x, y)
    else:
        assert_within(op @ x, y, op.matrix, x, 2 ** len(n))


def test_upsample_float32_matches_torch_float32():
    torch = torch_or_skip()
    F = torch.nn.functional
    for n, size, mode in [((2,), (41,), "nearest-exact"), ((13, 9), (29, 20), "bilinear"),
                          ((5,), (17,), "linear"), ((3, 4, 5), (7, 5, 3), "nearest")]:
        x = rng_x(7, (2, 2, *n), np.float32)
        y = F.interpolate(torch.from_numpy(x), size=size, mode=mode).numpy()
        op = upsample_operator((2, *n), size, mode=mode, dtype=np.float32)
        if mode.startswith("nearest"):  # float32 source positions: the same samples
            np.testing.assert_array_equal(op @ x, y)
        else:
            assert_within(op @ x, y, op.matrix, x, 2 ** len(n), np.float32)


def test_integer_nearest_upsampling_is_a_transposed_convolution(monkeypatch):
    calls = []
    real = layers.conv_transpose_matrix

    def spy(weight, input_shape, **kw):
        calls.append((weight.shape, kw["stride"], kw["groups"]))
        return real(weight, input_shape, **kw)

    monkeypatch.setattr(layers, "conv_transpose_matrix", spy)
    op = upsample_operator((2, 3, 4), scale_factor=(2, 3))
    assert calls == [((2, 1, 2, 3), (2, 3), 2)]
    x = rng_x(8, (2, 3, 4))
    np.testing.assert_array_equal(op @ x, x.repeat(2, axis=1).repeat(3, axis=2))
    y = rng_x(9, op.output_shape)
    np.testing.assert_array_equal(op.T @ y, interpolate_transpose_reference(
        y, (2, 3, 4), "nearest", False, [2.0, 3.0]))
    upsample_operator((2, 5), scale_factor=1.5)  # not an integer factor: separable
    upsample_operator((2, 5), size=10, mode="nearest-exact")  # integer: a convolution
    assert len(calls) == 2


# --------------------------------------------------------------------------- pixel shuffle
@pytest.mark.parametrize("r, spatial", [(2, (3,)), (3, (2,)), (2, (2, 3)), (1, (2, 2)),
                                        (2, (1, 2, 2)), (3, (2, 1, 1))])
def test_pixel_shuffle_matches_reference(r, spatial):
    d = len(spatial)
    c_in = 2 * r**d
    op = pixel_shuffle_operator((c_in, *spatial), r)
    x = rng_x(10, (c_in, *spatial))
    np.testing.assert_array_equal(op @ x, pixel_shuffle_reference(x, r))
    y = rng_x(11, op.output_shape)
    np.testing.assert_array_equal(op.T @ y, pixel_shuffle_transpose_reference(y, r))
    un = pixel_unshuffle_operator(op.output_shape, r)
    np.testing.assert_array_equal(un @ y, pixel_unshuffle_reference(y, r))
    assert (un.matrix != op.matrix.T).nnz == 0  # unshuffle's matrix is shuffle's transpose
    assert_canonical_csr(op.matrix)
    assert_canonical_csr(un.matrix)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_pixel_shuffle_matches_torch(r):
    torch = torch_or_skip()
    F = torch.nn.functional
    x = rng_x(12, (2, 3 * r * r, 4, 5))
    op = pixel_shuffle_operator((3 * r * r, 4, 5), r)
    np.testing.assert_array_equal(op @ x, F.pixel_shuffle(torch.from_numpy(x), r).numpy())
    np.testing.assert_array_equal(op @ x[0], F.pixel_shuffle(torch.from_numpy(x[0]), r).numpy())
    z = rng_x(13, (2, 3, 4 * r, 2 * r))
    un = pixel_unshuffle_operator((3, 4 * r, 2 * r), r)
    np.testing.assert_array_equal(un @ z, F.pixel_unshuffle(torch.from_numpy(z), r).numpy())


# --------------------------------------------------------------------------- pad and crop
PAD_CASES = [
    ((4,), (1, 2)), ((4,), (-1, 3)), ((4,), (3, -1)), ((4,), (-2, -1)), ((5,), (0, 0)),
    ((3, 4), (1, 2)), ((3, 4), (2, 1, 1, 2)), ((3, 4), (-1, 2, 2, -1)), ((2, 3, 4), (1, 1)),
    ((2, 3, 4), (1, 0, 0, 1, 1, 1)), ((3, 3, 3), (-1, 1, 1, -1, 0, 1)),
]


@pytest.mark.parametrize("mode", list(layers.PAD_MODES))
@pytest.mark.parametrize("n, pad", PAD_CASES)
def test_pad_matches_reference_and_scatter(n, pad, mode):
    value = 2.5 if mode == "constant" else 0.0
    op = pad_operator((2, *n), pad, mode, value)
    x = rng_x(14, (2, *n))
    np.testing.assert_array_equal(op(x), pad_reference(x, pad, mode, value))
    if mode == "symmetric" and len(pad) == 2 * len(n) and min(pad) >= 0:  # NumPy's
        width = [(0, 0)] + [tuple(pad[2 * j:2 * j + 2]) for j in range(len(n))][::-1]
        np.testing.assert_array_equal(op(x), np.pad(x, width, mode="symmetric"))
    np.testing.assert_array_equal(op @ x, pad_reference(x, pad, mode, 0.0))
    y = rng_x(15, op.output_shape)
    np.testing.assert_array_equal(op.T @ y, pad_transpose_reference(y, (2, *n), pad, mode))
    assert_canonical_csr(op.matrix)
    assert (op.offset is not None) == (mode == "constant" and any(v > 0 for v in pad))


@pytest.mark.parametrize("n, pad, mode", [
    (n, pad, mode) for n, pad in PAD_CASES for mode in ("constant", "reflect", "replicate",
                                                         "circular")
    # PyTorch's other modes pad every spatial axis (convmat also pads fewer)
    if mode == "constant" or len(pad) == 2 * len(n)])
def test_pad_matches_torch(n, pad, mode):
    torch = torch_or_skip()
    F = torch.nn.functional
    x = rng_x(16, (2, 2, *n))
    value = -1.5 if mode == "constant" else None
    y = F.pad(torch.from_numpy(x), pad, mode=mode, value=value).numpy()
    op = pad_operator((2, *n), pad, mode, value or 0.0)
    np.testing.assert_array_equal(op(x), y)
    np.testing.assert_array_equal(op(x[1]), y[1])


def test_pad_is_a_convolution_with_the_padding_mode(monkeypatch):
    calls = []
    real = layers.conv_matrix

    def spy(weight, input_shape, **kw):
        calls.append((weight.shape, kw["padding"], kw["padding_mode"]))
        return real(weight, input_shape, **kw)

    monkeypatch.setattr(layers, "conv_matrix", spy)
    pad_operator((2, 3, 4), (1, 2), "reflect")
    pad_operator((2, 5), (-1, 2), "circular")  # cropped first, then wrapped
    pad_operator((2, 5), (-1, -2))  # a crop only
    assert calls == [((2, 1, 1, 1), ((0, 0), (1, 2)), "reflect"),
                     ((2, 1, 1), ((0, 2),), "circular")]


def test_pad_mode_registry_follows_the_convolution():
    assert set(layers.PAD_MODES) == {"constant", *(m for m in convmat.geometry.PADDING_MODES
                                                   if m != "zeros")}


def test_pad_complex_value_and_dtype():
    op = pad_operator((1, 2), (1, 0), value=1 + 2j, dtype=np.complex128)
    np.testing.assert_array_equal(op(np.array([[3.0, 4.0]])), [[1 + 2j, 3, 4]])


@pytest.mark.parametrize("n, start, stop", [((5,), 1, 4), ((4, 5), (0, 2), (3, 5)),
                                            ((3, 4, 5), (1, 0, 2), (3, 4, 3))])
def test_crop_matches_reference_and_scatter(n, start, stop):
    op = crop_operator((2, *n), start, stop)
    d = len(n)
    a = start if isinstance(start, tuple) else (start,) * d
    b = stop if isinstance(stop, tuple) else (stop,) * d
    x = rng_x(17, (2, *n))
    np.testing.assert_array_equal(op @ x, crop_reference(x, a, b))
    y = rng_x(18, op.output_shape)
    back = np.zeros((2, *n))
    back[(slice(None), *[slice(i, j) for i, j in zip(a, b, strict=True)])] = y
    np.testing.assert_array_equal(op.T @ y, back)
    assert_canonical_csr(op.matrix)


@pytest.mark.parametrize("n, start, stop", [((5,), 1, 4), ((4, 5), (0, 2), (3, 5)),
                                            ((3, 4, 5), (1, 0, 2), (3, 4, 3))])
def test_crop_matches_torch(n, start, stop):
    """A crop is PyTorch's slicing, and F.pad with negative pads: batched and one sample."""
    torch = torch_or_skip()
    d = len(n)
    a = start if isinstance(start, tuple) else (start,) * d
    b = stop if isinstance(stop, tuple) else (stop,) * d
    x = torch.from_numpy(rng_x(26, (2, 2, *n)))
    pads = [v for j in reversed(range(d)) for v in (-a[j], b[j] - n[j])]
    y = torch.nn.functional.pad(x, pads).numpy()
    np.testing.assert_array_equal(
        y, x[(slice(None), slice(None), *[slice(i, j) for i, j in zip(a, b, strict=True)])])
    op = crop_operator((2, *n), start, stop)
    np.testing.assert_array_equal(op @ x.numpy(), y)
    np.testing.assert_array_equal(op @ x.numpy()[1], y[1])


# --------------------------------------------------------------------------- channel maps
@pytest.mark.parametrize("spatial", [(), (3,), (2, 3), (2, 2, 2)])
def test_channel_affine_matches_reference(spatial):
    rng = np.random.default_rng(19)
    scale, shift = rng.standard_normal(3), rng.standard_normal(3)
    scale_copy = scale.copy()
    op = channel_affine_operator((3, *spatial), scale, shift)
    x = rng_x(20, (3, *spatial))
    np.testing.assert_array_equal(op(x), channel_affine_reference(x, scale, shift))
    np.testing.assert_array_equal(op.T @ x, channel_affine_reference(x, scale))
    np.testing.assert_array_equal(scale, scale_copy)
    assert channel_affine_operator((3, 2), 2.0).offset is None
    assert_canonical_csr(op.matrix)


@pytest.mark.parametrize("spatial", [(), (3,), (2, 3), (2, 2, 2)])
def test_channel_affine_matches_torch(spatial):
    """scale[c] * x + shift[c], as torch broadcasts it over (N, C, *spatial)."""
    torch = torch_or_skip()
    rng = np.random.default_rng(27)
    scale, shift = rng.standard_normal(3), rng.standard_normal(3)
    x = rng_x(28, (2, 3, *spatial))
    view = (3, *(1,) * len(spatial))
    y = torch.addcmul(torch.from_numpy(shift).view(view), torch.from_numpy(scale).view(view),
                      torch.from_numpy(x)).numpy()
    op = channel_affine_operator((3, *spatial), scale, shift)
    # addcmul may fuse the multiply-add; the operator rounds the product, then the sum.
    bound = 2 * np.finfo(float).eps * (np.abs(op @ x) + np.abs(op.offset))
    assert np.all(np.abs(op(x) - y) <= bound)
    assert np.all(np.abs(op(x[1]) - y[1]) <= bound[1])


def test_batch_norm_matches_reference():
    rng = np.random.default_rng(21)
    mean, var = rng.standard_normal(2), rng.random(2) + 0.1
    weight, bias = rng.standard_normal(2), rng.standard_normal(2)
    op = batch_norm_operator((2, 3, 2), mean, var, weight, bias, eps=1e-3)
    x = rng_x(22, (2, 3, 2))
    ref = batch_norm_reference(x, mean, var, weight, bias, 1e-3)
    # alpha * x + beta against (x - mean) / sqrt(var + eps) * w + b: a few roundings of
    # terms bounded by |alpha x| + |beta| + |mean alpha|.
    bound = 8 * np.finfo(float).eps * (np.abs(op @ x) + np.abs(op.offset)
                                       + np.abs(mean * weight / np.sqrt(var + 1e-3))[:, None, None])
    assert np.all(np.abs(op(x) - ref) <= bound)
    plain = batch_norm_operator((2, 4), mean, var)
    np.testing.assert_allclose(plain(np.zeros((2, 4))),
                               np.repeat((-mean / np.sqrt(var + 1e-5))[:, None], 4, 1),
                               rtol=4 * np.finfo(float).eps)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_batch_norm_matches_torch_eval(d):
    torch = torch_or_skip()
    rng = np.random.default_rng(23 + d)
    bn = [torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d][d - 1](
        3, eps=1e-4).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(3)))
        bn.running_var.copy_(torch.from_numpy(rng.random(3) + 0.1))
        bn.weight.copy_(torch.from_numpy(rng.standard_normal(3)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(3)))
    x = rng_x(24, (2, 3, *(4,) * d))
    y = bn(torch.from_numpy(x)).detach().numpy()
    op = batch_norm_operator((3, *(4,) * d), bn.running_mean.numpy(), bn.running_var.numpy(),
                             bn.weight.detach().numpy(), bn.bias.detach().numpy(), eps=1e-4)
    # PyTorch evaluates alpha * x + beta as one fused multiply-add; the operator rounds the
    # product and the sum separately: one ulp of each term apart.
    bound = 2 * np.finfo(float).eps * (np.abs(op @ x) + np.abs(op.offset))
    assert np.all(np.abs(op(x) - y) <= bound)
    if d == 1:  # BatchNorm1d on (N, C): no spatial axis
        op0 = batch_norm_operator((3,), bn.running_mean.numpy(), bn.running_var.numpy(),
                                  bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                                  eps=1e-4)
        y0 = bn(torch.from_numpy(x[:, :, 0])).detach().numpy()
        assert np.all(np.abs(op0(x[:, :, 0]) - y0) <= 2 * np.finfo(float).eps
                      * (np.abs(op0 @ x[:, :, 0]) + np.abs(op0.offset)))


# --------------------------------------------------------------------------- dtypes, names
@pytest.mark.parametrize("make, name", [
    (lambda **kw: avg_pool_operator((2, 4, 4), 2, **kw), "avg_pool2d"),
    (lambda **kw: sum_pool_operator((2, 4), 2, **kw), "sum_pool1d"),
    (lambda **kw: adaptive_avg_pool_operator((2, 3, 3, 3), 2, **kw), "adaptive_avg_pool3d"),
    (lambda **kw: upsample_operator((2, 3), scale_factor=1.5, **kw), "upsample_nearest1d"),
    (lambda **kw: upsample_operator((2, 3, 3), size=4, mode="nearest-exact", **kw),
     "upsample_nearest_exact2d"),
    (lambda **kw: upsample_operator((2, 3, 3), 5, mode="bilinear", **kw),
     "upsample_bilinear2d"),
    (lambda **kw: upsample_operator((2, 2, 2, 2), 3, mode="trilinear", **kw),
     "upsample_trilinear3d"),
    (lambda **kw: pixel_shuffle_operator((4, 2, 2), 2, **kw), "pixel_shuffle"),
    (lambda **kw: pixel_unshuffle_operator((1, 2, 2), 2, **kw), "pixel_unshuffle"),
    (lambda **kw: pad_operator((2, 3), (1, 1), "replicate", **kw), "replicate_pad1d"),
    (lambda **kw: crop_operator((2, 3, 3), 0, 2, **kw), "crop2d"),
    (lambda **kw: channel_affine_operator((2, 3), [1.0, 2.0], **kw), "channel_affine"),
    (lambda **kw: batch_norm_operator((2, 3), [0.0, 1.0], [1.0, 2.0], **kw), "batch_norm"),
])
def test_dtype_and_name(make, name):
    for dtype in ("float32", "float64", "complex64", "complex128"):
        op = make(dtype=dtype)
        assert op.dtype == np.dtype(dtype) and op.matrix.dtype == np.dtype(dtype)
        assert repr(op).startswith(f"<{name}: ")
        assert op.input_shape and op.output_shape
    assert make().dtype == np.float64


@pytest.mark.parametrize("make, what", [
    (lambda mb: avg_pool_operator((4, 64, 64), 3, 1, 1, max_bytes=mb), "W"),
    (lambda mb: sum_pool_operator((4, 64, 64), 3, 1, max_bytes=mb), "W"),
    (lambda mb: adaptive_avg_pool_operator((4, 64, 64), 40, max_bytes=mb), "adaptive"),
    (lambda mb: upsample_operator((4, 64, 64), 100, mode="bilinear", max_bytes=mb),
     "upsample_bilinear2d"),
    (lambda mb: upsample_operator((4, 64, 64), scale_factor=2, max_bytes=mb), "W"),
    (lambda mb: pixel_shuffle_operator((4, 64, 64), 2, max_bytes=mb), "permutation"),
    (lambda mb: pad_operator((4, 64, 64), (2, 2, 2, 2), max_bytes=mb), "W"),
    (lambda mb: pad_operator((4, 64, 64), (2, -2), max_bytes=mb), "crop2d"),
    (lambda mb: crop_operator((4, 64, 64), 1, 60, max_bytes=mb), "crop2d"),
    (lambda mb: channel_affine_operator((4, 64, 64), 1.0, max_bytes=mb), "diagonal"),
])
def test_max_bytes_refuses_and_allows(make, what):
    with pytest.raises(ConvMatrixTooLarge, match=what):
        make(50_000)
    assert make(2**30).shape[0] > 0


def test_separable_tables_are_guarded_before_they_are_built():
    with pytest.raises(ConvMatrixTooLarge, match="per-axis tables of upsample_linear1d"):
        upsample_operator((1, 4), 10**9, mode="linear", max_bytes=10**6)


# --------------------------------------------------------------------------- errors
def _fake_cupy(monkeypatch, module):
    fake = types.ModuleType("fake_cupy")
    monkeypatch.setattr(module, "array_namespace",
                        lambda x: fake if getattr(x, "fake_gpu", False) else np)


class _GpuArray(np.ndarray):
    fake_gpu = True


def test_cupy_inputs_are_refused(monkeypatch):
    gpu = np.ones(2).view(_GpuArray)
    _fake_cupy(monkeypatch, layers)
    with pytest.raises(TypeError, match="scale is a CuPy array"):
        channel_affine_operator((2, 3), gpu)
    _fake_cupy(monkeypatch, separable)
    with pytest.raises(TypeError, match=r"factors\[0\] is a CuPy array"):
        kron_matrix([np.ones((2, 2)).view(_GpuArray)])


ERRORS = [
    # input_shape
    (lambda: avg_pool_operator("abc", 2), TypeError, "input_shape must be a tuple of ints"),
    (lambda: avg_pool_operator((2, 3.0), 2), TypeError, r"input_shape\[1\] must be an int"),
    (lambda: avg_pool_operator((2,), 2), ValueError, r"with 1 or more spatial axes"),
    (lambda: avg_pool_operator((2, 0), 2), ValueError, "has a size 0 < 1 at position 1"),
    (lambda: channel_affine_operator((), 1.0), ValueError, "with 0 or more spatial axes"),
    # per-axis ints, flags, dtype, max_bytes
    (lambda: avg_pool_operator((1, 4, 4), (2, 2, 2)), ValueError,
     r"kernel_size=\(2, 2, 2\) has 3 entries but input_shape has 2 spatial axes"),
    (lambda: avg_pool_operator((1, 4), 2.5), TypeError, "kernel_size must be an int or a tuple"),
    (lambda: avg_pool_operator((1, 4, 4), (2, 2.0)), TypeError, r"kernel_size\[1\] must be an int"),
    (lambda: avg_pool_operator((1, 4), 0), ValueError, "kernel_size must be >= 1 on every axis"),
    (lambda: avg_pool_operator((1, 4), 2, 0), ValueError, "stride must be >= 1"),
    (lambda: avg_pool_operator((1, 4), 2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: avg_pool_operator((1, 4), 2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    (lambda: avg_pool_operator((1, 4), 2, count_include_pad="no"), TypeError,
     "count_include_pad must be a bool"),
    (lambda: avg_pool_operator((1, 4), 2, dtype="int32"), TypeError,
     "dtype=int32 is not supported"),
    (lambda: avg_pool_operator((1, 4), 2, dtype="nonsense"), TypeError,
     "dtype='nonsense' is not a dtype"),
    (lambda: avg_pool_operator((1, 4), 2, max_bytes=-1), ValueError, "max_bytes must be >= 0"),
    # pooling
    (lambda: avg_pool_operator((1, 6), 3, padding=2), ValueError,
     r"padding must be at most half of kernel_size .* axis 0 has padding=2 > kernel_size // 2 = 1"),
    (lambda: avg_pool_operator((1, 2), 5, padding=1), ValueError,
     "axis 0: pooling output size 0 < 1"),
    (lambda: avg_pool_operator((1, 4), 2, divisor_override=1.5), TypeError,
     "divisor_override must be an int or None"),
    (lambda: avg_pool_operator((1, 4), 2, divisor_override=0), ValueError,
     "divisor_override=0: the divisor must be nonzero"),
    # adaptive pooling
    (lambda: adaptive_avg_pool_operator((1, 4, 4), (2, 2, 2)), ValueError,
     r"output_size=\(2, 2, 2\) has 3 entries but input_shape has 2"),
    (lambda: adaptive_avg_pool_operator((1, 4), 2.0), TypeError,
     "output_size must be an int, None or a tuple"),
    (lambda: adaptive_avg_pool_operator((1, 4, 4), (2, "a")), TypeError,
     r"output_size\[1\] must be an int or None"),
    (lambda: adaptive_avg_pool_operator((1, 4), 0), ValueError,
     "output_size must be >= 1 on every axis; axis 0 has output_size=0"),
    # interpolation
    (lambda: upsample_operator((1, 4)), ValueError, "give exactly one of size and scale_factor"),
    (lambda: upsample_operator((1, 4), 2, 2.0), ValueError, "give exactly one of size"),
    (lambda: upsample_operator((1, 4), 8, recompute_scale_factor=True), ValueError,
     "recompute_scale_factor=True is not meaningful with an explicit size=8"),
    (lambda: upsample_operator((1, 4), scale_factor=2.0, recompute_scale_factor="yes"),
     TypeError, "recompute_scale_factor must be a bool"),
    (lambda: upsample_operator((1, 4, 4), scale_factor=(2.0,)), ValueError,
     r"scale_factor=\(2.0,\) has 1 entries but input_shape has 2 spatial axes"),
    (lambda: upsample_operator((1, 4), scale_factor="2"), TypeError,
     "scale_factor must be a float or a tuple of floats; axis 0 has '2'"),
    (lambda: upsample_operator((1, 4), scale_factor=-1.0), ValueError,
     "scale_factor must be finite and > 0; axis 0 has scale_factor=-1.0"),
    (lambda: upsample_operator((1, 4), scale_factor=0.2), ValueError,
     r"axis 0: scale_factor=0.2 gives an output size floor\(4 \* 0.2\) = 0 < 1"),
    (lambda: upsample_operator((1, 4), 8, mode="bicubic"), ValueError,
     "mode='bicubic' is not one of"),
    (lambda: upsample_operator((1, 4), 8, mode="bilinear"), ValueError,
     "mode='bilinear' needs 2 spatial axes"),
    (lambda: upsample_operator((1, 4), 8, align_corners=True), ValueError,
     "align_corners=True can only be set with the linear modes"),
    (lambda: upsample_operator((1, 4), 8, mode="linear", align_corners=1), TypeError,
     "align_corners must be a bool"),
    (lambda: upsample_operator((1, 4), 0), ValueError, "size must be >= 1"),
    # pixel shuffle
    (lambda: pixel_shuffle_operator((4, 2, 2), 2.0), TypeError, "upscale_factor must be an int"),
    (lambda: pixel_shuffle_operator((4, 2, 2), 0), ValueError, "upscale_factor must be >= 1"),
    (lambda: pixel_shuffle_operator((6, 2, 2), 2), ValueError,
     r"input_shape\[0\]=6 channels must be divisible by upscale_factor\*\*2 = 4"),
    (lambda: pixel_unshuffle_operator((1, 4, 3), 2), ValueError,
     "downscale_factor=2 must divide every spatial size; axis 1"),
    # crop
    (lambda: crop_operator((1, 4), 2, 2), ValueError,
     "0 <= start < stop <= size; axis 0 has start=2, stop=2, size=4"),
    (lambda: crop_operator((1, 4), 0, 5), ValueError, "stop=5, size=4"),
    # pad
    (lambda: pad_operator((1, 4), 1), TypeError, "pad must be a tuple of ints"),
    (lambda: pad_operator((1, 4), (1, 1.0)), TypeError, r"pad\[1\] must be an int"),
    (lambda: pad_operator((1, 4), (1,)), ValueError, "must have an even, nonzero length"),
    (lambda: pad_operator((1, 4), (1, 1, 1, 1)), ValueError,
     "pads 2 axes but input_shape has 1 spatial axes"),
    (lambda: pad_operator((1, 4), (1, 1), "edge"), ValueError, "mode='edge' is not one of"),
    (lambda: pad_operator((1, 4), (1, 1), value="x"), TypeError, "value must be a number"),
    (lambda: pad_operator((1, 4), (1, 1), "reflect", 1.0), ValueError,
     "mode='reflect' takes no fill value, got value=1.0"),
    (lambda: pad_operator((1, 4), (1, 1), value=1j), TypeError,
     r"value=1j is complex but dtype=float64 is real"),
    (lambda: pad_operator((1, 4), (-3, -2)), ValueError,
     r"axis 0: pad \(-3, -2\) leaves an output size 4 \+ -3 \+ -2 = -1 < 1"),
    (lambda: pad_operator((1, 4), (4, 0), "reflect"), ValueError,
     r"mode='reflect' needs padding < input size; axis 0 has pad \(4, 0\)"),
    (lambda: pad_operator((1, 4), (0, 5), "symmetric"), ValueError,
     r"mode='symmetric' needs padding <= input size \(it mirrors once\); axis 0 has pad "
     r"\(0, 5\) for input size 4"),
    (lambda: pad_operator((1, 4), (3, -2), "circular"), ValueError,
     r"mode='circular' needs padding <= input size \(it wraps once\) after cropping; axis 0 "
     r"has pad \(3, -2\) for input size 2"),
    # channel maps
    (lambda: channel_affine_operator((2, 3), np.array(["a", "b"])), TypeError,
     "scale must be numeric"),
    (lambda: channel_affine_operator((2, 3), [1.0, 2.0, 3.0]), ValueError,
     r"scale of shape \(3,\) must have one entry per channel: shape \(2,\)"),
    (lambda: channel_affine_operator((2, 3), [1.0, np.nan]), ValueError,
     "scale contains 1 NaN or inf"),
    (lambda: channel_affine_operator((2, 3), [1.0, 1j]), TypeError,
     "scale is complex but dtype=float64 is real"),
    (lambda: channel_affine_operator((2, 3), 1.0, [0.0, 1j]), TypeError,
     "shift is complex but dtype=float64 is real"),
    (lambda: batch_norm_operator((2, 3), [0.0, 1j], [1.0, 1.0]), TypeError,
     "running_mean must be real"),
    (lambda: batch_norm_operator((2, 3), [0.0, 0.0], [1.0, 1.0], eps="1"), TypeError,
     "eps must be a real number"),
    (lambda: batch_norm_operator((2, 3), [0.0, 0.0], [1.0, 1.0], eps=-1.0), ValueError,
     "eps must be finite and >= 0, got eps=-1.0"),
    (lambda: batch_norm_operator((2, 3), [0.0, 0.0], [1.0, -1.0]), ValueError,
     "running_var must be >= 0; channel 1 has -1.0"),
    (lambda: batch_norm_operator((2, 3), [0.0, 0.0], [0.0, 1.0], eps=0.0), ValueError,
     "running_var \\+ eps must be > 0; channel 0"),
    # separable generator
    (lambda: kron_matrix("ab"), TypeError, "factors must be a sequence of 2-D matrices"),
    (lambda: kron_matrix([]), ValueError, r"factors=\[\] is empty"),
    (lambda: kron_matrix([np.array([["a"]])]), TypeError, r"factors\[0\] must be numeric"),
    (lambda: kron_matrix([np.ones(3)]), ValueError, r"factors\[0\] must be 2-D, got shape \(3,\)"),
    (lambda: kron_matrix([np.ones((2, 2))], dtype="float16"), TypeError,
     "dtype=float16 is not supported"),
    (lambda: kron_matrix([np.ones((2, 2))], dtype="nonsense"), TypeError,
     "dtype='nonsense' is not a dtype"),
    (lambda: kron_matrix([np.ones((2, 2)) * 1j], dtype="float64"), TypeError,
     r"factors\[0\] is complex \(complex128\) but dtype=float64 is real"),
    (lambda: kron_matrix([np.ones((2, 2))], 1.0), TypeError, "channels must be an int"),
    (lambda: kron_matrix([np.ones((2, 2))], 0), ValueError, "channels must be >= 1, got "
     "channels=0"),
    (lambda: kron_operator([np.ones((2, 2))], name=3), TypeError, "name must be a str"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_errors_name_parameter_rule_and_value(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
