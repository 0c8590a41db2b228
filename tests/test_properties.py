"""Hypothesis properties: adjointness, linearity, nnz, shape round trips, W_t = W.T.

Each runs on every backend (see ``backends.py``): the data is drawn with NumPy, moved to
the backend, and the results are checked on the host.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import convmat

from backends import device, host, on_backends
from backends import eps as _eps
from strategies import DTYPES, cases, random_array


@on_backends
@given(case=cases(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_adjointness(xp, case, dtype, seed):
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype)
    op = convmat.ConvOperator(device(xp, w), case.input_shape, **case.options)
    x = random_array(rng, op.input_shape, dtype)
    y = random_array(rng, op.output_shape, dtype)
    wx = host(op @ device(xp, x))
    wh_y = host(op.H @ device(xp, y))
    assert wh_y.shape == x.shape and wx.shape == y.shape
    lhs = np.vdot(y, wx)   # <Wx, y> = y^H W x
    rhs = np.vdot(wh_y, x)  # <x, W^H y>
    # each inner product sums nnz products: allow a modest multiple of eps per term
    bound = 8 * np.sqrt(op.nnz + 1) * _eps(dtype) * np.linalg.norm(wx) * np.linalg.norm(y) \
        + 8 * np.sqrt(op.nnz + 1) * _eps(dtype) * np.linalg.norm(wh_y) * np.linalg.norm(x)
    assert abs(lhs - rhs) <= bound + np.finfo(np.float32).tiny


@on_backends
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_linearity(xp, case, seed):
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, "float64")
    op = convmat.ConvOperator(device(xp, w), case.input_shape, **case.options)
    x1, x2 = rng.standard_normal((2, *op.input_shape))
    a, b = rng.standard_normal(2)
    lhs = host(op @ device(xp, a * x1 + b * x2))
    rhs = a * host(op @ device(xp, x1)) + b * host(op @ device(xp, x2))
    scale = np.abs(host(op.matrix)).sum(axis=1).max() * (abs(a) * np.abs(x1).max()
                                                         + abs(b) * np.abs(x2).max())
    np.testing.assert_allclose(lhs.ravel(), rhs.ravel(), rtol=0,
                               atol=16 * _eps("float64") * max(scale, 1e-300))


@on_backends
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_nnz_matches_geometry_prediction(xp, case, seed):
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64")
    g = convmat.conv_geometry(w, case.input_shape, **case.options)
    W = convmat.conv_matrix(device(xp, w), case.input_shape, **case.options)
    assert convmat.backend.array_namespace(W) is xp
    W = host(W)
    assert W.nnz == g.nnz
    assert W.shape == g.shape
    assert W.indices.dtype == g.index_dtype
    assert W.data.nbytes + W.indices.nbytes + W.indptr.nbytes == g.nbytes
    # structural pattern: every stored entry is a (possibly folded) tap; explicit zeros
    # only where the weight itself has zeros
    W.check_format(full_check=True)


@on_backends
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_conv_then_transpose_restores_shape(xp, case, seed):
    rng = np.random.default_rng(seed)
    w = device(xp, random_array(rng, case.weight_shape, "float64"))
    x = device(xp, rng.standard_normal((3, *case.input_shape)))
    y = convmat.conv(x, w, **case.options)
    out = convmat.output_shape(w, case.input_shape, **case.options)
    assert y.shape == (3, *out)
    # the transposed conv with output_size = the conv input size restores it
    back = convmat.conv_transpose(y, w, output_size=x.shape[2:], **case.options)
    assert back.shape == x.shape
    # unbatched form too
    assert convmat.conv_transpose(y[0], w, output_size=x.shape[2:], **case.options).shape \
        == x.shape[1:]


@on_backends
@given(case=cases(transposed=True), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1))
def test_transposed_matrix_is_transpose_of_conv(xp, case, dtype, seed):
    w = random_array(np.random.default_rng(seed), case.weight_shape, dtype)
    Wt = convmat.conv_transpose_matrix(device(xp, w), case.input_shape, **case.options)
    assert convmat.backend.array_namespace(Wt) is xp
    Wt = host(Wt)
    Wt.check_format(full_check=True)
    assert Wt.has_canonical_format and Wt.dtype == np.dtype(dtype)
    g = convmat.conv_transpose_geometry(w, case.input_shape, **case.options)
    conv_opts = {k: v for k, v in case.options.items() if k != "output_padding"}
    out_shape = g.output_shape
    Wc = convmat.conv_matrix(w, out_shape, **conv_opts)
    rows = int(np.prod(case.input_shape))
    # output_padding >= stride (possible with dilation) keeps only the first conv outputs
    sel = np.asarray(_kept_rows(Wc.shape[0] // case.input_shape[0], case, g))
    Wc_kept = Wc[np.concatenate([c * (Wc.shape[0] // case.input_shape[0]) + sel
                                 for c in range(case.input_shape[0])])] if sel.size != \
        Wc.shape[0] // case.input_shape[0] else Wc
    assert Wc_kept.shape == (rows, Wt.shape[0])
    assert (Wt != Wc_kept.T).nnz == 0
    assert Wt.nnz == g.nnz


def _kept_rows(per_channel, case, g):
    natural = convmat.output_shape(case.weight_shape, g.output_shape,
                                   **{k: v for k, v in case.options.items()
                                      if k != "output_padding"})[1:]
    kept = case.input_shape[1:]
    grid = np.arange(per_channel).reshape(natural)
    return grid[tuple(slice(0, k) for k in kept)].ravel()
