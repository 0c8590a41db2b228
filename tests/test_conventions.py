"""Conventions of other libraries: ``flip``, ``padding='full'`` and ``origin`` against them.

Each test states a mapping from another library's call to convmat's arguments (the table
"Conventions of other libraries" in the README) and checks it against that library:
``scipy.signal.convolve`` / ``correlate``, ``scipy.ndimage.convolve`` / ``correlate``,
``scipy.linalg.convolution_matrix``, ``np.pad`` followed by a naive valid correlation, and
MATLAB's ``convmtx2`` / ``conv2`` through naive loops written from their definitions
(column-major, 1-based) plus the documented ``conv(u, v, 'same')`` example.

Integer-valued data make every sum exact, so results are compared for equality; real-valued
data are compared within ``2 gamma(terms) sum |w| |x|`` (``reference.assert_close``).
"""

import itertools

import numpy as np
import pytest
import scipy.linalg
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import ndimage, signal

import convmat
from convmat import conv_matrix, conv_transpose_matrix

from reference import assert_canonical_csr, assert_close
from strategies import cases, random_array

SEEDS = st.integers(0, 2**32 - 1)
#: scipy.ndimage's mode -> convmat's padding_mode ('reflect' is the half-sample mirror).
NDIMAGE_MODES = {"constant": "zeros", "nearest": "replicate", "mirror": "reflect",
                 "wrap": "circular", "reflect": "symmetric"}
#: np.pad's mode -> convmat's padding_mode.
NUMPY_PAD_MODES = {"constant": "zeros", "edge": "replicate", "reflect": "reflect",
                   "wrap": "circular", "symmetric": "symmetric"}


def _need(mode):
    """Skip when ``mode`` is not (yet) a padding mode of convmat."""
    if mode not in convmat.geometry.PADDING_MODES:
        pytest.skip(f"padding_mode={mode!r} is not in convmat.geometry.PADDING_MODES yet")


def _available(modes):
    """The modes of another library whose convmat padding mode exists (hypothesis draws
    these; the explicit per-mode tests skip the others with a reason)."""
    return sorted(m for m, ours in modes.items() if ours in convmat.geometry.PADDING_MODES)


def _data(rng, shape, integer):
    return random_array(rng, shape, "float64", integer=integer)


def _compare(got, ref, scale, terms, integer):
    """Exact for integer data, else within the dot-product bound of ``terms`` products."""
    assert_close(got, ref, scale, terms, "float64", exact=integer)


@st.composite
def kernels_and_inputs(draw, at_least_kernel=True):
    """Kernel sizes (odd and even, 1-3 axes) and input sizes (at least the kernel's)."""
    ndim = draw(st.integers(1, 3))
    kmax = {1: 8, 2: 5, 3: 3}[ndim]
    k = tuple(draw(st.integers(1, kmax)) for _ in range(ndim))
    low = (lambda kk: kk) if at_least_kernel else (lambda kk: 1)
    return k, tuple(draw(st.integers(low(kk), kk + 4)) for kk in k)


def same_origin_of_signal_convolve(k):
    """``scipy.signal.convolve(..., 'same')``: ``origin = (k-1)//2 - k//2`` (0 odd, -1 even)."""
    return tuple((kk - 1) // 2 - kk // 2 for kk in k)


# --------------------------------------------------------------------------- scipy.signal

SIGNAL = {  # (function, mode) -> convmat arguments for kernel sizes k
    ("convolve", "full"): lambda k: dict(flip=True, padding="full"),
    ("convolve", "valid"): lambda k: dict(flip=True, padding="valid"),
    ("convolve", "same"): lambda k: dict(flip=True, padding="same",
                                         origin=same_origin_of_signal_convolve(k)),
    ("correlate", "full"): lambda k: dict(padding="full"),
    ("correlate", "valid"): lambda k: dict(padding="valid"),
    ("correlate", "same"): lambda k: dict(padding="same", origin=0),
}


@given(sizes=kernels_and_inputs(at_least_kernel=False), which=st.sampled_from(sorted(SIGNAL)),
       integer=st.booleans(), seed=SEEDS)
@example(sizes=((4,), (7,)), which=("convolve", "same"), integer=True, seed=0)
@example(sizes=((2, 4), (5, 6)), which=("correlate", "same"), integer=True, seed=1)
@example(sizes=((2, 2, 2), (3, 3, 4)), which=("convolve", "full"), integer=True, seed=2)
@example(sizes=((6,), (2,)), which=("convolve", "same"), integer=True, seed=3)
def test_scipy_signal(sizes, which, integer, seed):
    """``scipy.signal.convolve/correlate(x, w, mode, method='direct')`` == ``W @ x``
    ('valid' with an input at least as large as the kernel, as SciPy needs)."""
    k, n = sizes
    fn, mode = which
    if mode == "valid":
        n = tuple(max(nn, kk) for nn, kk in zip(n, k, strict=True))
    rng = np.random.default_rng(seed)
    w, x = _data(rng, k, integer), _data(rng, n, integer)
    W = conv_matrix(w, n, **SIGNAL[which](k))
    assert_canonical_csr(W)
    scipy_fn = getattr(signal, fn)
    ref = scipy_fn(x, w, mode=mode, method="direct")
    scale = scipy_fn(np.abs(x), np.abs(w), mode=mode, method="direct")
    _compare((W @ x.ravel()).reshape(ref.shape), ref, scale, w.size, integer)


def test_pytorch_same_differs_from_scipy_for_even_kernels():
    """``origin=None`` keeps PyTorch's split (extra element at the end), not SciPy's."""
    x, w = np.arange(1.0, 8.0), np.array([1.0, 10.0, 100.0, 1000.0])
    torch_same = conv_matrix(w, (7,), padding="same") @ x
    scipy_same = signal.correlate(x, w, mode="same", method="direct")
    assert not np.array_equal(torch_same, scipy_same)
    np.testing.assert_array_equal(conv_matrix(w, (7,), padding="same", origin=0) @ x,
                                  scipy_same)
    # PyTorch's 'same' is SciPy's origin -1 for a kernel of 4: lo = 1 instead of 2
    np.testing.assert_array_equal(conv_matrix(w, (7,), padding="same", origin=-1) @ x,
                                  torch_same)


# --------------------------------------------------------------------------- scipy.ndimage


@st.composite
def ndimage_cases(draw):
    """Kernel, input (at least the kernel: every mode can fill the border), origin, mode."""
    k, n = draw(kernels_and_inputs())
    origin = tuple(draw(st.integers(-(kk // 2), (kk - 1) // 2)) for kk in k)
    scalar = len(set(origin)) == 1 and draw(st.booleans())
    return k, n, origin[0] if scalar else origin, draw(st.sampled_from(_available(NDIMAGE_MODES)))


@given(case=ndimage_cases(), flip=st.booleans(), integer=st.booleans(), seed=SEEDS)
@example(case=((4,), (6,), -2, "mirror"), flip=True, integer=True, seed=0)
@example(case=((2, 3), (3, 4), (0, 1), "nearest"), flip=False, integer=True, seed=0)
@example(case=((3, 2, 2), (3, 3, 2), (-1, -1, 0), "wrap"), flip=True, integer=True, seed=0)
@example(case=((4, 1), (5, 3), (1, 0), "reflect"), flip=False, integer=True, seed=0)
def test_scipy_ndimage(case, flip, integer, seed):
    """``ndimage.correlate`` (``flip=False``) / ``convolve`` (``flip=True``) with ``origin``
    and each boundary mode == ``conv_matrix(w, n, padding='same', origin=...)``."""
    check_ndimage(case, flip, integer, seed)


@pytest.mark.parametrize("mode", sorted(NDIMAGE_MODES))
def test_scipy_ndimage_each_mode(mode):
    """Every mode of the table, even and odd kernels, both origins' signs, 2-D."""
    _need(NDIMAGE_MODES[mode])
    for flip, (k, n, origin) in itertools.product(
            (False, True), [((4, 3), (5, 6), (-2, 1)), ((2, 5), (2, 7), (0, -2)),
                            ((3, 2), (3, 3), (1, -1))]):
        check_ndimage((k, n, origin, mode), flip, True, 7)


def check_ndimage(case, flip, integer, seed):
    k, n, origin, mode = case
    rng = np.random.default_rng(seed)
    w, x = _data(rng, k, integer), _data(rng, n, integer)
    W = conv_matrix(w, n, padding="same", origin=origin, flip=flip,
                    padding_mode=NDIMAGE_MODES[mode])
    assert_canonical_csr(W)
    fn = ndimage.convolve if flip else ndimage.correlate
    ref = fn(x, w, mode=mode, cval=0.0, origin=origin)
    scale = fn(np.abs(x), np.abs(w), mode=mode, cval=0.0, origin=origin)
    _compare((W @ x.ravel()).reshape(n), ref, scale, w.size, integer)


# --------------------------------------------------------------------------- scipy.linalg


def _convolution_matrix_padding(m, n, mode):
    """convmat's padding of ``scipy.linalg.convolution_matrix(a, n, mode)``, any ``n``.

    It is ``np.convolve(a, v, mode)``: the full convolution (``m - 1`` on each side) cut
    to ``max(m, n)`` entries ('same', centred, the odd one cut at the end) or
    ``max(m, n) - min(m, n) + 1`` ('valid').
    """
    if mode == "full":
        return ((m - 1, m - 1),)
    trim = min(m, n) - 1
    tb = trim // 2 if mode == "same" else trim
    te = trim - tb if mode == "same" else trim
    return ((m - 1 - tb, m - 1 - te),)


@given(m=st.integers(1, 9), n=st.integers(1, 12), mode=st.sampled_from(["full", "valid", "same"]),
       seed=SEEDS)
@example(m=3, n=5, mode="same", seed=0)
@example(m=4, n=5, mode="same", seed=0)
@example(m=6, n=3, mode="valid", seed=0)
def test_scipy_linalg_convolution_matrix(m, n, mode, seed):
    """``convolution_matrix(a, n, mode)`` is ``conv_matrix(a, (n,), flip=True, ...)``:
    ``padding='full'``; for ``n >= len(a)`` ``'valid'`` and ``'same'`` with SciPy's
    origin; any ``n`` with the explicit padding of ``_convolution_matrix_padding``."""
    a = np.random.default_rng(seed).standard_normal(m)
    ref = scipy.linalg.convolution_matrix(a, n, mode)
    W = conv_matrix(a, (n,), flip=True, padding=_convolution_matrix_padding(m, n, mode))
    np.testing.assert_array_equal(W.toarray(), ref)  # every entry one tap: exact
    if mode == "full" or n >= m:
        kw = SIGNAL["convolve", mode]((m,))
        np.testing.assert_array_equal(conv_matrix(a, (n,), **kw).toarray(), ref)


# --------------------------------------------------------------------------- MATLAB


def matlab_conv2(A, B, shape="full"):
    """MATLAB's ``conv2(A, B, shape)`` from its definition, 1-based as documented.

    ``C(j, k) = sum_p sum_q A(p, q) B(j - p + 1, k - q + 1)`` over the full output
    ``(ma + mb - 1) x (na + nb - 1)``; 'valid' keeps rows ``mb .. ma`` and columns
    ``nb .. na`` (the part computed without the zero-padded edges).
    """
    ma, na = A.shape
    mb, nb = B.shape
    C = np.zeros((ma + mb - 1, na + nb - 1))
    for j, k in itertools.product(range(1, ma + mb), range(1, na + nb)):
        total = 0.0
        for p, q in itertools.product(range(1, ma + 1), range(1, na + 1)):
            if 1 <= j - p + 1 <= mb and 1 <= k - q + 1 <= nb:
                total += A[p - 1, q - 1] * B[j - p, k - q]
        C[j - 1, k - 1] = total
    if shape == "valid":
        return C[mb - 1:ma, nb - 1:na]
    return C


def matlab_convmtx2(H, m, n):
    """MATLAB's ``T = convmtx2(H, m, n)``, column by column from its definition.

    ``T * X(:)`` is ``conv2(X, H)`` stacked column-major, for an ``m x n`` ``X``: column
    ``j`` of ``T`` (the ``j``-th entry of ``X(:)``, ``X(p, q)`` with ``j = p + (q-1)*m``)
    is ``conv2(E_pq, H)(:)``, ``E_pq`` the unit matrix at ``(p, q)``.
    """
    mh, nh = H.shape
    rows, cols = m + mh - 1, n + nh - 1
    T = np.zeros((rows * cols, m * n))
    for q, p in itertools.product(range(1, n + 1), range(1, m + 1)):
        E = np.zeros((m, n))
        E[p - 1, q - 1] = 1.0
        T[:, (p - 1) + (q - 1) * m] = matlab_conv2(E, H).ravel(order="F")
    return T


@given(mh=st.integers(1, 4), nh=st.integers(1, 4), m=st.integers(1, 4), n=st.integers(1, 4),
       seed=SEEDS)
@example(mh=2, nh=3, m=3, n=4, seed=0)
def test_matlab_convmtx2(mh, nh, m, n, seed):
    """``convmtx2(H, m, n) == conv_matrix(H.T, (n, m), padding='full', flip=True)``.

    Column-major: ``X(:)`` of an ``m x n`` ``X`` is ``X.T.ravel()``, and the full 2-D
    convolution commutes with the transposition, ``conv2(X, H).T = conv2(X.T, H.T)``.
    """
    H = np.random.default_rng(seed).integers(-4, 5, size=(mh, nh)).astype(np.float64)
    W = conv_matrix(H.T, (n, m), padding="full", flip=True)
    np.testing.assert_array_equal(W.toarray(), matlab_convmtx2(H, m, n))


@given(ma=st.integers(1, 5), na=st.integers(1, 5), mb=st.integers(1, 4), nb=st.integers(1, 4),
       shape=st.sampled_from(["full", "valid"]), seed=SEEDS)
def test_matlab_conv2(ma, na, mb, nb, shape, seed):
    """``conv2(A, B, 'full')`` is ``flip=True, padding='full'``; ``'valid'`` (``A`` at
    least as large as ``B``) is ``flip=True, padding='valid'``."""
    if shape == "valid" and (ma < mb or na < nb):
        ma, na = max(ma, mb), max(na, nb)
    rng = np.random.default_rng(seed)
    A = rng.integers(-4, 5, size=(ma, na)).astype(np.float64)
    B = rng.integers(-4, 5, size=(mb, nb)).astype(np.float64)
    ref = matlab_conv2(A, B, shape)
    W = conv_matrix(B, A.shape, padding=shape, flip=True)
    np.testing.assert_array_equal((W @ A.ravel()).reshape(ref.shape), ref)


def test_matlab_conv_same_documented_example():
    """MATLAB's documentation of ``conv``, "Central Part of Convolution":
    ``conv([-1 2 3 -2 0 1 2], [2 4 -1 1], 'same')`` is ``[15 5 -9 7 6 7 -1]``. The central
    part starts at ``floor(k/2)`` of the full result: PyTorch's 'same' split, flipped."""
    u = np.array([-1.0, 2, 3, -2, 0, 1, 2])
    v = np.array([2.0, 4, -1, 1])
    W = conv_matrix(v, (7,), padding="same", flip=True)
    np.testing.assert_array_equal(W @ u, [15, 5, -9, 7, 6, 7, -1])


# --------------------------------------------------------------------------- np.pad


def naive_correlate_valid(xp, w, stride, dilation):
    """Valid cross-correlation of a padded array by loops (no flip)."""
    k = w.shape
    out = tuple((n - d * (kk - 1) - 1) // s + 1
                for n, kk, s, d in zip(xp.shape, k, stride, dilation, strict=True))
    y = np.zeros(out)
    for p in itertools.product(*(range(o) for o in out)):
        y[p] = sum(w[t] * xp[tuple(s * pp + d * tt for pp, tt, s, d in
                                   zip(p, t, stride, dilation, strict=True))]
                   for t in itertools.product(*(range(kk) for kk in k)))
    return y


@st.composite
def pad_cases(draw):
    ndim = draw(st.integers(1, 3))
    kmax, nmax = {1: (6, 9), 2: (3, 6), 3: (2, 4)}[ndim]
    mode = draw(st.sampled_from(_available(NUMPY_PAD_MODES)))
    k = tuple(draw(st.integers(1, kmax)) for _ in range(ndim))
    s = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    d = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    n, pads = [], []
    for kk, dd in zip(k, d, strict=True):
        nn = draw(st.integers(1, nmax))
        # reflect: padding < n; the others: at most n (wrap and symmetric repeat once)
        top = nn - 1 if NUMPY_PAD_MODES[mode] == "reflect" else nn
        lo, hi = draw(st.integers(0, top)), draw(st.integers(0, top))
        while nn + lo + hi < dd * (kk - 1) + 1:  # the dilated kernel must fit
            nn += 1
            top = nn - 1 if NUMPY_PAD_MODES[mode] == "reflect" else nn
        n.append(nn)
        pads.append((lo, hi))
    return k, tuple(n), tuple(pads), s, d, mode


@given(case=pad_cases(), seed=SEEDS)
@example(case=((3,), (4,), ((3, 4),), (1,), (1,), "wrap"), seed=0)
@example(case=((2, 2), (3, 2), ((2, 1), (0, 2)), (2, 1), (1, 2), "symmetric"), seed=0)
def test_numpy_pad_modes(case, seed):
    """``correlate_valid(np.pad(x, pads, mode))`` == ``conv_matrix(w, n, padding=pads,
    padding_mode=...)``, with stride and dilation."""
    check_numpy_pad(case, seed)


@pytest.mark.parametrize("mode", sorted(NUMPY_PAD_MODES))
def test_numpy_pad_each_mode(mode):
    """Every mode of the table, padding up to what it allows, strided and dilated."""
    _need(NUMPY_PAD_MODES[mode])
    top = 3 if NUMPY_PAD_MODES[mode] == "reflect" else 4
    check_numpy_pad(((3, 2), (4, 5), ((top, 1), (2, top)), (2, 1), (1, 2), mode), 5)


def check_numpy_pad(case, seed):
    k, n, pads, stride, dilation, mode = case
    rng = np.random.default_rng(seed)
    w = rng.integers(-4, 5, size=k).astype(np.float64)
    x = rng.integers(-4, 5, size=n).astype(np.float64)
    ref = naive_correlate_valid(np.pad(x, pads, mode=mode), w, stride, dilation)
    W = conv_matrix(w, n, padding=pads, padding_mode=NUMPY_PAD_MODES[mode], stride=stride,
                    dilation=dilation)
    assert_canonical_csr(W)
    np.testing.assert_array_equal((W @ x.ravel()).reshape(ref.shape), ref)


# --------------------------------------------------------------------------- with every option


def _flipped(case, w):
    """The weight with every spatial axis reversed (channels first, or the shorthand)."""
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(w.ndim - case.ndim, w.ndim))))


@given(case=cases(), seed=SEEDS)
def test_flip_is_the_reversed_kernel_with_every_option(case, seed):
    """``flip=True`` == the kernel reversed on every spatial axis, with ``flip=False``."""
    w = np.random.default_rng(seed).integers(-4, 5, size=case.weight_shape).astype(float)
    W = conv_matrix(w, case.input_shape, flip=True, **case.conv_options)
    assert_canonical_csr(W)
    ref = conv_matrix(_flipped(case, w), case.input_shape, **case.conv_options)
    np.testing.assert_array_equal(W.toarray(), ref.toarray())


@given(case=cases(transposed=True), seed=SEEDS)
def test_flip_transposed_is_the_transpose_of_the_flipped_conv(case, seed):
    """``conv_transpose_matrix(..., flip=True)`` is the transposed convolution of the
    reversed kernel, and ``conv_matrix(..., flip=True).T`` when that conv's output is the
    transposed input (no ``output_padding >= stride`` cut)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-4, 5, size=case.weight_shape).astype(float)
    Wt = conv_transpose_matrix(w, case.input_shape, flip=True, **case.options)
    assert_canonical_csr(Wt)
    ref = conv_transpose_matrix(_flipped(case, w), case.input_shape, **case.options)
    np.testing.assert_array_equal(Wt.toarray(), ref.toarray())
    g = convmat.conv_transpose_geometry(w, case.input_shape, flip=True,
                                        **case.geometry_options)
    assert g.flip and g.weight_shape == tuple(w.shape)
    forward = convmat.conv_geometry(w, g.output_shape, **case.conv_options)
    if forward.output_shape == g.input_shape:
        W = conv_matrix(w, g.output_shape, flip=True, **case.conv_options)
        np.testing.assert_array_equal(Wt.toarray(), W.toarray().T)
    op = convmat.ConvOperator.transposed(w, case.input_shape, flip=True, **case.options)
    y = rng.integers(-4, 5, size=case.input_shape).astype(float)
    np.testing.assert_array_equal((op @ y).ravel(), Wt @ y.ravel())


@given(case=cases(), data=st.data())
def test_full_and_origin_resolve_to_their_padding(case, data):
    """``'full'``: ``lo = hi = dilation*(k-1)`` with any stride; ``'same'`` with ``origin``:
    ``lo = dilation*c`` (``dilation*(k-1-c)`` flipped), ``c = k//2 + origin``."""
    opts = {k: v for k, v in case.conv_options.items() if k != "padding"}
    opts["padding_mode"] = "zeros"  # zeros fit any padding
    k, dl = case.kernel, case.dilation
    g = convmat.conv_geometry(case.weight_shape, case.input_shape, padding="full", **opts)
    assert g.padding == tuple((d * (kk - 1), d * (kk - 1)) for kk, d in zip(k, dl, strict=True))
    origin = tuple(data.draw(st.integers(-(kk // 2), (kk - 1) // 2)) for kk in k)
    flip = data.draw(st.booleans())
    opts["stride"] = 1  # 'same' needs stride 1
    g = convmat.conv_geometry(case.weight_shape, case.input_shape, padding="same",
                              origin=origin, flip=flip, **opts)
    for (lo, hi), kk, d, o in zip(g.padding, k, dl, origin, strict=True):
        c = kk // 2 + o
        assert lo == d * (kk - 1 - c if flip else c) and lo + hi == d * (kk - 1)
    assert g.output_size == g.input_size


def test_conv_and_operator_take_the_conventions():
    """``conv`` and ``ConvOperator`` resolve ``flip``, ``padding='full'`` and ``origin``
    as ``conv_matrix`` does (through the geometry)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-4, 5, size=(3, 2, 2, 3)).astype(float)
    x = rng.integers(-4, 5, size=(2, 2, 5, 6)).astype(float)
    for opts in (dict(flip=True, padding="full", stride=2),
                 dict(padding="same", origin=(-1, 1), flip=True, padding_mode="circular")):
        W = conv_matrix(w, x.shape[1:], **opts)
        op = convmat.ConvOperator(w, x.shape[1:], **opts)
        ref = np.stack([(W @ xi.ravel()).reshape(op.output_shape) for xi in x])
        np.testing.assert_array_equal(convmat.conv(x, w, **opts), ref)
        np.testing.assert_array_equal(op @ x, ref)
        assert "flip=True" in op.describe() and "flip" in op._repr_html_()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(origin=0), ValueError,
         r"origin=0 needs padding='same' \(it places the kernel's centre\), got padding=0"),
        (dict(origin=(0, 0), padding="full"), ValueError,
         r"origin=\(0, 0\) needs padding='same'.*got padding='full'"),
        (dict(origin=(0, 2), padding="same"), ValueError,
         r"origin must satisfy -\(k//2\) <= origin <= \(k-1\)//2; axis 1 has origin=2 for "
         r"kernel size k=4 \(allowed -2\.\.1\)"),
        (dict(origin=-2, padding="same"), ValueError, r"axis 0 has origin=-2 for kernel size k=3"),
        (dict(origin=(0, 0, 0), padding="same"), ValueError,
         r"origin=\(0, 0, 0\) has 3 entries but the convolution has 2 spatial axes"),
        (dict(origin=0.5, padding="same"), TypeError, r"origin must be an int, got 0\.5"),
        (dict(flip=1), TypeError, r"flip must be a bool, got 1 \(int\)"),
        (dict(flip="yes"), TypeError, r"flip must be a bool, got 'yes' \(str\)"),
    ],
)
def test_convention_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        conv_matrix(np.ones((2, 1, 3, 4)), (1, 8, 8), **kwargs)
    with pytest.raises(exc, match=match):  # every entry point resolves them alike
        convmat.ConvOperator.transposed(np.ones((2, 1, 3, 4)), (2, 8, 8), **kwargs)


def test_flip_accepts_numpy_bools():
    W = conv_matrix(np.arange(3.0), (5,), flip=np.True_)
    np.testing.assert_array_equal(W @ np.eye(5)[0], [2.0, 0, 0])
