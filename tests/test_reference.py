"""W equals the naive loop reference: every value, the stored pattern, canonical CSR.

Integer-valued weights make every sum exact, in any dtype, so matrices are compared for
equality; products with real-valued data are compared within a bound derived from the
dtype's eps and ``sum |w| |x|`` of each output (``reference.assert_close``).
"""

import math
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import event, example, given
from hypothesis import strategies as st

import convmat
import convmat.indices as ind

from backends import device, host, on_backends
from reference import (
    assert_canonical_csr,
    assert_close,
    assert_matrix_equals,
    case_apply,
    case_entries,
    conv_entries,
    conv_matrix_reference,
)
from strategies import DTYPES, cases, make_case, random_array

SEEDS = st.integers(0, 2**32 - 1)


def _builder(case):
    if case.transposed:
        return convmat.conv_transpose_matrix, convmat.conv_transpose_geometry
    return convmat.conv_matrix, convmat.conv_geometry


def _build(case, w, xp=np):
    """The matrix of ``case`` built on backend ``xp``, on the host.

    When ``case`` draws ``max_bytes``, ``ConvGeometry.peak_bytes`` decides: below it the
    build must raise ``ConvMatrixTooLarge`` naming nnz and bytes (then None is returned);
    and the decision must agree with the bounds the strategy computed from the shapes.
    """
    build, geometry = _builder(case)
    g = geometry(w, case.input_shape, **case.geometry_options)
    refused = case.max_bytes is not None and case.max_bytes < g.peak_bytes
    if case.refuse is not None:
        assert refused == case.refuse, (case.max_bytes, g.peak_bytes, case.bytes_bounds())
    if refused:
        event("max_bytes refused the build")
        with pytest.raises(convmat.ConvMatrixTooLarge,
                           match=rf"nnz={g.nnz:,} needs {g.peak_bytes:,} bytes"):
            build(device(xp, w), case.input_shape, **case.options)
        return None
    W = build(device(xp, w), case.input_shape, **case.options)
    assert convmat.backend.array_namespace(W) is xp and W.format == "csr"
    W = host(W)
    assert W.dtype == w.dtype
    assert W.nnz == g.nnz and W.shape == g.shape
    return W


def _check_matrix(xp, case, dtype, seed):
    w = random_array(np.random.default_rng(seed), case.weight_shape, dtype, integer=True)
    w0 = w.copy()
    W = _build(case, w, xp)
    np.testing.assert_array_equal(w, w0)  # the weight is not mutated
    if W is not None:
        entries, shape, _ = case_entries(case, w)
        assert_matrix_equals(W, entries, shape)


@given(case=cases(refusals=True), dtype=st.sampled_from(DTYPES), seed=SEEDS)
@example(case=make_case((1, 1, 3), (1, 3), padding=((2, 2),), padding_mode="reflect"),
         dtype="float64", seed=0)
@example(case=make_case((1, 1, 3), (1, 1), padding=((1, 1),), padding_mode="replicate"),
         dtype="float64", seed=0)
@example(case=make_case((3,), (1,), padding=3, padding_mode="replicate"),  # shorthand
         dtype="complex64", seed=0)
@example(case=make_case((1, 1, 1, 1, 1, 1), (1, 2, 1, 2, 1), padding=1, stride=2,
                        padding_mode="circular", max_bytes=5), dtype="float32", seed=0)
@on_backends
def test_conv_matrix_equals_reference(xp, case, dtype, seed):
    _check_matrix(xp, case, dtype, seed)


@given(case=cases(transposed=True, refusals=True), dtype=st.sampled_from(DTYPES), seed=SEEDS)
@example(case=make_case((2, 1, 3), (2, 4), transposed=True, stride=1, padding=1, groups=2,
                        output_size=(4,)),  # written directly as a convolution (adjoint)
         dtype="complex128", seed=0)
@example(case=make_case((1, 1, 2), (1, 3), transposed=True, stride=1, dilation=3,
                        output_padding=2, padding_mode="reflect", padding=1),
         dtype="float64", seed=0)
@on_backends
def test_conv_transpose_matrix_equals_scatter_reference(xp, case, dtype, seed):
    _check_matrix(xp, case, dtype, seed)


def _apply(case, w, x, xp):
    """convmat's functional form (or, for the shorthand, ``ConvOperator``) on a batch."""
    if case.shorthand:
        make = convmat.ConvOperator.transposed if case.transposed else convmat.ConvOperator
        op = make(device(xp, w), case.input_shape, **case.options)
        return host(op @ device(xp, x[:, 0]))[:, None]
    apply = convmat.conv_transpose if case.transposed else convmat.conv
    return host(apply(device(xp, x), device(xp, w), **case.options))


@on_backends
@given(case=st.one_of(cases(), cases(transposed=True)), dtype=st.sampled_from(DTYPES),
       integer=st.booleans(), seed=SEEDS)
def test_product_equals_reference(xp, case, dtype, integer, seed):
    """``conv`` / ``conv_transpose`` of a batch against the gather / scatter loops."""
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype, integer=integer)
    x = random_array(rng, (2, *case.full_input_shape), dtype, integer=integer)
    x0 = x.copy()
    y = _apply(case, w, x, xp)
    np.testing.assert_array_equal(x, x0)  # the input is not mutated
    assert y.dtype == np.dtype(dtype)
    for i in range(2):
        ref = case_apply(case, w.astype(np.complex128), x[i].astype(np.complex128))
        scale = case_apply(case, np.abs(w).astype(np.float64), np.abs(x[i]).astype(np.float64))
        assert_close(y[i], ref, scale.real, case.terms, dtype, exact=integer)


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
    entries, shape, _ = conv_entries(w, (2, *n), (1, 2, 1, 2)[:ndim], pads, (1,) * ndim, 2,
                                     mode)
    assert_matrix_equals(W, entries, shape)


def test_all_padding_positions_empty_rows():
    """Padding wider than the kernel span gives rows with no entries (zeros mode)."""
    w = np.array([1.0, 2.0])
    W = convmat.conv_matrix(w, (3,), padding=4)
    ref, _ = conv_matrix_reference(w[None, None], (1, 3), (1,), [(4, 4)], (1,), 1, "zeros")
    np.testing.assert_array_equal(W.toarray(), ref)
    assert (np.diff(W.indptr) == 0).sum() == 6
    assert_canonical_csr(W)


def test_canonical_check_fails_on_unsorted_and_duplicate_indices():
    """The canonical check can fail where SciPy's ``check_format`` and flags do not."""
    ok = sp.csr_array((np.ones(4), np.array([0, 2, 1, 3]), np.array([0, 2, 4])), shape=(2, 4))
    assert_canonical_csr(ok)
    # unsorted in row 0, a duplicate in row 0, a duplicate in the last row
    for indices in [[2, 0, 1, 3], [1, 1, 1, 3], [0, 2, 3, 3]]:
        W = sp.csr_array((np.ones(4), np.array(indices), np.array([0, 2, 4])), shape=(2, 4))
        W.check_format(full_check=True)  # SciPy accepts it
        W.has_canonical_format = True  # and a builder could claim it
        with pytest.raises(AssertionError, match="not strictly increasing"):
            assert_canonical_csr(W)
    bad = sp.csr_array((np.ones(2), np.array([0, 1]), np.array([0, 2, 2])), shape=(2, 4))
    bad.indices[1] = 4  # out of range
    with pytest.raises(AssertionError, match="out of range"):
        assert_canonical_csr(bad)
    bad = sp.csr_array((np.ones(2), np.array([0, 1]), np.array([0, 2, 2])), shape=(2, 4))
    bad.indptr[1] = 3  # not monotone
    with pytest.raises(AssertionError):
        assert_canonical_csr(bad)


# --------------------------------------------------------------------------- builder paths


class _SpySpans:
    """Records every span ``convmat.indices._last_axis_spans`` returns (the blocked path)."""

    def __init__(self):
        self.spans = []
        self.original = ind._last_axis_spans

    def __call__(self, *args, **kwargs):
        spans = self.original(*args, **kwargs)
        self.spans.extend(spans)
        return spans

    @property
    def blocks(self):
        return [s.block for s in self.spans]

    def patch(self):
        return mock.patch.object(ind, "_last_axis_spans", side_effect=self)


class _SpyGroups:
    """Counts the boxes written as groups of short last-axis runs (``_Group.boxes``)."""

    def __init__(self):
        self.calls = 0
        self.original = ind._Group.boxes

    def patch(self):
        spy = self

        def boxes(group, *args, **kwargs):
            spy.calls += 1
            return spy.original(group, *args, **kwargs)

        return mock.patch.object(ind._Group, "boxes", boxes)


def _stress(row_length, grouped):
    """Knobs that send small cases down every path: blocks or groups, slabs, threads.

    Every row counts as short, and a block holds ``2 * row_length`` entries (``row_length``
    the longest row), so rows are written in blocks of at least two wherever a run allows.
    ``grouped``: every run of the last axis is gathered into groups (else none is, so
    every run goes through the blocked path).
    """
    return mock.patch.multiple(ind, TASK_ENTRIES=7, THREADED_MIN_NNZ=0,
                               BLOCKED_ROW=2 * row_length, SHORT_ROW=1 << 40,
                               GROUP_RUN=(1 << 40) if grouped else 0)


def _interior(n, k, s, dl, lo, out):
    """Output positions of an axis whose taps all fall inside the input."""
    first = -(-lo // s)
    last = min((n - 1 + lo - dl * (k - 1)) // s, out - 1)
    return max(0, last - first + 1)


@given(case=cases(), seed=SEEDS, grouped=st.booleans())
@example(case=make_case((1, 1, 2), (1, 9), padding=1), seed=0, grouped=False)
@example(case=make_case((1, 1, 2), (1, 9), padding=1), seed=0, grouped=True)
@example(case=make_case((1, 1, 2, 1, 1, 1), (1, 1, 1, 1, 1), padding=1, dilation=(2, 1, 1, 1)),
         seed=0, grouped=True)  # every row empty: no group to write
def test_blocked_grouped_sliced_threaded_build_equals_reference(case, seed, grouped):
    """Every builder path on small cases, each proven taken where the geometry allows."""
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64", integer=True)
    spans, groups = _SpySpans(), _SpyGroups()
    with _stress(case.row_length, grouped), spans.patch(), groups.patch():
        W = _build(case, w)
    entries, shape, _ = case_entries(case, w)
    assert_matrix_equals(W, entries, shape)
    counts = [_interior(n, k, s, dl, lo, o) for n, k, s, dl, (lo, _), o in zip(
        case.full_input_shape[1:], case.kernel, case.stride, case.dilation, case.pads,
        case.out_size, strict=True)]
    if grouped:
        # every axis reads the input somewhere, and the last has interior and border runs
        if min(counts) >= 1 and counts[-1] < case.out_size[-1]:
            assert groups.calls > 0
            event("group path taken")
    elif min(counts) >= 1 and counts[-1] >= 2:
        # The all-interior box has rows of row_length entries: blocks of 2 fit.
        assert max(spans.blocks, default=1) > 1, (counts, spans.spans)
        event("blocked path taken")


def _last(v):
    return v[-1] if isinstance(v, tuple) else v


def _long_last_axis(weight_shape, lead, options):
    """``(input_shape, row_length, block)``: a last axis whose interior holds 2.5 blocks.

    The interior row length is ``C_in/G * prod(k)``; rows shorter than ``SHORT_ROW`` go in
    blocks of ``BLOCKED_ROW // row_length``, so the interior needs at least that many
    positions (plus some, for a remainder).
    """
    c_in = lead[0]
    groups = options.get("groups", 1)
    k = weight_shape[2:]
    row_length = c_in // groups * math.prod(k)
    assert row_length < ind.SHORT_ROW
    block = ind.BLOCKED_ROW // row_length
    s, dl, pad = (_last(options.get(name, default))
                  for name, default in [("stride", 1), ("dilation", 1), ("padding", 0)])
    lo = _last(pad)
    count = 2 * block + block // 2 + 1
    n = s * (count - 1 + -(-lo // s)) - lo + dl * (k[-1] - 1) + 1
    return (*lead, n), row_length, block


@pytest.mark.parametrize(
    "weight_shape, lead, options",
    [
        ((1, 1, 3), (1,), dict(padding=1)),
        ((2, 1, 5), (2,), dict(padding=((3, 1),), stride=2, groups=2, padding_mode="reflect")),
        ((1, 1, 3, 3), (1, 5), dict(padding=1, padding_mode="circular")),
        ((1, 1, 2, 3), (1, 4), dict(padding=((0, 1), (2, 0)), dilation=(1, 3),
                                    padding_mode="replicate")),
        ((2, 2, 1, 2, 3), (2, 1, 2), dict(padding=((0, 0), (0, 0), (1, 1)), stride=(1, 1, 3))),
    ],
)
@on_backends
def test_long_rows_use_blocks_and_equal_reference(xp, weight_shape, lead, options):
    """Default knobs on lines long enough for the blocked path, which must run."""
    input_shape, row_length, block = _long_last_axis(weight_shape, lead, options)
    w = random_array(np.random.default_rng(7), weight_shape, "float64", integer=True)
    g = convmat.conv_geometry(w, input_shape, **options)
    spy = _SpySpans()
    with spy.patch():
        W = host(convmat.conv_matrix(device(xp, w), input_shape, **options))
    assert max(spy.blocks, default=1) > 1, (row_length, block, spy.spans)  # the blocked path ran
    entries, shape, _ = conv_entries(w, input_shape, g.stride, g.padding, g.dilation,
                                     g.groups, g.padding_mode)
    assert_matrix_equals(W, entries, shape)


@given(case=cases(), seed=SEEDS, window=st.tuples(st.integers(0, 2**16), st.integers(0, 2**16)),
       grouped=st.booleans())
# BUILDER BUG found by this test (fixed in 974d324, kept as regression examples): the same
# entry of W got a different last bit depending on the path that wrote it. Folded taps
# (here 8 replicated taps onto one pixel) were summed in one order when their run was
# written inside a group of short runs (the full build: two runs of one position) and in
# another on the lone-run path (a window holding one of them, or GROUP_RUN=0): at 3fb20b9
# W.data[0] was 1.5903774880181676 and the window (0, 1) wrote 1.5903774880181678; at
# 50ff6e2 the same split showed with C_out=2, seed 0, window (0, 3). A distributed (PETSc)
# build's rows were then not W's rows, which tests/mpi_check.py compares exactly.
@example(case=make_case((1, 1, 8), (1, 1), padding=((0, 8),), padding_mode="replicate"),
         seed=1, window=(0, 0), grouped=False)
@example(case=make_case((2, 1, 8), (1, 1), padding=((0, 8),), padding_mode="replicate"),
         seed=0, window=(0, 2), grouped=False)
def test_plane_window_build_equals_rows_of_W(case, seed, window, grouped):
    """A distributed build's share: the rows of a range of output planes, indptr from 0.

    Bit for bit the rows of W (real-valued weights: the same folded sums, in the same order).
    """
    from convmat.indices import build_csr_arrays

    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64")
    g = convmat.conv_geometry(w, case.input_shape, **case.geometry_options)
    W = convmat.conv_matrix(w, case.input_shape, **case.options)
    planes = g.out_channels * g.output_size[0]
    q0 = window[0] % planes
    q1 = q0 + 1 + window[1] % (planes - q0)
    rows = int(np.prod(g.output_size[1:]))
    with _stress(case.row_length, grouped):
        d, i, p = build_csr_arrays(g, case.full(w), np, planes=(q0, q1))
    local = sp.csr_array((d, i, p), shape=((q1 - q0) * rows, W.shape[1]))
    assert_canonical_csr(local)
    expected = W[q0 * rows:q1 * rows]
    np.testing.assert_array_equal(local.indptr, expected.indptr)
    np.testing.assert_array_equal(local.indices, expected.indices)
    np.testing.assert_array_equal(local.data, expected.data)
