"""Hypothesis properties: adjointness against the scatter reference, linearity, nnz, shapes,
the memory guard, ``conv_transpose_matrix == conv_matrix.T``.

Each runs on every backend (see ``backends.py``): the data is drawn with NumPy, moved to
the backend, and the results are checked on the host.
"""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import convmat

from backends import device, host, on_backends
from reference import assert_canonical_csr, assert_close, case_adjoint, case_apply, gamma
from strategies import DTYPES, cases, make_case, random_array

SEEDS = st.integers(0, 2**32 - 1)
ANY_CASE = st.one_of(cases(), cases(transposed=True))


def _matrix(case, w, xp, **extra):
    build = convmat.conv_transpose_matrix if case.transposed else convmat.conv_matrix
    return build(device(xp, w), case.input_shape, **{**case.options, **extra})


def _operator(case, w, xp):
    make = convmat.ConvOperator.transposed if case.transposed else convmat.ConvOperator
    return make(device(xp, w), case.input_shape, **case.options)


def _transpose_builders(case, w, xp):
    """``(name, matrix)`` of every other way convmat writes the transpose as a matrix.

    For a convolution, ``conv_transpose_matrix`` of the same weight with ``output_size``
    the convolution's input size; for a transposed convolution, ``conv_matrix`` of the
    same weight on its output size, cut to the rows it keeps (``output_padding >= stride``
    makes the convolution's natural output longer than the transposed input).
    """
    n = case.full_input_shape[1:]
    if not case.transposed:
        Wt = convmat.conv_transpose_matrix(device(xp, w), case.output_shape,
                                           output_size=n, **case.conv_options)
        return [("conv_transpose_matrix(output_size=n)", host(Wt))]
    W = host(convmat.conv_matrix(device(xp, w), case.output_shape, **case.conv_options))
    natural = [(o + lo + hi - dl * (k - 1) - 1) // s + 1 for o, (lo, hi), dl, k, s in zip(
        case.out_size, case.pads, case.dilation, case.kernel, case.stride, strict=True)]
    grid = np.arange(W.shape[0]).reshape(case.full_weight_shape[0], *natural)
    kept = grid[(slice(None), *(slice(0, m) for m in n))].ravel()
    return [("conv_matrix(...)[kept rows]", W[kept])]


@on_backends
@given(case=ANY_CASE, dtype=st.sampled_from(DTYPES), integer=st.booleans(), seed=SEEDS)
@example(case=make_case((2, 1, 3), (2, 5), padding=((2, 0),), groups=2,
                        padding_mode="replicate"),
         dtype="complex64", integer=False, seed=1)
@example(case=make_case((3, 3), (4, 4), padding="same"),  # shorthand, W.T written directly
         dtype="complex64", integer=False, seed=2)
@example(case=make_case((4, 1, 2, 3), (2, 3, 4), groups=2, padding=((1, 0), (2, 1))),
         dtype="complex128", integer=True, seed=4)  # W^H written directly, conjugated
@example(case=make_case((1, 1, 2), (1, 3), transposed=True, dilation=3, output_padding=2,
                        padding_mode="reflect", padding=1),
         dtype="float64", integer=True, seed=3)
def test_adjointness(xp, case, dtype, integer, seed):
    """Every transpose convmat writes equals the naive scatter (or gather) loop.

    ``W.T @ y`` of the built matrix, ``op.T @ y``, ``op.H @ y``, ``op.adjoint_csr() @ y``
    and the other builder's matrix, against ``reference.case_adjoint`` (a scatter loop for
    a convolution, which shares no code with convmat and is not the gather transposed);
    and ``<W x, y> = <x, S y>`` with ``S`` that reference. Exact for integer-valued data,
    else within ``2 gamma(terms + 2)`` of ``sum |w| |y|`` per output (PyLops ``dottest``
    with a bound from the dtype's eps).
    """
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype, integer=integer)
    x = random_array(rng, case.full_input_shape, dtype, integer=integer)
    y = random_array(rng, (2, *case.output_shape), dtype, integer=integer)
    yf = y.reshape(2, case.output_channels, *case.out_size)  # with channel axes
    w128, y128 = w.astype(np.complex128), yf.astype(np.complex128)
    ref_t = np.stack([case_adjoint(case, w128, y128[i]) for i in range(2)])
    ref_h = np.stack([case_adjoint(case, w128.conj(), y128[i]) for i in range(2)])
    scale = np.stack([case_adjoint(case, np.abs(w).astype(float), np.abs(yf[i]).astype(float))
                      for i in range(2)]).real
    terms = case.adjoint_terms

    def check(got, ref, what):
        got = np.asarray(got).reshape(ref.shape)
        assert got.dtype == np.dtype(dtype), what
        try:
            assert_close(got, ref, scale[:len(ref)], terms, dtype, exact=integer)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None

    flat = y.reshape(2, -1)
    W = host(_matrix(case, w, xp))
    check((W.T @ flat.T).T, ref_t, "W.T @ y")
    for name, M in _transpose_builders(case, w, xp):
        assert_canonical_csr(M)
        check((M @ flat.T).T, ref_t, name)
    op = _operator(case, w, xp)
    check(host(op.T @ device(xp, y)), ref_t, "op.T @ y (batch)")
    check(host(op.T @ device(xp, y[0])), ref_t[:1], "op.T @ y (one)")
    check(host(op.H @ device(xp, y)), ref_h, "op.H @ y")
    adj = host(op.adjoint_csr())
    assert_canonical_csr(adj)
    check((adj @ flat.T).T, ref_h, "op.adjoint_csr() @ y")

    # <W x, y> = <x, S y>: convmat's forward against the reference's transpose
    wx = (W @ x.ravel()).astype(np.complex128)
    lhs = np.vdot(flat[0], wx)
    rhs = np.vdot(ref_h[0].ravel(), x.ravel().astype(np.complex128))
    fwd_scale = case_apply(case, np.abs(w).astype(float), np.abs(x).astype(float)).real
    dot_scale = float(np.abs(flat[0]) @ fwd_scale.ravel())
    bound = (2 * gamma(case.terms + 2, dtype)
             + 2 * gamma(case.terms + W.shape[0] + W.shape[1] + 2, "float64")) * dot_scale
    if integer:
        assert lhs == rhs
    else:
        assert abs(lhs - rhs) <= bound, (lhs, rhs, bound)


@on_backends
@given(case=ANY_CASE, seed=SEEDS)
def test_linearity(xp, case, seed):
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, "float64")
    op = _operator(case, w, xp)
    x1, x2 = rng.standard_normal((2, *op.input_shape))
    a, b = rng.standard_normal(2)
    lhs = host(op @ device(xp, a * x1 + b * x2))
    rhs = a * host(op @ device(xp, x1)) + b * host(op @ device(xp, x2))
    # |W(a x1 + b x2) - (a W x1 + b W x2)| <= 2 gamma(terms + 2) |W| (|a||x1| + |b||x2|)
    full = (1, *op.input_shape) if case.shorthand else op.input_shape
    scale = case_apply(case, np.abs(w), (abs(a) * np.abs(x1) + abs(b) * np.abs(x2))
                       .reshape(full)).reshape(lhs.shape)
    assert_close(lhs, rhs, 3 * scale, case.terms + 2, "float64")


@on_backends
@given(case=ANY_CASE, seed=SEEDS)
def test_nnz_matches_geometry_prediction(xp, case, seed):
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float64")
    geometry = convmat.conv_transpose_geometry if case.transposed else convmat.conv_geometry
    g = geometry(w, case.input_shape, **case.geometry_options)
    W = _matrix(case, w, xp)
    assert convmat.backend.array_namespace(W) is xp
    W = host(W)
    assert W.nnz == g.nnz
    assert W.shape == g.shape
    assert g.input_shape == tuple(case.input_shape)
    assert g.output_shape == tuple(case.output_shape)
    assert W.indices.dtype == g.index_dtype
    assert W.data.nbytes + W.indices.nbytes + W.indptr.nbytes == g.nbytes
    assert g.nbytes <= g.peak_bytes
    assert_canonical_csr(W)


@on_backends
@given(case=cases(), seed=SEEDS)
def test_conv_then_transpose_restores_shape(xp, case, seed):
    rng = np.random.default_rng(seed)
    w = device(xp, case.full(random_array(rng, case.weight_shape, "float64")))
    x = device(xp, rng.standard_normal((3, *case.full_input_shape)))
    y = convmat.conv(x, w, **case.options)
    out = convmat.output_shape(w, case.full_input_shape, **case.geometry_options)
    assert y.shape == (3, *out)
    # the transposed conv with output_size = the conv input size restores it
    back = convmat.conv_transpose(y, w, output_size=x.shape[2:], **case.conv_options)
    assert back.shape == x.shape
    # unbatched form too
    assert convmat.conv_transpose(y[0], w, output_size=x.shape[2:], **case.conv_options).shape \
        == x.shape[1:]


@on_backends
@given(case=cases(transposed=True), dtype=st.sampled_from(DTYPES), seed=SEEDS)
def test_transposed_matrix_is_transpose_of_conv(xp, case, dtype, seed):
    w = random_array(np.random.default_rng(seed), case.weight_shape, dtype)
    Wt = _matrix(case, w, xp)
    assert convmat.backend.array_namespace(Wt) is xp
    Wt = host(Wt)
    assert_canonical_csr(Wt)
    assert Wt.dtype == np.dtype(dtype)
    (name, Wc), = _transpose_builders(case, w, xp)
    assert Wc.T.shape == Wt.shape
    assert (Wt != Wc.T).nnz == 0, name


@on_backends
@given(case=st.one_of(cases(refusals=True), cases(transposed=True, refusals=True)),
       seed=SEEDS)
@example(case=make_case((1, 1, 3), (1, 4), transposed=True, stride=2, max_bytes=0), seed=0)
def test_max_bytes_decides_by_peak_bytes(xp, case, seed):
    """``max_bytes`` below ``peak_bytes`` refuses (naming nnz and bytes), at it builds.

    The drawn ``max_bytes`` (above any peak these shapes can reach, or below their
    ``indptr`` alone) must agree with ``peak_bytes``, computed without building anything.
    """
    w = random_array(np.random.default_rng(seed), case.weight_shape, "float32")
    geometry = convmat.conv_transpose_geometry if case.transposed else convmat.conv_geometry
    g = geometry(w, case.input_shape, **case.geometry_options)
    lower, upper = case.bytes_bounds()
    assert lower <= g.nbytes <= g.peak_bytes <= upper
    if case.max_bytes is not None and case.refuse is not None:
        assert (case.max_bytes < g.peak_bytes) == case.refuse
    message = rf"nnz={g.nnz:,} needs {g.peak_bytes:,} bytes"
    with pytest.raises(convmat.ConvMatrixTooLarge, match=message):
        _matrix(case, w, xp, max_bytes=g.peak_bytes - 1)
    W = host(_matrix(case, w, xp, max_bytes=g.peak_bytes))
    assert W.shape == g.shape and W.nnz == g.nnz
    if case.max_bytes is not None:
        if case.max_bytes < g.peak_bytes:
            with pytest.raises(convmat.ConvMatrixTooLarge, match=message):
                _matrix(case, w, xp)
        else:
            assert host(_matrix(case, w, xp)).nnz == g.nnz
    # the operator is lazy: it guards the matrix when it builds it, the forward one (a
    # transposed operator is the view of the forward matrix: no conversion)
    forward = g.T if case.transposed else g
    op = _operator(case, w, xp)
    assert not op.built and op.nnz == g.nnz
    if case.max_bytes is not None and case.max_bytes < forward.peak_bytes:
        with pytest.raises(convmat.ConvMatrixTooLarge, match=f"nnz={g.nnz:,}"):
            op.matrix  # noqa: B018
        assert not op.built
    else:
        assert host(op.matrix).nnz == g.nnz


def test_strategies_draw_the_whole_space():
    """The strategies reach every corner they promise (a strategy can rot silently)."""
    seen = set()

    @settings(max_examples=300, derandomize=True, database=None)
    @given(case=st.one_of(cases(refusals=True), cases(transposed=True, refusals=True)))
    def collect(case):
        fw = case.full_weight_shape
        seen.update(k for k, hit in [
            ("shorthand", case.shorthand),
            ("output_size", "output_size" in case.options),
            ("4 axes", case.ndim == 4),
            ("kernel > 3", max(case.kernel) > 3),
            ("stride > 3", max(case.stride) > 3),
            ("dilation > 2", max(case.dilation) > 2),
            ("padding > 2", max(max(p) for p in case.pads) > 2),
            ("channels per group > 2", not case.shorthand and fw[1] > 2),
            ("groups > 1", case.groups > 1),
            ("generous max_bytes", case.refuse is False and case.max_bytes is not None),
            ("small max_bytes", case.refuse is True),
            *((f"mode {m}", case.mode == m) for m in ("zeros", "reflect", "replicate",
                                                       "circular")),
        ] if hit)
        assert math.prod(case.full_input_shape) >= 1

    collect()
    assert seen >= {"shorthand", "output_size", "4 axes", "kernel > 3", "stride > 3",
                    "dilation > 2", "padding > 2", "channels per group > 2", "groups > 1",
                    "generous max_bytes", "small max_bytes", "mode zeros", "mode reflect",
                    "mode replicate", "mode circular"}, seen
