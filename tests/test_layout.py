"""Channels-last data: ``layout='channels_last'`` against channels first, NumPy and PyTorch.

A channels-last input or output is ``(*spatial, C)`` (batches ``(N, *spatial, C)``), the
weight is Keras': ``(*kernel, C_in // groups, C_out)``, and for a transposed convolution
``(*kernel, C_out // groups, C_in)``. The matrix must be the channels-first one with rows
and columns permuted (index ``(c, p)`` becomes ``p*C + c``): checked entry by entry
against a permutation computed here from the raw arrays, canonical CSR recomputed; the
operator against the naive reference applied to transposed data; ``conv`` against PyTorch
on permuted tensors. The one-channel shorthand has no channel axis: both layouts give the
same matrix.
"""

import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import convmat
import convmat.geometry as geo
import convmat.indices as ind
from convmat import ConvOperator

from reference import assert_canonical_csr, assert_close, case_adjoint, case_apply
from strategies import DTYPES, cases, make_case, random_array

SEEDS = st.integers(0, 2**32 - 1)
TORCH_MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------- helpers


def keras_weight(case, w):
    """PyTorch's ``(A, B, *k)`` weight as Keras' ``(*k, B, A)`` (the shorthand unchanged)."""
    if case.shorthand:
        return w
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def last_shape(shape, shorthand):
    """``(C, *spatial)`` as ``(*spatial, C)`` (a spatial-only shape unchanged)."""
    return tuple(shape) if shorthand else (*shape[1:], shape[0])


def last_options(case):
    """The case's options, channels last (an ``output_size`` with channels moved too)."""
    options = dict(case.options, layout="channels_last")
    size = options.get("output_size")
    if size is not None and len(size) == case.ndim + 1:
        options["output_size"] = (*size[1:], size[0])
    return options


def first_to_last(x, batched, shorthand):
    """Move the channel axis (0, or 1 in a batch) to the end."""
    return x if shorthand else np.moveaxis(x, 1 if batched else 0, -1)


def last_to_first(x, batched, shorthand):
    """Move the last (channel) axis to position 0 (1 in a batch)."""
    return x if shorthand else np.moveaxis(x, -1, 1 if batched else 0)


def first_to_last_order(shape):
    """``perm`` with ``x_last.ravel() == x_first.ravel()[perm]`` for ``x`` of ``shape``
    ``(C, *spatial)``: channels-last index ``p*C + c`` holds channels-first ``c*P + p``."""
    c, p = shape[0], math.prod(shape[1:])
    return np.arange(c * p).reshape(c, p).T.ravel()


def permuted_csr(W, row_perm, col_perm):
    """Canonical ``(indptr, indices, data)`` of ``W[row_perm][:, col_perm]``, from the raw
    arrays: entry ``(r, c)`` moves to ``(inv_row[r], inv_col[c])``, sorted row-major."""
    indptr = np.asarray(W.indptr).astype(np.int64)
    rows = np.repeat(np.arange(W.shape[0]), np.diff(indptr))
    inv_row, inv_col = np.argsort(row_perm), np.argsort(col_perm)
    new_rows, new_cols = inv_row[rows], inv_col[np.asarray(W.indices)]
    order = np.lexsort((new_cols, new_rows))
    counts = np.bincount(new_rows, minlength=W.shape[0])
    return (np.concatenate([[0], np.cumsum(counts)]), new_cols[order],
            np.asarray(W.data)[order])


def builders(case):
    if case.transposed:
        return convmat.conv_transpose_matrix, ConvOperator.transposed, convmat.conv_transpose
    return convmat.conv_matrix, ConvOperator, convmat.conv


# --------------------------------------------------------------------------- the matrix


@given(data=st.data(), transposed=st.booleans(), dtype=st.sampled_from(DTYPES), seed=SEEDS)
@example(data=None, transposed=False, dtype="float64", seed=0)
def test_matrix_is_the_permuted_channels_first_matrix(data, transposed, dtype, seed):
    """``W_last`` == ``W_first`` with rows and columns permuted, entry by entry (explicit
    zeros included), canonical CSR recomputed; the geometry's shapes follow the layout."""
    case = (make_case((4, 3, 3, 2), (6, 5, 4), groups=2, stride=(2, 1), padding=((1, 2), 1),
                      padding_mode="reflect") if data is None
            else data.draw(cases(transposed=transposed)))
    w = random_array(np.random.default_rng(seed), case.weight_shape, dtype)
    build = builders(case)[0]
    geometry = convmat.conv_transpose_geometry if case.transposed else convmat.conv_geometry
    first = build(w, case.input_shape, **case.options)
    wl, shape_l = keras_weight(case, w), last_shape(case.input_shape, case.shorthand)
    g = geometry(wl, shape_l, **{k: v for k, v in last_options(case).items()
                                 if k != "max_bytes"})
    assert g.weight_shape == wl.shape and g.input_shape == shape_l
    assert g.output_shape == last_shape(case.output_shape, case.shorthand)
    last = build(wl, shape_l, **last_options(case))
    assert_canonical_csr(last)
    assert last.shape == first.shape and last.nnz == g.nnz == first.nnz
    assert last.dtype == first.dtype and last.indices.dtype == g.index_dtype
    if case.shorthand:
        rows, cols = np.arange(first.shape[0]), np.arange(first.shape[1])
    else:
        out_first = (g.output_shape[-1], *g.output_shape[:-1])
        rows = first_to_last_order(out_first)
        cols = first_to_last_order(case.input_shape)
    indptr, indices, values = permuted_csr(first, rows, cols)
    np.testing.assert_array_equal(np.asarray(last.indptr), indptr)
    np.testing.assert_array_equal(np.asarray(last.indices), indices)
    np.testing.assert_array_equal(np.asarray(last.data), values)


@given(case=cases(shorthand=False), seed=SEEDS)
def test_pieces_slabs_and_threads_give_the_same_matrix(case, seed):
    """Built in many pieces (one plane each), slabs of 3 entries, on threads: same CSR."""
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64")
    wl, shape_l = keras_weight(case, w), last_shape(case.input_shape, False)
    options = {k: v for k, v in last_options(case).items() if k != "max_bytes"}
    whole = convmat.conv_matrix(wl, shape_l, **options)
    with mock.patch.object(geo, "LAYOUT_PIECE_ENTRIES", 1), \
            mock.patch.object(geo, "LAYOUT_PIECES", 10**9), \
            mock.patch.object(ind, "LAYOUT_BLOCK", 3), \
            mock.patch.object(ind, "THREADED_MIN_NNZ", 0):
        g = convmat.conv_geometry(wl, shape_l, **options)
        pieces = g.layout_pieces if g.permuted else ()
        assert all(q1 == q0 + 1 or g.plane_offset(q1) - g.plane_offset(q0) <= 1
                   for q0, q1 in pieces)
        built = convmat.conv_matrix(wl, shape_l, **options)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(built, name), getattr(whole, name))


def test_one_channel_each_way_is_not_permuted():
    """With one input and one output channel both orders are the same: nothing moves."""
    g = convmat.conv_geometry((3, 3, 1, 1), (8, 8, 1), layout="channels_last")
    assert not g.permuted and g.layout_bytes == 0
    g = convmat.conv_geometry((3, 3, 1, 2), (8, 8, 1), layout="channels_last")
    assert g.permuted and g.layout_bytes > 0 and g.peak_bytes > g.nbytes + g.workspace_bytes


# --------------------------------------------------------------------------- the operator


@given(data=st.data(), transposed=st.booleans(), seed=SEEDS)
def test_operator_against_the_reference(data, transposed, seed):
    """``op @ x`` (one sample and batches), ``op.T``, ``op.H``, ``adjoint_csr``, ``conv``
    and ``with_weight`` channels last == the naive reference on transposed data."""
    case = data.draw(cases(transposed=transposed))
    rng = np.random.default_rng(seed)
    w = rng.integers(-4, 5, size=case.weight_shape).astype(np.float64)
    wl, short = keras_weight(case, w), case.shorthand
    _, make, apply = builders(case)
    options = last_options(case)
    op = make(wl, last_shape(case.input_shape, short), **options)
    assert op.input_shape == last_shape(case.input_shape, short)
    assert op.output_shape == last_shape(case.output_shape, short)

    x = rng.integers(-4, 5, size=(2, *case.full_input_shape)).astype(np.float64)
    ref = np.stack([case_apply(case, w, xi) for xi in x])  # (2, C, *out)
    if short:
        x, ref = x[:, 0], ref[:, 0]
    xl, refl = first_to_last(x, True, short), first_to_last(ref, True, short)
    np.testing.assert_array_equal(op @ xl, refl)
    np.testing.assert_array_equal(op @ xl[0], refl[0])
    np.testing.assert_array_equal(op.matrix @ xl[1].ravel(), refl[1].ravel())
    if not short:  # the functional form (channel axes needed)
        np.testing.assert_array_equal(apply(xl, wl, **options), refl)
        np.testing.assert_array_equal(apply(xl[0], wl, **options), refl[0])
    np.testing.assert_array_equal(xl, first_to_last(x, True, short))  # inputs unmutated

    y = rng.integers(-4, 5, size=(2, *op.output_shape)).astype(np.float64)
    y_first = last_to_first(y, True, short)
    if short:
        y_first = y_first[:, None]
    back = np.stack([case_adjoint(case, w, yi) for yi in y_first])
    back = back[:, 0] if short else back
    np.testing.assert_array_equal(op.T @ y, first_to_last(back, True, short))
    np.testing.assert_array_equal(op.H @ y[0], first_to_last(back, True, short)[0])
    wh = op.adjoint_csr()
    assert_canonical_csr(wh)
    np.testing.assert_array_equal(wh.toarray(), op.matrix.toarray().T)

    w2 = rng.integers(-4, 5, size=case.weight_shape).astype(np.float64)
    swapped = op.with_weight(keras_weight(case, w2))
    fresh = make(keras_weight(case, w2), last_shape(case.input_shape, short), **options)
    np.testing.assert_array_equal(swapped.matrix.toarray(), fresh.matrix.toarray())
    np.testing.assert_array_equal(swapped @ xl, fresh @ xl)


def test_bias_broadcasts_over_the_last_axis():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 3, 2, 4))
    b = np.array([1.0, -2.0, 3.0, 0.5])
    op = ConvOperator(w, (6, 5, 2), padding=1, bias=b, layout="channels_last")
    x = rng.standard_normal((6, 5, 2))
    np.testing.assert_allclose(op(x), op @ x + b, rtol=0, atol=0)
    opt = ConvOperator.transposed(w, (6, 5, 4), padding=1, bias=b[:2],
                                  layout="channels_last")
    y = rng.standard_normal((6, 5, 4))
    np.testing.assert_allclose(opt(y), opt @ y + b[:2], rtol=0, atol=0)
    assert "channels_last" in op.describe() and "channels_last" in op._repr_html_()


# --------------------------------------------------------------------------- PyTorch


def _torch_first(case, w, x):
    """PyTorch on channels-first tensors: pad then convolve (conv), or conv_transpose."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    D = case.ndim
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    if case.transposed:
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[D]
        return fn(xt, wt, stride=case.stride, padding=tuple(lo for lo, _ in case.pads),
                  output_padding=case.output_padding, dilation=case.dilation,
                  groups=case.groups).numpy()
    flat = [v for pair in reversed(case.pads) for v in pair]
    mode = "constant" if case.mode == "zeros" else case.mode
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[D]
    return fn(F.pad(xt, flat, mode=mode), wt, stride=case.stride, dilation=case.dilation,
              groups=case.groups).numpy()


@given(case=st.one_of(cases(max_ndim=3, modes=TORCH_MODES, shorthand=False),
                      cases(transposed=True, max_ndim=3, modes=("zeros",), symmetric=True,
                            shorthand=False)),
       dtype=st.sampled_from(("float32", "float64")), seed=SEEDS)
def test_conv_matches_torch_on_permuted_tensors(case, dtype, seed):
    """``conv(x_last, w_keras, layout='channels_last')`` == PyTorch on ``x`` permuted to
    channels first, permuted back."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(case.weight_shape).astype(dtype)
    x = rng.standard_normal((2, *case.input_shape)).astype(dtype)
    xl = first_to_last(x, True, False)
    apply = builders(case)[2]
    got = apply(xl, keras_weight(case, w), **last_options(case))
    expected = first_to_last(_torch_first(case, w, x), True, False)
    scale = first_to_last(_torch_first(case, np.abs(w).astype(np.float64),
                                       np.abs(x).astype(np.float64)), True, False)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_close(got, expected, scale, case.terms, dtype)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("layout", ["NHWC", None, "channels-last"])
def test_unknown_layout(layout):
    with pytest.raises(ValueError, match=rf"layout={layout!r} is not one of 'channels_first', "
                                         r"'channels_last'"):
        convmat.conv_matrix(np.ones((3, 3, 2, 4)), (8, 8, 2), layout=layout)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: convmat.conv_matrix(np.ones((3, 3, 2, 4)), (8, 8, 3),
                                     layout="channels_last"),
         r"weight.shape\[-2\]=2 times groups=1 must equal input channels input_shape\[-1\]=3"),
        (lambda: convmat.conv_transpose_matrix(np.ones((3, 3, 2, 4)), (8, 8, 3),
                                               layout="channels_last"),
         r"weight.shape\[-1\]=4 \(transposed-conv input channels\) must equal "
         r"input_shape\[-1\]=3"),
        (lambda: convmat.conv_matrix(np.ones((1, 3, 3, 2, 4)), (8, 8, 2),
                                     layout="channels_last"),
         r"expected ndim 4 \(\*kernel, C_in//groups, C_out\) for input \(\*spatial, C\)"),
        (lambda: convmat.conv_transpose_matrix(np.ones((3, 3)), (8, 8, 2, 1),
                                               layout="channels_last"),
         r"expected ndim 5 \(\*kernel, C_out//groups, C_in\) for input \(\*spatial, C\)"),
        (lambda: convmat.conv(np.ones((2, 8, 8, 2, 1)), np.ones((3, 3, 2, 4)),
                              layout="channels_last"),
         r"x.ndim=5 .* expected \(\*spatial, C\) with ndim 3 or \(N, \*spatial, C\) with "
         r"ndim 4"),
        (lambda: convmat.conv(np.ones((8, 2)), np.ones((3, 2)), layout="channels_last"),
         r"weight.ndim=2: the functional form takes Keras' layout \(\*kernel, in // groups, "
         r"out\)"),
        (lambda: convmat.conv_transpose_matrix(np.ones((3, 3, 2, 4)), (8, 8, 4),
                                               output_size=(1, 2, 17, 17, 2),
                                               layout="channels_last"),
         r"output_size=\(1, 2, 17, 17, 2\) must give the 2 spatial sizes \(optionally "
         r"followed by channels, or preceded by batch and followed by channels\)"),
        (lambda: ConvOperator(np.ones((3, 3, 2, 4)), (8, 8, 2),
                              layout="channels_last").with_weight(np.ones((4, 2, 3, 3))),
         r"weight of shape \(4, 2, 3, 3\) does not fit this operator: expected \(3, 3, 2, 4\)"),
        (lambda: ConvOperator(np.ones((3, 3, 2, 4)), (8, 8, 2), bias=np.ones(2),
                              layout="channels_last"),
         r"bias of shape \(2,\) does not fit: expected \(4,\)"),
    ],
)
def test_layout_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_output_size_channels_last():
    """``output_size`` channels last: spatial, ``(*spatial, C)`` or ``(N, *spatial, C)``."""
    w = np.ones((3, 3, 2, 4))
    for size in [(16, 15), (16, 15, 2), (5, 16, 15, 2)]:
        g = convmat.conv_transpose_geometry(w, (8, 8, 4), stride=2, padding=1,
                                            output_size=size, layout="channels_last")
        assert g.output_shape == (16, 15, 2) and g.output_padding == (1, 0)


def test_gradient_regularizer_follows_the_layout():
    """``regularizer='gradient'`` differentiates the spatial axes of a channels-last input:
    the solve equals the channels-first one, transposed."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 6, 2))
    last = convmat.gradient_operator((5, 6, 2), layout="channels_last")
    first = convmat.gradient_operator((2, 5, 6))
    assert last.input_shape == (5, 6, 2) and last.output_shape == (5, 6, 4)
    np.testing.assert_array_equal(last @ x, np.moveaxis(first @ np.moveaxis(x, -1, 0), 0, -1))
    w = rng.standard_normal((3, 3, 2, 2))  # Keras (*kernel, in, out)
    op = convmat.ConvOperator(w, (5, 6, 2), padding=1, layout="channels_last")
    op_first = convmat.ConvOperator(np.moveaxis(w, (2, 3), (1, 0)), (2, 5, 6), padding=1)
    y = op @ x
    tol = dict(regularizer="gradient", lam=0.1, atol=1e-12, btol=1e-12)
    got = convmat.deconvolve(y, op, **tol).x
    ref = convmat.deconvolve(np.moveaxis(y, -1, 0), op_first, **tol).x
    # two runs of LSQR to 1e-12 on a system of condition ~10: agree to ~1e-10 relative
    np.testing.assert_allclose(got, np.moveaxis(ref, 0, -1), rtol=0,
                               atol=1e-9 * np.abs(ref).max())


def test_viz_reads_channels_last_shapes():
    """footprint draws the channels of a channels-last operator from its last axis; the
    pattern plots label no channel blocks (channels interleave)."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from convmat import viz

    rng = np.random.default_rng(12)
    w = rng.standard_normal((3, 3, 2, 3))  # Keras (*kernel, in, out)
    op = convmat.ConvOperator(w, (6, 5, 2), padding=1, layout="channels_last")
    first = convmat.ConvOperator(np.moveaxis(w, (2, 3), (1, 0)), (2, 6, 5), padding=1)
    assert viz.block_boundaries(op) == {"row_channels": [], "col_channels": [],
                                        "row_groups": [], "col_groups": []}
    fig = viz.footprint(op, output_index=(2, 3, 1))
    ref = viz.receptive_field(first, (1, 2, 3))  # the same output, channels first
    panels = [ax.images[0].get_array() for ax in fig.axes]
    assert len(panels) == 2
    for c, panel in enumerate(panels):
        np.testing.assert_array_equal(panel.filled(0), ref[c])
    viz.spy(op)
