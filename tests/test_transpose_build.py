"""The direct ``W.T`` builder (:mod:`convmat.transposed`) against independent references.

* SciPy's transpose of the forward matrix (``W.T.tocsr()`` of the forward builder's CSR,
  sorted): both canonical, so ``data``, ``indices`` and ``indptr`` must be equal exactly;
* the naive scatter loop of ``tests/reference.py`` (integer-valued weights, whose sums are
  exact in every dtype) for the entries and for products;
* a bound on the memory the build allocates (traced), close to the CSR's own bytes.
"""

import tracemalloc

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import convmat
import convmat.geometry
import convmat.indices
from convmat.matrix import assemble, conv_weight, from_arrays
from convmat.transposed import build_transposed_csr_arrays
from convmat.transposed_axes import transposed_axis_plan

from reference import (
    assert_canonical_csr,
    assert_matrix_equals,
    case_apply,
    case_entries,
)
from strategies import DTYPES, MODES, cases, make_case, random_array

SEEDS = st.integers(0, 2**32 - 1)


def _converted(forward, weight):
    """SciPy's CSR of ``W.T``, ``W`` written by the forward builder (never the new code)."""
    w = assemble(forward, weight, np)
    wt = w.T.tocsr()
    wt.sort_indices()
    return wt


def _direct(forward, weight, **options):
    data, indices, indptr = build_transposed_csr_arrays(
        forward, conv_weight(forward, weight), np, **options)
    return from_arrays(forward, data, indices, indptr, np, transposed=True)


def assert_same_csr(got, ref):
    """Equal canonical CSRs: the same shape, dtypes, ``indptr``, ``indices`` and ``data``."""
    assert got.shape == ref.shape
    assert got.dtype == ref.dtype
    assert_canonical_csr(got)
    assert got.has_sorted_indices and got.has_canonical_format
    np.testing.assert_array_equal(got.indptr, ref.indptr, err_msg="row lengths differ")
    np.testing.assert_array_equal(got.indices, ref.indices, err_msg="patterns differ")
    np.testing.assert_array_equal(got.data, ref.data, err_msg="values differ")


def _channels_last(case, w):
    """``(weight, input_shape, options)`` of ``case`` in the channels-last layout."""
    nd = case.ndim
    w = np.moveaxis(np.moveaxis(w, 0, -1), 0, -2)  # (C_out, C_in/G, *k) -> (*k, C_in/G, C_out)
    shape = (*case.input_shape[1:], case.input_shape[0])
    options = dict(case.options)
    size = options.get("output_size")
    if size is not None and len(size) == nd + 1:  # (C, *spatial) -> (*spatial, C)
        options["output_size"] = (*size[1:], size[0])
    return w, shape, {**options, "layout": "channels_last"}


@st.composite
def transposed_builds(draw, transposed=True):
    """A drawn case with a dtype, and optionally flip, origin and the channels-last layout."""
    case = draw(cases(transposed=transposed))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(SEEDS)
    w = random_array(np.random.default_rng(seed), case.weight_shape, dtype)
    shape, options = case.input_shape, dict(case.options)
    options.pop("max_bytes", None)
    if draw(st.booleans()):
        options["flip"] = True
    if options.get("padding") == "same" and draw(st.booleans()):
        origin = tuple(draw(st.integers(-(k // 2), (k - 1) // 2)) for k in case.kernel)
        make = convmat.conv_transpose_geometry if transposed else convmat.conv_geometry
        try:  # the centring moves the padding: the mode must still fit it
            make(w, shape, **options, origin=origin)
            options["origin"] = origin
        except ValueError:
            pass
    if not case.shorthand and draw(st.booleans()):
        w, shape, last = _channels_last(case, w)
        options["layout"] = "channels_last"
        if "output_size" in last:
            options["output_size"] = last["output_size"]
    return case, w, shape, options


# ------------------------------------------------------------------ the whole space
@given(build=transposed_builds())
def test_transposed_matrix_equals_the_converted_transpose(build):
    """Every stride, dilation, padding (mode), group, dtype, flip, origin and layout."""
    case, w, shape, options = build
    g = convmat.conv_transpose_geometry(w, shape, **options)
    forward = g.T
    wt = convmat.conv_transpose_matrix(w, shape, **options)
    ref = _converted(forward, w)
    assert_same_csr(wt, ref)
    assert wt.indices.dtype == g.index_dtype and wt.indptr.dtype == g.index_dtype
    # the new builder itself, also where the adjoint convolution writes W.T (stride 1, zeros)
    assert_same_csr(_direct(forward, w), ref)


@given(build=transposed_builds(transposed=False))
def test_adjoint_csr_equals_the_converted_adjoint(build):
    """``ConvOperator.adjoint_csr`` (conjugated when complex) for drawn convolutions."""
    case, w, shape, options = build
    op = convmat.ConvOperator(w, shape, **options)
    ref = op.matrix.conj().T.tocsr() if w.dtype.kind == "c" else op.matrix.T.tocsr()
    ref.sort_indices()
    wh = op.adjoint_csr()
    if wh is op.matrix:  # W^H == W (a symmetric kernel): nothing built
        return
    assert_same_csr(wh, ref)
    # the adjoint of the adjoint is the forward CSR
    np.testing.assert_array_equal(op.H.adjoint_csr().toarray(), op.matrix.toarray())


@given(case=cases(transposed=True), seed=SEEDS)
@example(case=make_case((2, 3, 3), (2, 4), transposed=True, stride=3, padding=((4, 1),),
                        dilation=2, groups=2, padding_mode="replicate", output_padding=2),
         seed=0)
def test_transposed_matrix_equals_the_scatter_reference(case, seed):
    """Entries and products against the naive loop (integer weights: exact sums)."""
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, "float64", integer=True)
    g = convmat.conv_transpose_geometry(w, case.input_shape, **case.geometry_options)
    wt = _direct(g.T, w)
    entries, shape, _ = case_entries(case, w)
    assert_matrix_equals(wt, entries, shape)
    y = rng.integers(-3, 4, size=case.full_input_shape).astype(float)
    np.testing.assert_array_equal(wt @ y.ravel(), case_apply(case, w, y).ravel())


# ------------------------------------------------------------------ explicit grids
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_every_mode_stride_and_dilation(mode, stride, dilation, layout):
    rng = np.random.default_rng(stride * 10 + dilation)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)  # groups=2: (C_out, C_in/G, k)
    shape = (4, 11, 9)
    if layout == "channels_last":
        w, shape = np.ascontiguousarray(w.transpose(2, 3, 1, 0)), (11, 9, 4)
    options = dict(stride=(stride, 2), dilation=(dilation, 1), padding=((2, 1), (1, 0)),
                   padding_mode=mode, groups=2, layout=layout)
    g = convmat.conv_geometry(w, shape, **options)
    assert_same_csr(_direct(g, w), _converted(g, w))


def test_strided_interior_is_one_run_of_phases():
    """Stride 2: the interior input indices form one run of 2-row blocks (the phases)."""
    plan = transposed_axis_plan(convmat.axes.AxisMap(512, 3, 2, 1, 1, "zeros"), 256)
    assert plan.total == 3 * 256 - 1
    widest = max(plan.runs, key=lambda r: r.count)
    assert widest.width == 2 and widest.step == 1 and widest.count >= 254
    assert sorted(row.m for row in widest.rows) == [1, 2]
    assert len(plan.runs) <= 3
    np.testing.assert_array_equal(plan.counts[1:-1], np.where(np.arange(1, 511) % 2, 2, 1))


def test_threads_and_int64_indices_give_the_same_matrix(monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 4, 3, 3)) + 1j * rng.standard_normal((3, 4, 3, 3))
    options = dict(stride=2, padding=2, dilation=(1, 2), padding_mode="symmetric")
    g = convmat.conv_geometry(w, (4, 23, 19), **options)
    ref = _converted(g, w)
    monkeypatch.setattr(convmat.transposed, "TASK_ROWS", 7)  # many slabs
    monkeypatch.setattr(convmat.indices, "THREADED_MIN_NNZ", 1)
    monkeypatch.setattr(convmat.indices, "TASK_ENTRIES", 64)
    for threads in (1, 3):
        assert_same_csr(_direct(g, w, threads=threads), ref)
    monkeypatch.setattr(convmat.geometry, "INDEX_LIMIT", 50)
    g64 = convmat.conv_geometry(w, (4, 23, 19), **options)
    wt = _direct(g64, w)
    assert wt.indices.dtype == np.int64 and wt.indptr.dtype == np.int64
    np.testing.assert_array_equal(wt.indices, ref.indices)
    np.testing.assert_array_equal(wt.indptr, ref.indptr)
    np.testing.assert_array_equal(wt.data, ref.data)


def test_data_only_and_pattern_only():
    w = np.arange(2 * 3 * 3.0).reshape(2, 1, 3, 3)
    g = convmat.conv_geometry(w, (1, 8, 8), stride=2, padding=1, padding_mode="circular")
    ref = _converted(g, w)
    data, indices, indptr = build_transposed_csr_arrays(g, None, np)
    assert data is None
    np.testing.assert_array_equal(indices, ref.indices)
    np.testing.assert_array_equal(indptr, ref.indptr)
    data, indices, indptr = build_transposed_csr_arrays(g, conv_weight(g, w), np,
                                                        indices=False)
    assert indices is None and indptr is None
    np.testing.assert_array_equal(data, ref.data)
    # the transposed geometry gives the same arrays as its forward one
    np.testing.assert_array_equal(
        build_transposed_csr_arrays(g.T, conv_weight(g, w), np)[1], ref.indices)


def test_transposed_plans_cover_every_input_index():
    g = convmat.conv_geometry((2, 2, 5, 3), (2, 30, 17), stride=(3, 2), dilation=(2, 1),
                              padding=((4, 3), (2, 2)), padding_mode="reflect")
    for plan, n, forward in zip(g.transposed_axis_plans, g.input_size, g.axis_plans,
                                strict=True):
        assert plan.total == forward.total
        rows = [r.start + i for r in plan.runs for i in range(r.width * r.count)]
        assert rows == list(range(n))


# ------------------------------------------------------------------ memory
def _traced_peak(build):
    tracemalloc.start()
    try:
        result = build()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


MEMORY_CASES = [
    # 8->8 channels, 64x64 -> 128x128, stride 2
    ((8, 8, 3, 3), (8, 64, 64), dict(stride=2, padding=1, output_padding=1,
                                     padding_mode="reflect")),
    ((8, 8, 3, 3), (8, 64, 64), dict(stride=2, padding=1, output_padding=1)),
    ((3, 3, 8, 8), (64, 64, 8), dict(stride=2, padding=1, output_padding=1,
                                     padding_mode="circular", layout="channels_last")),
    # one channel, 1-D: short rows, the plan's per-row counts as large as indptr
    ((1, 1, 9), (1, 2**16), dict(stride=3, padding=4, padding_mode="reflect")),
]


@pytest.mark.parametrize("wshape, shape, options", MEMORY_CASES)
def test_build_holds_little_beside_the_csr(wshape, shape, options):
    """The build allocates about the CSR and nothing like a second copy of it."""
    w = np.random.default_rng(5).standard_normal(wshape).astype(np.float32)
    g = convmat.conv_transpose_geometry(w, shape, **options)
    assert g.adjoint is None
    assert g.T.transposed_axis_plans  # planned (cached) before, as the guard does
    peak, wt = _traced_peak(lambda: convmat.conv_transpose_matrix(w, shape, **options))
    assert wt.nnz == g.nnz
    assert g.nbytes <= peak <= 1.1 * g.nbytes
    assert peak <= g.peak_bytes


def test_adjoint_csr_memory_is_guarded_by_the_csr_size():
    """``adjoint_csr`` checks the direct build's peak (no conversion: no second CSR)."""
    w = np.random.default_rng(6).standard_normal((4, 4, 3, 3))
    op = convmat.ConvOperator(w, (4, 40, 40), stride=2, padding=1, padding_mode="reflect")
    gt = op.geometry.T
    assert gt.adjoint is None
    assert gt.peak_bytes == gt.nbytes + gt.transposed_workspace_bytes
    # a larger one: the workspace is a small part (the conversion held two CSRs)
    big = convmat.conv_transpose_geometry((16, 16, 3, 3), (16, 64, 64), stride=2, padding=1,
                                          output_padding=1, padding_mode="reflect")
    assert big.adjoint is None and big.peak_bytes < 1.25 * big.nbytes
    with pytest.raises(convmat.ConvMatrixTooLarge, match=r"W\^H of shape \(6400, 1600\)"):
        op.adjoint_csr(max_bytes=gt.peak_bytes - 1)
    assert op.adjoint_csr(max_bytes=gt.peak_bytes).nnz == op.nnz
