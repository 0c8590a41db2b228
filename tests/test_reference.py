"""W equals the naive loop reference exactly (float64, integer-valued weights)."""

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import convmat

from backends import device, host, on_backends
from reference import conv_matrix_reference, conv_reference, trans_conv_reference
from strategies import Case, cases, random_array, work


def _reference_W(case, w):
    if not case.transposed:
        return conv_matrix_reference(w, case.input_shape, case.options["stride"], case.pads,
                                     case.options["dilation"], case.options["groups"],
                                     case.options["padding_mode"])[0]
    # transposed: W_t[:, j] is the scatter of the j-th basis vector
    cols = int(np.prod(case.input_shape))
    columns = []
    for j in range(cols):
        e = np.zeros(cols)
        e[j] = 1.0
        y = trans_conv_reference(e.reshape(case.input_shape), w, case.options["stride"],
                                 case.pads, case.options["dilation"], case.options["groups"],
                                 case.options["padding_mode"], case.output_padding)
        columns.append(y.ravel())
    return np.stack(columns, axis=1)


def _build(case, w, xp=np):
    """The matrix built on backend ``xp``, on the host."""
    build = convmat.conv_transpose_matrix if case.transposed else convmat.conv_matrix
    W = build(device(xp, w), case.input_shape, **case.options)
    assert convmat.backend.array_namespace(W) is xp and W.format == "csr"
    assert W.has_canonical_format  # the builder's flag, set on either backend
    return host(W)


@given(case=cases(), seed=st.integers(0, 2**32 - 1))
@example(case=Case((1, 1, 3), (1, 3), dict(stride=(1,), padding=((2, 2),), dilation=(1,),
                                          groups=1, padding_mode="reflect"), [(2, 2)]), seed=0)
@example(case=Case((1, 1, 3), (1, 1), dict(stride=(1,), padding=((1, 1),), dilation=(1,),
                                          groups=1, padding_mode="replicate"), [(1, 1)]), seed=0)
@on_backends
def test_conv_matrix_equals_reference(xp, case, seed):
    assume(work(case) < 200_000)
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64", integer=True)
    W = _build(case, w, xp)
    W.check_format(full_check=True)
    assert W.has_canonical_format
    ref = _reference_W(case, w)
    assert W.shape == ref.shape
    np.testing.assert_array_equal(W.toarray(), ref)


@on_backends
@given(case=cases(transposed=True), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_matrix_equals_scatter_reference(xp, case, seed):
    assume(work(case) < 100_000)
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64", integer=True)
    W = _build(case, w, xp)
    W.check_format(full_check=True)
    ref = _reference_W(case, w)
    assert W.shape == ref.shape
    np.testing.assert_array_equal(W.toarray(), ref)


@on_backends
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_conv_of_x_equals_reference(xp, case, seed):
    assume(work(case) < 200_000)
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, "float64")
    x = rng.standard_normal((2, *case.input_shape))
    y = host(convmat.conv(device(xp, x), device(xp, w), **case.options))
    for i in range(2):
        ref = conv_reference(x[i], w, case.options["stride"], case.pads,
                             case.options["dilation"], case.options["groups"],
                             case.options["padding_mode"])
        assert y[i].shape == ref.shape
        scale = np.abs(w).sum() * np.abs(x[i]).max()
        np.testing.assert_allclose(y[i], ref, rtol=0, atol=64 * np.finfo(float).eps * scale)


@on_backends
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_padding_modes_all_ranks(xp, mode, ndim):
    """Fixed cases, including 4 spatial axes, against the loop reference."""
    rng = np.random.default_rng(ndim)
    k = (3, 2, 3, 2)[:ndim]
    n = (5, 4, 3, 3)[:ndim]
    pads = [(2, 1), (1, 1), (1, 2), (0, 1)][:ndim]
    w = rng.integers(-3, 4, size=(2, 1, *k)).astype(float)
    W = host(convmat.conv_matrix(device(xp, w), (2, *n), padding=pads, groups=2,
                                 padding_mode=mode, stride=(1, 2, 1, 2)[:ndim]))
    ref, _ = conv_matrix_reference(w, (2, *n), (1, 2, 1, 2)[:ndim], pads, (1,) * ndim, 2, mode)
    W.check_format(full_check=True)
    np.testing.assert_array_equal(W.toarray(), ref)


def test_all_padding_positions_empty_rows():
    """Padding wider than the kernel span gives rows with no entries (zeros mode)."""
    w = np.array([1.0, 2.0])
    W = convmat.conv_matrix(w, (3,), padding=4)
    ref, _ = conv_matrix_reference(w[None, None], (1, 3), (1,), [(4, 4)], (1,), 1, "zeros")
    np.testing.assert_array_equal(W.toarray(), ref)
    assert (np.diff(W.indptr) == 0).sum() == 6


def _stress():
    """Builder knobs set so that small cases take every path: blocks, slabs, threads."""
    from unittest import mock

    import convmat.indices as ind

    return mock.patch.multiple(ind, TASK_ENTRIES=7, THREADED_MIN_NNZ=0, BLOCKED_ROW=5,
                               SHORT_ROW=64)


@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_blocked_sliced_threaded_build_equals_reference(case, seed):
    assume(work(case) < 200_000)
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64", integer=True)
    with _stress():
        W = _build(case, w)
    W.check_format(full_check=True)
    np.testing.assert_array_equal(W.toarray(), _reference_W(case, w))


@pytest.mark.parametrize(
    "weight_shape, input_shape, options",
    [
        ((1, 1, 3), (1, 700), dict(padding=1)),
        ((2, 1, 5), (2, 600), dict(padding=((3, 1),), stride=2, groups=2, padding_mode="reflect")),
        ((1, 1, 3, 3), (1, 12, 300), dict(padding=1, padding_mode="circular")),
        ((1, 1, 2, 3), (1, 9, 260), dict(padding=((0, 1), (2, 0)), dilation=(1, 3),
                                         padding_mode="replicate")),
    ],
)
@on_backends
def test_long_rows_use_blocks_and_equal_reference(xp, weight_shape, input_shape, options):
    """Default knobs on lines long enough for the blocked path (rows of < 64 entries)."""
    import convmat.indices as ind

    w = random_array(np.random.default_rng(7), weight_shape, "float64", integer=True)
    g = convmat.conv_geometry(w, input_shape, **options)
    interior = max(g.axis_plans[-1].runs, key=lambda r: r.size)
    span = ind._Span(interior, 0, interior.size, 1)
    assert ind._last_axis_spans(span, 9)[0].block > 1  # the blocked path is taken
    W = host(convmat.conv_matrix(device(xp, w), input_shape, **options))
    ref, _ = conv_matrix_reference(w, input_shape, g.stride, g.padding, g.dilation, g.groups,
                                   g.padding_mode)
    W.check_format(full_check=True)
    np.testing.assert_array_equal(W.toarray(), ref)


@given(case=cases(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_plane_window_build_equals_rows_of_W(case, seed, data):
    """A distributed build's share: the rows of a range of output planes, indptr from 0."""
    import scipy.sparse as sp

    from convmat.indices import build_csr_arrays

    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64")
    g = convmat.conv_geometry(w, case.input_shape, **case.options)
    W = convmat.conv_matrix(w, case.input_shape, **case.options)
    planes = g.out_channels * g.output_size[0]
    q0 = data.draw(st.integers(0, planes - 1))
    q1 = data.draw(st.integers(q0 + 1, planes))
    rows = int(np.prod(g.output_size[1:]))
    with _stress():
        d, i, p = build_csr_arrays(g, w, np, planes=(q0, q1))
    local = sp.csr_array((d, i, p), shape=((q1 - q0) * rows, W.shape[1]))
    local.check_format(full_check=True)
    expected = W[q0 * rows:q1 * rows]
    np.testing.assert_array_equal(local.indptr, expected.indptr)
    np.testing.assert_array_equal(local.indices, expected.indices)
    np.testing.assert_array_equal(local.data, expected.data)
