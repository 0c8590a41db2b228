"""Trust: planning costs what it should, the memory guard holds, operators own their data.

Each test pins a case that used to go wrong (issue 10): quadratic planning of long
kernels, huge paddings that allocated before the guard spoke, a guard that was too strict
for tiny matrices and absent for adjoints, operators that followed a caller's mutated
weight and could not be pickled, inputs that crashed instead of being answered.
"""

import copy
import pickle
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401 - imported before tracemalloc starts counting
from hypothesis import example, given
from hypothesis import strategies as st

import convmat
from convmat import ConvMatrixTooLarge, ConvOperator
from convmat.axes import AxisMap, axis_plan

from reference import assert_matrix_equals, conv_entries, pad_index

MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------- one axis
def _naive_axis(n, k, s, d, lo, mode, out):
    """Per position: the sorted distinct input indices and, per index, the taps folded."""
    rows = []
    for p in range(out):
        hits = {}
        for t in range(k):
            q = pad_index(s * p + d * t - lo, n, mode)
            if q is not None:
                hits.setdefault(q, []).append(t)
        rows.append(dict(sorted(hits.items())))
    return rows


@st.composite
def axes(draw):
    mode = draw(st.sampled_from(MODES))
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 9))
    s = draw(st.integers(1, 5))
    d = draw(st.integers(1, 4))
    bound = {"reflect": n - 1, "circular": n}.get(mode, 40)
    lo = draw(st.integers(0, bound))
    hi = draw(st.integers(0, bound))
    span = d * (k - 1) + 1
    if span > n + lo + hi:
        hi = span - n - lo
        if mode in ("reflect", "circular") and hi > bound:
            k, hi = 1, min(hi, bound)
    return n, k, s, d, lo, hi, mode


@given(axis=axes())
@example(axis=(5, 3, 1, 1, 30, 29, "replicate"))   # far padding: taps fold onto an edge
@example(axis=(4, 9, 1, 1, 4, 1, "zeros"))         # kernel longer than the input
@example(axis=(6, 3, 2, 3, 5, 5, "reflect"))
@example(axis=(3, 7, 1, 1, 3, 1, "circular"))
def test_axis_plan_equals_naive_taps(axis):
    """Counts, first index, offsets and folded taps of every position, against loops."""
    n, k, s, d, lo, hi, mode = axis
    out = (n + lo + hi - (d * (k - 1) + 1)) // s + 1
    plan = axis_plan(AxisMap(n, k, s, d, lo, mode), out)
    naive = _naive_axis(n, k, s, d, lo, mode, out)
    assert [r.start for r in plan.runs] == sorted(r.start for r in plan.runs)
    assert plan.runs[0].start == 0 and plan.runs[-1].stop == out
    assert all(a.stop == b.start for a, b in zip(plan.runs[:-1], plan.runs[1:], strict=True))
    assert plan.counts().tolist() == [len(h) for h in naive]
    assert plan.total == sum(len(h) for h in naive)
    w = np.arange(1.0, k + 1) ** 2  # distinct sums for distinct tap sets
    for run in plan.runs:
        offsets, slots = run.pattern()
        folded = run.fold(w[None], 1, np)[0]
        for i in range(run.size):
            hits = naive[run.start + i]
            if not hits:
                assert run.m == 0
                continue
            cols = list(hits)
            assert int(run.base(np.array([i]))[0]) == cols[0]
            assert (offsets + cols[0]).tolist() == cols
            np.testing.assert_array_equal(folded, [w[ts].sum() for ts in hits.values()])
            assert sorted(np.flatnonzero(slots >= 0).tolist()) == sorted(
                t for ts in hits.values() for t in ts)


def test_plan_of_a_long_kernel_is_linear_in_the_kernel():
    """k = n = 2001 'same': one run per distinct tap range, planned in bounded memory.

    It tabulated position x tap and grouped taps with Python sets: 19 s for this case.
    """
    axis_plan.cache_clear()  # plan now, not from an earlier test's cache
    tracemalloc.start()
    g = convmat.conv_geometry(np.ones(2001), (2001,), padding="same")
    nnz = g.nnz
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert nnz == 2001 * 2001 - 2 * (1000 * 1001 // 2)  # the taps dropped by the padding
    assert len(g.axis_plans[0].runs) <= 2 * 2001 + 1
    assert peak < 2_000 * len(g.axis_plans[0].runs)  # O(runs) small objects


@pytest.mark.parametrize("mode, n, dilation", [
    ("zeros", 10, 1), ("replicate", 10, 1), ("zeros", 10, 2), ("replicate", 10, 3),
    ("reflect", 10**7 + 1, 2), ("circular", 10**7, 2), ("reflect", 10**7 + 1, 1)])
def test_huge_padding_is_refused_before_allocating(mode, n, dilation):
    """padding=10**7 with max_bytes=10**6 was refused after 76 s and 1.4 GB.

    Also with dilation, under every mode (reflect and circular bound the padding by n: the
    far padding, where every tap mirrors or wraps, is one run whatever the dilation).
    """
    axis_plan.cache_clear()
    tracemalloc.start()
    with pytest.raises(ConvMatrixTooLarge, match=r"over the limit of 1,000,000 bytes"):
        convmat.conv_matrix(np.ones(3), (n,), padding=10**7, max_bytes=10**6,
                            padding_mode=mode, dilation=dilation)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000


def test_astronomical_padding_is_a_size_refusal_not_numpy_allocation_error():
    with pytest.raises(ConvMatrixTooLarge, match=r"EiB"):
        convmat.conv_matrix(np.ones(3), (10,), padding=10**18)
    g = convmat.conv_geometry((1, 1, 3), (1, 10), padding=10**19)  # beyond int64: exact
    assert g.output_size == (2 * 10**19 + 8,) and g.nnz == 3 * 8 + 2 * 2 + 2 * 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k, n, padding", [(61, 61, "same"), (40, 25, ((24, 23),)),
                                           (9, 60, 8)])
def test_long_kernels_equal_the_reference(mode, k, n, padding):
    rng = np.random.default_rng(k + n)
    w = rng.integers(-4, 5, size=(4, 2, k)).astype(np.float64)
    opts = dict(padding=padding, groups=2, padding_mode=mode)
    g = convmat.conv_geometry(w, (4, n), **opts)
    W = convmat.conv_matrix(w, (4, n), **opts)
    entries, shape, _ = conv_entries(w, (4, n), (1,), list(g.padding), (1,), 2, mode)
    assert_matrix_equals(W, entries, shape)  # values and the stored pattern


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dilation, stride", [(2, 1), (3, 2)])
def test_dilated_long_kernels_equal_the_reference(mode, dilation, stride):
    """Tabulated border positions (dilation > 1, folding modes) and their grouped rows."""
    rng = np.random.default_rng(dilation)
    w = rng.integers(-4, 5, size=(2, 2, 9)).astype(np.float64)
    n = 40
    pad = min(n - 1, dilation * 8)
    opts = dict(padding=pad, padding_mode=mode, dilation=dilation, stride=stride)
    W = convmat.conv_matrix(w, (2, n), **opts)
    entries, shape, _ = conv_entries(w, (2, n), (stride,), [(pad, pad)], (dilation,), 1,
                                     mode)
    assert_matrix_equals(W, entries, shape)


@pytest.mark.parametrize("mode", MODES)
def test_long_last_axis_kernel_in_2d_equals_the_reference(mode):
    """Grouped border rows with other axes: templates broadcast over the first axis."""
    rng = np.random.default_rng(3)
    w = rng.integers(-4, 5, size=(2, 2, 2, 25)).astype(np.float64)
    opts = dict(padding=((1, 0), (12, 12)), padding_mode=mode, stride=(1, 2))
    W = convmat.conv_matrix(w, (2, 4, 26), **opts)
    entries, shape, _ = conv_entries(w, (2, 4, 26), (1, 2), [(1, 0), (12, 12)], (1, 1), 1,
                                     mode)
    assert_matrix_equals(W, entries, shape)


def test_stride_beyond_int64_builds():
    """stride=2**63 passed validation, then overflowed a C long in the build."""
    w = np.array([[[1.0, 2.0, 3.0]]])
    W = convmat.conv_matrix(w, (1, 5), stride=2**63, padding=2**62)
    assert W.shape == (2, 5) and W.nnz == 0
    W = convmat.conv_matrix(w, (1, 5), stride=2**63)
    np.testing.assert_array_equal(W.toarray(), [[1.0, 2.0, 3.0, 0.0, 0.0]])
    W = convmat.conv_matrix(w, (1, 5), stride=2**63, padding=2**62, padding_mode="replicate")
    np.testing.assert_array_equal(W.toarray(), [[6.0, 0, 0, 0, 0], [0, 0, 0, 0, 6.0]])
    W = convmat.conv_matrix(w, (1, 6), stride=2**63 - 1, padding=2**63 - 1,
                            padding_mode="replicate")
    np.testing.assert_array_equal(W.toarray(), [[6.0, 0, 0, 0, 0, 0], [1, 2, 3, 0, 0, 0],
                                                [0, 0, 0, 0, 0, 6.0]])
    with pytest.raises(ConvMatrixTooLarge, match=r"bytes at peak .* and indices beyond int64"):
        convmat.conv_matrix(np.ones(3), (10**19,), stride=10**19, max_bytes=10**30)


# --------------------------------------------------------------------------- memory guard
def _traced_peak(build):
    tracemalloc.start()
    try:
        build()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


PEAK_CASES = [
    ("conv_matrix", (1, 1, 601), (1, 601), dict(padding="same")),
    ("conv_matrix", (4, 3, 101), (3, 100), dict(padding="same", padding_mode="reflect")),
    ("conv_matrix", (2, 2, 5, 31), (2, 20, 40), dict(padding="same")),
    ("conv_matrix", (8, 8, 3, 3), (8, 40, 40), dict(padding=1, stride=2)),
    ("conv_matrix", (2, 1, 3, 3), (2, 30, 30), dict(padding=2, groups=2, dilation=2,
                                                     padding_mode="circular")),
    ("conv_transpose_matrix", (8, 4, 3, 3), (8, 16, 16), dict(stride=2, padding=1)),
    ("conv_transpose_matrix", (8, 4, 3, 3), (8, 16, 16), dict(padding=1)),
    ("conv_matrix", (3, 3, 3, 3, 3), (3, 10, 10, 10), dict(padding=1,
                                                            padding_mode="replicate")),
    ("conv_matrix", (1, 1, 9), (1, 50), dict(padding=40, padding_mode="replicate")),
    # found in review: short rows (indptr temporaries), a tall 2-D input, several input
    # channels with a long kernel, a dilated folding border, rows far apart, a dilated
    # replicate kernel longer than the input, a stride-1 transpose built as its adjoint
    ("conv_matrix", (1, 1, 3), (1, 200_000), dict(padding=1)),
    ("conv_matrix", (1, 1, 1, 1), (1, 100_000, 1), dict()),
    ("conv_matrix", (1, 8, 301), (8, 301), dict(padding="same")),
    ("conv_matrix", (1, 4, 101), (4, 301), dict(padding="same", padding_mode="reflect",
                                                 dilation=2)),
    ("conv_matrix", (1, 1, 5), (1, 10**7), dict(stride=2 * 10**6, padding=2)),
    ("conv_matrix", (1, 1, 2308), (1, 229), dict(stride=3, dilation=2, padding=2307,
                                                  padding_mode="replicate")),
    ("conv_transpose_matrix", (1, 1, 3000), (1, 10), dict()),
    ("conv_matrix", (2, 3, 7, 5), (3, 11, 40), dict(padding=(3, 8), dilation=(1, 3),
                                                     padding_mode="circular")),
    # channels last: built channels first in pieces of planes, each moved to its place
    # (two pieces here: nnz > LAYOUT_PIECE_ENTRIES), and a transposed conv converted
    ("conv_matrix", (3, 3, 8, 8), (48, 48, 8), dict(padding=1, layout="channels_last")),
    ("conv_transpose_matrix", (3, 3, 4, 8), (16, 16, 8), dict(stride=2, padding=1,
                                                              layout="channels_last")),
    ("conv_transpose_matrix", (3, 3, 4, 8), (16, 16, 8), dict(padding=1,
                                                              layout="channels_last")),
]


@pytest.mark.parametrize("fn, wshape, ins, opts", PEAK_CASES)
def test_measured_peak_is_within_the_prediction(fn, wshape, ins, opts):
    """What a build allocates (tracemalloc sees NumPy's buffers) stays under peak_bytes."""
    w = np.random.default_rng(0).standard_normal(wshape)
    make = convmat.conv_transpose_geometry if "transpose" in fn else convmat.conv_geometry
    g = make(w, ins, **opts)
    assert g.nnz > 0  # plans now (cached): the build alone is counted
    peak = _traced_peak(lambda: getattr(convmat, fn)(w, ins, **opts))
    assert g.nbytes <= peak <= g.peak_bytes


def test_tiny_strided_transpose_is_not_refused_by_a_fixed_allowance():
    """A 1.7 kB strided transposed matrix was refused under max_bytes=10**7 (64 MiB added)."""
    w = np.ones((1, 1, 3, 3))
    g = convmat.conv_transpose_geometry(w, (1, 4, 4), stride=2)
    assert g.adjoint is None and g.peak_bytes < 100_000
    W = convmat.conv_transpose_matrix(w, (1, 4, 4), stride=2, max_bytes=10_000_000)
    assert W.shape == (81, 16)


def test_adjoint_csr_with_weight_and_gradient_are_guarded():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 3, 3)) + 1j * rng.standard_normal((3, 2, 3, 3))
    op = ConvOperator(w, (2, 20, 20), stride=2, padding=1, padding_mode="circular")
    with pytest.raises(ConvMatrixTooLarge, match=r"W\^H of shape .* over the limit of 1,000"):
        op.adjoint_csr(max_bytes=1000)
    with pytest.raises(ConvMatrixTooLarge, match=r"over the limit of 1,000 bytes"):
        op.T.adjoint_csr(max_bytes=1000)  # conjugating the data copies it
    lazy = op.with_weight(w, max_bytes=1000)  # W was never built: nothing is
    assert not lazy.built
    op.matrix  # noqa: B018 - build W: now the new data of W is
    with pytest.raises(ConvMatrixTooLarge, match=r"the new data of W .* over the limit"):
        op.with_weight(w, max_bytes=1000)
    with pytest.raises(ConvMatrixTooLarge, match=r"over the limit of 100 bytes"):
        convmat.gradient_operator((1, 16, 16), max_bytes=100).matrix  # noqa: B018
    sym = ConvOperator(np.ones((3, 3)), (8, 8), padding=1)  # W^H == W: written directly
    with pytest.raises(ConvMatrixTooLarge, match=r"W\^H"):
        ConvOperator(np.arange(9.0).reshape(3, 3), (8, 8), padding=1).adjoint_csr(max_bytes=10)
    assert sym.adjoint_csr(max_bytes=0) is sym.matrix  # nothing allocated


def test_adjoint_csr_stays_within_its_prediction():
    """Complex, strided, circular: the conversion allocated 350 MiB beyond its estimate.

    Now written directly from the transposed plans: within ``peak_bytes`` of ``W.T``'s
    geometry, which the guard checks.
    """
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4, 3, 3)) + 1j * rng.standard_normal((4, 4, 3, 3))
    op = ConvOperator(w, (4, 32, 32), stride=2, padding=1, padding_mode="circular")
    gt = op.geometry.T
    assert gt.adjoint is None and gt.peak_bytes == gt.nbytes + gt.transposed_workspace_bytes
    peak = _traced_peak(op.adjoint_csr)
    assert gt.nbytes <= peak <= gt.peak_bytes
    np.testing.assert_array_equal(op.adjoint_csr().toarray(), op.matrix.toarray().conj().T)


def test_to_gpu_checks_the_device_room(monkeypatch):
    class FakeCupy:
        __version__ = "14.2.0"

    monkeypatch.setattr(convmat.backend, "_cupy", lambda: FakeCupy)
    monkeypatch.setattr(convmat.backend, "device_memory_budget",
                        lambda xp: (1000, "free on the GPU"))
    with pytest.raises(ConvMatrixTooLarge, match=r"to the GPU needs more than the limit of "
                                                 r"500 bytes \(default: 50% of 1000 B free"):
        convmat.to_gpu(np.ones(100))
    op = ConvOperator(np.ones((3, 3)), (8, 8))
    with pytest.raises(ConvMatrixTooLarge, match=r"limit of 10 bytes \(max_bytes\)"):
        op.to_gpu(max_bytes=10)


def test_default_share_is_per_rank_on_a_node(monkeypatch):
    from convmat.petsc import ranks_on_node

    class Comm:
        def getSize(self):  # noqa: N802 - petsc4py's name
            return 4

        def tompi4py(self):
            raise AttributeError("no mpi4py")

    monkeypatch.setattr(convmat.backend, "available_memory", lambda: 8000)
    for name in convmat.petsc.LOCAL_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert ranks_on_node(Comm()) == 4  # unknown: assume every rank shares the node
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    assert ranks_on_node(Comm()) == 2
    limit, source = convmat.backend.memory_limit(None, sharers=2)
    assert limit == 2000 and source.endswith("/ 2 processes on this node")

    # and the distributed build asks for its share through it
    class PETSc:
        ScalarType, IntType = np.float64, np.int32

    class RankComm(Comm):
        def getRank(self):  # noqa: N802 - petsc4py's name
            return 0

    g = convmat.conv_geometry((1, 1, 3, 3), (1, 64, 64), padding=1)
    with pytest.raises(ConvMatrixTooLarge, match=r"rank 0: .* over the limit of 2,000 bytes "
                                                 r"\(default: 50% of 7.8 KiB available / 2 "
                                                 r"processes on this node\)"):
        convmat.petsc._assemble(PETSc, RankComm(), g, np.ones((1, 1, 3, 3)), None)


# --------------------------------------------------------------------------- operators
def test_operator_owns_its_weight():
    """Mutating the caller's array changed adjoint_csr and with_weight (stale weight)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 5))
    op = ConvOperator(w, (32, 32), padding=2)
    w *= 0
    np.testing.assert_array_equal(op.adjoint_csr().toarray(), op.matrix.T.toarray())
    assert np.abs(op.weight).sum() > 0 and not op.weight.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        op.weight[0, 0] = 1.0
    w2 = rng.standard_normal((5, 5))
    op2 = op.with_weight(w2)
    w2 *= 0
    np.testing.assert_array_equal(op2.adjoint_csr().toarray(), op2.matrix.T.toarray())
    t = ConvOperator.transposed(w2 + 1, (30, 30))
    assert not np.shares_memory(t.weight, w2)


def _apply(op, x):
    return op @ x


def test_operators_pickle_deepcopy_and_cross_processes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)) + 1j * rng.standard_normal((3, 2, 3, 3))
    op = ConvOperator(w, (2, 8, 8), stride=2, padding=1)
    x = rng.standard_normal(op.input_shape)
    y = rng.standard_normal(op.output_shape)
    for view, v in ((op, x), (op.T, y), (op.H, y)):
        for clone in (pickle.loads(pickle.dumps(view)), copy.deepcopy(view)):
            np.testing.assert_array_equal(clone @ v, view @ v)
            np.testing.assert_array_equal(clone.adjoint_csr().toarray(),
                                          view.adjoint_csr().toarray())
    A = pickle.loads(pickle.dumps(op.aslinearoperator()))
    np.testing.assert_array_equal(A.rmatvec(y.ravel()), op.H @ y.ravel())
    assert type(A).__name__ == "ConvLinearOperator"
    assert type(op.aslinearoperator()) is type(op.T.aslinearoperator())  # one class
    with ProcessPoolExecutor(1) as pool:
        np.testing.assert_array_equal(pool.submit(_apply, op.H, y).result(), op.H @ y)


def test_empty_batches_give_empty_results():
    w = np.ones((2, 1, 3))
    assert convmat.conv(np.zeros((0, 1, 8)), w).shape == (0, 2, 6)
    assert convmat.conv_transpose(np.zeros((0, 2, 6)), w).shape == (0, 1, 8)
    op = ConvOperator(w, (1, 8))
    assert (op @ np.zeros((0, 1, 8))).shape == (0, 2, 6)
    assert (op.T @ np.zeros((0, 2, 6))).shape == (0, 1, 8)


def test_sparse_and_masked_inputs():
    op = ConvOperator(np.arange(1.0, 10.0).reshape(1, 1, 3, 3), (1, 5, 5), padding=1)
    X = sp.random_array((25, 4), density=0.3, random_state=0, format="csr")
    Y = op @ X
    assert sp.issparse(Y)
    np.testing.assert_allclose(Y.toarray(), op.matrix.toarray() @ X.toarray(), rtol=1e-14)
    with pytest.raises(ValueError, match=r"sparse x of shape \(24, 4\) does not fit"):
        op @ sp.random_array((24, 4), density=0.3, random_state=0)
    masked = np.ma.masked_array(np.ones((1, 5, 5)), mask=np.eye(5, dtype=bool)[None])
    with pytest.raises(TypeError, match=r"x is a masked array; W @ x would use the values"):
        op @ masked
    with pytest.raises(TypeError, match=r"x is a masked array; the convolution would use"):
        convmat.conv(masked, np.ones((1, 1, 3, 3)))
    with pytest.raises(TypeError, match=r"y is a masked array; the solve would use the values "
                                        r"under its mask. Pass y.filled\(0\)"):
        convmat.deconvolve(masked, op.T)
    with pytest.raises(TypeError, match=r"x0 is a masked array; the warm start would use"):
        convmat.deconvolve(op @ np.ones((1, 5, 5)), op, x0=masked)


def test_weight_shape_with_negative_channels_is_refused():
    """conv_geometry((-1, 1, 3), (1, 5)) reported nnz -9."""
    with pytest.raises(ValueError, match=r"weight shape \(-1, 1, 3\) has a channel axis <= 0"):
        convmat.conv_geometry((-1, 1, 3), (1, 5))
    with pytest.raises(ValueError, match=r"weight shape \(2, 0, 3\) has a channel axis <= 0"):
        convmat.conv_geometry((2, 0, 3), (0 + 1, 5))


def _build_in_child(_):
    W = convmat.conv_matrix(np.ones((7, 7)), (400, 400), padding="same")  # threaded build
    return int(W.nnz)


def test_forked_workers_build_after_the_parent_did():
    """A forked child inherited the parent's thread pool without its threads and hung."""
    import multiprocessing

    W = convmat.conv_matrix(np.ones((7, 7)), (400, 400), padding="same")
    assert W.nnz >= convmat.indices.THREADED_MIN_NNZ  # the parent used the pool
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map_async(_build_in_child, [0]).get(timeout=60) == [W.nnz]


def test_operator_module_names_only_its_linear_operator_classes():
    assert convmat.operator.ConvLinearOperator.__name__ == "ConvLinearOperator"
    with pytest.raises(AttributeError, match=r"module 'convmat.operator' has no attribute "
                                             r"'Nope'"):
        convmat.operator.Nope  # noqa: B018 - the lookup is the test


def test_transposed_channel_refusals():
    with pytest.raises(ValueError, match=r"weight.shape\[0\]=4 \(transposed-conv input "
                                         r"channels\) must equal input_shape\[0\]=3"):
        convmat.conv_transpose_geometry((4, 1, 3), (3, 8))
    with pytest.raises(ValueError, match=r"groups=2 must divide in_channels=3"):
        convmat.conv_transpose_geometry((3, 1, 3), (3, 8), groups=2)


def test_viz_without_matplotlib_says_how_to_install(monkeypatch):
    import sys

    import convmat.viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"convmat.viz needs matplotlib: pip install "
                                          r"matplotlib \(or convmat\[viz\]\)"):
        convmat.viz.spy(ConvOperator(np.ones((2, 2)), (3, 3)))
