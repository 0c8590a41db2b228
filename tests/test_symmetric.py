"""``padding_mode='symmetric'``: the half-sample mirror that repeats the edge sample.

Padded position ``u < 0`` reads ``-u - 1`` and ``u >= n`` reads ``2n - 1 - u`` (NumPy
``np.pad(mode='symmetric')``, SciPy ndimage ``mode='reflect'``, MATLAB ``'symmetric'``),
with at most ``n`` padding per side. Checked against ``np.pad`` and plain loops, the scatter
reference (transposed convolution), SciPy ndimage, and against naive taps axis by axis on
every planning path (dilation-1 border parts, far-padding runs, tabulated borders).
"""

import itertools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import ndimage

import convmat
from convmat.axes import AxisMap, axis_plan, padded_index

from reference import assert_matrix_equals, case_entries, pad_index
from strategies import cases, make_case

SEEDS = st.integers(0, 2**32 - 1)
SYMMETRIC = ("symmetric",)


def _np_pad_conv(x, w, stride, pads, dilation, groups):
    """``y`` of one sample ``x`` ``(C_in, *n)``: ``np.pad(mode='symmetric')``, then loops."""
    xp = np.pad(x, [(0, 0), *pads], mode="symmetric")
    c_out, cin_g = w.shape[:2]
    k = w.shape[2:]
    span = [dl * (kk - 1) + 1 for kk, dl in zip(k, dilation, strict=True)]
    out = [(size - sp) // s + 1 for size, sp, s in zip(xp.shape[1:], span, stride, strict=True)]
    y = np.zeros((c_out, *out))
    for co in range(c_out):
        g = co // (c_out // groups)
        for p in itertools.product(*map(range, out)):
            for cl, t in itertools.product(range(cin_g), itertools.product(*map(range, k))):
                at = tuple(s * pp + dl * tt for s, pp, dl, tt in zip(stride, p, dilation, t,
                                                                       strict=True))
                y[(co, *p)] += w[(co, cl, *t)] * xp[(g * cin_g + cl, *at)]
    return y


@given(case=cases(max_ndim=3, modes=SYMMETRIC), seed=SEEDS)
@example(case=make_case((5,), (2,), padding=2, padding_mode="symmetric"), seed=0)  # pad = n
@example(case=make_case((2, 1, 3, 2), (2, 3, 1), padding=((3, 1), (1, 1)), groups=2,
                        stride=(2, 1), padding_mode="symmetric"), seed=0)
@example(case=make_case((1, 1, 4), (1, 5), padding=5, dilation=3, stride=2,
                        padding_mode="symmetric"), seed=0)  # far padding, dilation > 1
def test_product_equals_np_pad_reference(case, seed):
    """``W @ x`` is ``np.pad(x, mode='symmetric')`` correlated with ``w`` (exact sums)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-4, 5, size=case.weight_shape).astype(np.float64)
    x = rng.integers(-4, 5, size=case.full_input_shape).astype(np.float64)
    W = convmat.conv_matrix(w, case.input_shape, **case.options)
    got = (W @ x.ravel()).reshape((-1, *case.out_size))
    expected = _np_pad_conv(x, case.full(w), case.stride, case.pads, case.dilation,
                            case.groups)
    np.testing.assert_array_equal(got, expected)


@given(case=cases(max_ndim=3, modes=SYMMETRIC), seed=SEEDS)
def test_conv_matrix_equals_gather_reference(case, seed):
    """Values and stored pattern of ``W``, entry by entry, against the gather loops.

    Integer-valued weights: taps folded on several axes are summed axis by axis by convmat
    and in tap order by the loops, so only exact sums compare equal.
    """
    w = np.random.default_rng(seed).integers(-4, 5, size=case.weight_shape).astype(float)
    W = convmat.conv_matrix(w, case.input_shape, **case.options)
    entries, shape, _ = case_entries(case, w)
    assert_matrix_equals(W, entries, shape)


@given(case=cases(transposed=True, max_ndim=3, modes=SYMMETRIC), seed=SEEDS)
@example(case=make_case((1, 1, 3), (1, 4), transposed=True, padding=2, stride=2, dilation=2,
                        output_padding=1, padding_mode="symmetric"), seed=0)
def test_conv_transpose_matrix_equals_scatter_reference(case, seed):
    """The transposed convolution's matrix against the scatter loops (the copy at ``-1-j``
    of the padded output folds back onto ``j``, the copy at ``n+j`` onto ``n-1-j``)."""
    w = np.random.default_rng(seed).integers(-4, 5, size=case.weight_shape).astype(float)
    W = convmat.conv_transpose_matrix(w, case.input_shape, **case.options)
    entries, shape, _ = case_entries(case, w)
    assert_matrix_equals(W, entries, shape)


def test_transpose_is_exact_transpose_of_forward():
    """``conv_transpose_matrix`` is the forward matrix's ``W.T``, value for value."""
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 2))
    options = dict(stride=(2, 1), dilation=(1, 2), padding=((3, 2), (1, 2)), groups=1,
                   padding_mode="symmetric")
    W = convmat.conv_matrix(w, (3, 4, 5), **options)
    out = convmat.conv_geometry(w, (3, 4, 5), **options).output_size
    WT = convmat.conv_transpose_matrix(w, (4, *out), output_size=(4, 5), **options)
    np.testing.assert_array_equal(WT.toarray(), W.T.toarray())


@given(ndim=st.integers(1, 3), data=st.data(), seed=SEEDS)
def test_same_padding_equals_ndimage_reflect(ndim, data, seed):
    """Odd kernels, ``padding='same'``: ``scipy.ndimage.correlate(x, w, mode='reflect')``."""
    k = tuple(data.draw(st.sampled_from((1, 3, 5, 7))) for _ in range(ndim))
    n = tuple(data.draw(st.integers(max(1, kk // 2), kk // 2 + 4)) for kk in k)
    rng = np.random.default_rng(seed)
    w = rng.integers(-4, 5, size=k).astype(np.float64)
    x = rng.integers(-4, 5, size=n).astype(np.float64)
    W = convmat.conv_matrix(w, n, padding="same", padding_mode="symmetric")
    expected = ndimage.correlate(x, w, mode="reflect")
    np.testing.assert_array_equal((W @ x.ravel()).reshape(n), expected)


def test_index_map_is_numpy_symmetric():
    """``padded_index`` reads what ``np.pad(mode='symmetric')`` copies, up to ``n`` each side."""
    for n in (1, 2, 5):
        u = np.arange(-n, 2 * n)
        np.testing.assert_array_equal(padded_index(u, n, "symmetric"),
                                      np.pad(np.arange(n), n, mode="symmetric"))


def test_padding_up_to_the_input_size_fits():
    W = convmat.conv_matrix(np.ones(1), (3,), padding=3, padding_mode="symmetric")
    np.testing.assert_array_equal(W @ np.arange(3.0), [2, 1, 0, 0, 1, 2, 2, 1, 0])


@pytest.mark.parametrize("kernel, shape, padding, match", [
    ((3,), (3,), 4, r"axis 0 has padding \(4, 4\) for input size 3"),
    ((1, 1), (3, 5), ((0, 0), (0, 6)), r"axis 1 has padding \(0, 6\) for input size 5"),
])
def test_padding_beyond_the_input_size_is_refused(kernel, shape, padding, match):
    rule = r"padding_mode='symmetric' needs padding <= input size \(it mirrors once\); "
    with pytest.raises(ValueError, match=rule + match):
        convmat.conv_matrix(np.ones(kernel), shape, padding=padding, padding_mode="symmetric")


def test_padding_beyond_the_input_size_is_refused_transposed():
    """The rule holds on the forward convolution's input: the transposed output (size 2)."""
    with pytest.raises(ValueError, match=r"padding_mode='symmetric' needs padding <= input "
                                         r"size \(it mirrors once\); axis 0 has padding "
                                         r"\(5, 5\) for input size 2"):
        convmat.conv_transpose_matrix(np.ones((1, 1, 3)), (1, 4), stride=3, padding=5,
                                      padding_mode="symmetric")


# --------------------------------------------------------------------------- planning
def _naive_axis(n, k, s, d, lo, out):
    """Per position: the sorted distinct input indices and the taps folded onto each."""
    rows = []
    for p in range(out):
        hits = {}
        for t in range(k):
            hits.setdefault(pad_index(s * p + d * t - lo, n, "symmetric"), []).append(t)
        rows.append(dict(sorted(hits.items())))
    return rows


@st.composite
def symmetric_axes(draw):
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 9))
    s = draw(st.integers(1, 5))
    d = draw(st.integers(1, 4))
    lo = draw(st.integers(0, n))
    hi = draw(st.integers(0, n))
    if d * (k - 1) + 1 > n + lo + hi:  # the kernel must fit: shorten it
        k = (n + lo + hi - 1) // d + 1
    return n, k, s, d, lo, hi


@given(axis=symmetric_axes())
@example(axis=(5, 3, 1, 1, 5, 5))    # far padding, dilation 1: mirrored parts, one run each
@example(axis=(5, 2, 1, 4, 5, 5))    # far padding, dilation 4: reversed runs
@example(axis=(6, 7, 1, 1, 3, 3))    # long kernel: border parts on both sides
@example(axis=(1, 3, 1, 1, 1, 1))    # n = 1: every tap reads index 0
@example(axis=(4, 3, 2, 3, 4, 4))    # dilation 3: tabulated borders
def test_axis_plan_equals_naive_taps(axis):
    """Counts, first index, offsets and folded taps of every position, against loops."""
    n, k, s, d, lo, hi = axis
    out = (n + lo + hi - (d * (k - 1) + 1)) // s + 1
    plan = axis_plan(AxisMap(n, k, s, d, lo, "symmetric"), out)
    naive = _naive_axis(n, k, s, d, lo, out)
    assert plan.runs[0].start == 0 and plan.runs[-1].stop == out
    assert all(a.stop == b.start for a, b in zip(plan.runs[:-1], plan.runs[1:], strict=True))
    assert plan.counts().tolist() == [len(h) for h in naive]
    w = np.arange(1.0, k + 1) ** 2  # distinct sums for distinct tap sets
    for run in plan.runs:
        offsets, _ = run.pattern()
        folded = run.fold(w[None], 1, np)[0]
        for i in range(run.size):
            hits = naive[run.start + i]
            cols = list(hits)
            assert int(run.base(np.array([i]))[0]) == cols[0]
            assert (offsets + cols[0]).tolist() == cols
            np.testing.assert_array_equal(folded, [w[ts].sum() for ts in hits.values()])


def _distinct_per_position(n, k, lo, out):
    """Distinct indices each position reads, from the definition (vectorised, no convmat)."""
    u = np.arange(out)[:, None] + np.arange(k)[None, :] - lo
    q = np.sort(np.where(u < 0, -u - 1, np.where(u >= n, 2 * n - 1 - u, u)), axis=1)
    return 1 + (np.diff(q, axis=1) != 0).sum(axis=1)


def _tabulations(monkeypatch):
    """Count the per-position tap tables planning makes (``AxisMap.table``)."""
    calls = []
    table = AxisMap.table

    def counted(self, first, count):
        calls.append(count)
        return table(self, first, count)

    monkeypatch.setattr(AxisMap, "table", counted)
    return calls


def test_long_kernel_plans_from_parts_without_tables(monkeypatch):
    """k = n = 2001 'same': O(1) parts per border position, no tap table, O(k) runs."""
    calls = _tabulations(monkeypatch)
    axis_plan.cache_clear()  # plan now, not from an earlier test's cache
    g = convmat.conv_geometry(np.ones(2001), (2001,), padding="same", padding_mode="symmetric")
    assert g.nnz == int(_distinct_per_position(2001, 2001, 1000, 2001).sum())
    runs = g.axis_plans[0].runs
    assert calls == []  # nothing tabulated
    assert all(r.taps is not None or r.parts for r in runs)
    assert len(runs) <= 2001 + 1  # one per border position, plus the interior

    # the same count can fail: dilation 2 tabulates its border positions
    axis_plan.cache_clear()
    assert convmat.conv_geometry(np.ones(1001), (2001,), padding="same", dilation=2,
                                 padding_mode="symmetric").nnz > 0
    assert sum(calls) > 0


@pytest.mark.parametrize("dilation", [1, 2, 5])
def test_far_padding_is_one_run_per_interval(dilation, monkeypatch):
    """Padding n = 200 on both sides of a 3-tap kernel: the far padding, where every tap
    mirrors, is one run per side (O(kernel) runs, not O(padding)), with any dilation."""
    calls = _tabulations(monkeypatch)
    axis_plan.cache_clear()
    g = convmat.conv_geometry(np.ones(3), (200,), padding=200, dilation=dilation,
                              padding_mode="symmetric")
    runs = g.axis_plans[0].runs
    far = 200 - 2 * dilation  # positions whose taps all fall below (or all beyond) the input
    assert g.output_size == (600 - 2 * dilation,)
    assert runs[0].size == far and runs[-1].size == far
    border = 2 * 2 * dilation  # positions reading the edge and the inside
    assert len(runs) <= 2 * 3 + 1 + border
    assert sum(calls) <= border  # tabulated: only those (dilation > 1), never the far ones
    u = (np.arange(g.output_size[0])[:, None] + dilation * np.arange(3)[None, :] - 200)
    assert g.nnz == int(sum(len({pad_index(int(v), 200, "symmetric") for v in row})
                            for row in u))
