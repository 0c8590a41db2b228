"""Singular values, certified spectral norms, svds and conditioning against the dense SVD.

The reference matrix is written entry by entry by the naive loops of ``reference.py`` (no
code shared with convmat's builder); its singular values come from NumPy's dense SVD.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convmat
from convmat.spectral import circular_spectrum, embedding_bound, pointwise_norm

from reference import case_entries, dense
from strategies import DTYPES, cases, random_array

ANY_CASE = st.one_of(cases(max_ndim=3), cases(transposed=True, max_ndim=3))


def operator(case, w, **extra):
    make = convmat.ConvOperator.transposed if case.transposed else convmat.ConvOperator
    options = {k: v for k, v in case.options.items() if k != "max_bytes"}
    return make(w, case.input_shape, **options, **extra)


def reference_svd(case, w):
    entries, shape, _ = case_entries(case, w)
    return np.linalg.svd(dense(entries, shape, w.dtype), compute_uv=False)


def tolerance(dtype, s):
    """Backward-stable SVD of a small matrix: a few hundred eps of the largest value."""
    return 200 * np.finfo(np.dtype(dtype)).eps * max(float(s.max(initial=0.0)), 1e-300)


# --------------------------------------------------------------------------- circular, by FFT
def circular_case(rng):
    nd = int(rng.integers(1, 4))
    groups = int(rng.integers(1, 3))
    cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k = [int(v) for v in rng.integers(1, 4, nd)]
    s = [int(v) for v in rng.integers(1, 3, nd)]
    d = [int(v) for v in rng.integers(1, 3, nd)]
    n = [si * int(rng.integers(2, 4)) for si in s]
    # output n / s: lo + hi = d (k - 1) - r with 0 <= r < s, split at random
    pads = []
    for kk, dd, ss in zip(k, d, s, strict=True):
        total = dd * (kk - 1) - int(rng.integers(0, min(ss - 1, dd * (kk - 1)) + 1))
        lo = int(rng.integers(0, total + 1))
        pads.append((lo, total - lo))
    if any(max(p) > nn for p, nn in zip(pads, n, strict=True)):
        return None
    dtype = str(rng.choice(["float32", "float64", "complex64", "complex128"]))
    w = random_array(rng, (cout, cin // groups, *k), dtype)
    return w, (cin, *n), dict(stride=s, dilation=d, groups=groups, padding=tuple(pads),
                              padding_mode="circular")


@pytest.mark.parametrize("seed", range(40))
def test_circular_singular_values_by_fft_equal_the_dense_svd(seed):
    rng = np.random.default_rng(seed)
    drawn = None
    while drawn is None:
        drawn = circular_case(rng)
    w, shape, options = drawn
    op = convmat.ConvOperator(w, shape, **options)
    assert op.output_shape[1:] == tuple(n // s for n, s in zip(shape[1:], options["stride"],
                                                               strict=True))
    s = circular_spectrum(op)
    assert s is not None
    ref = np.linalg.svd(op.matrix.toarray(), compute_uv=False)
    got = np.sort(s)[::-1][:ref.size]
    np.testing.assert_allclose(got, ref, rtol=0, atol=tolerance(w.dtype, ref))
    assert np.all(np.sort(s)[::-1][ref.size:] <= tolerance(w.dtype, ref))  # wide: zeros
    for view in (op.T, op.H, convmat.ConvOperator.transposed(w, op.output_shape, **{
            k: v for k, v in options.items()})):
        if view.shape[::-1] == op.shape or view.shape == op.shape:
            np.testing.assert_allclose(np.sort(circular_spectrum(view))[::-1][:ref.size], ref,
                                       rtol=0, atol=tolerance(w.dtype, ref))
    sv = convmat.singular_values(op)
    assert sv.shape == (min(op.shape),)
    np.testing.assert_allclose(sv, ref, rtol=0, atol=tolerance(w.dtype, ref))


def test_circular_spectrum_declines_what_is_not_block_circulant():
    w = np.ones((1, 1, 3))
    assert circular_spectrum(convmat.ConvOperator(w, (1, 8), padding=1)) is None  # zeros
    assert circular_spectrum(convmat.ConvOperator(w, (1, 8), padding=2,
                                                  padding_mode="circular")) is None  # 10 out
    assert circular_spectrum(convmat.ConvOperator(w, (1, 9), padding=1, stride=2,
                                                  padding_mode="circular")) is None  # 2 ∤ 9
    assert circular_spectrum(convmat.identity_operator((3,))) is None


# --------------------------------------------------------------------------- the bracket
@settings(max_examples=300, deadline=None)  # the 300 random small operators
@given(case=ANY_CASE, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_the_bracket_holds_and_the_value_is_exact(case, dtype, seed):
    rng = np.random.default_rng(seed)
    w = random_array(rng, case.weight_shape, dtype)
    op = operator(case, w)
    ref = reference_svd(case, w)
    top = float(ref.max(initial=0.0))
    tol = tolerance(w.dtype, ref)
    assert embedding_bound(op) >= top - tol
    exact = convmat.spectral_norm(op)  # small: the dense SVD (or the FFT)
    assert exact.method in ("dense", "fft", "pointwise")
    assert exact.lower - tol <= top <= exact.upper + tol
    assert abs(exact.value - top) <= tol
    if min(op.shape) <= 3 or top == 0:  # tiny: always the dense SVD
        return
    lanczos = convmat.spectral_norm(op, dense_limit=0)  # Lanczos and the proven bounds
    if circular_spectrum(op) is not None or pointwise_norm(op) is not None:
        assert lanczos.method in ("fft", "pointwise")
        return
    assert lanczos.method == "lanczos" and lanczos.products > 0
    assert lanczos.lower - tol <= top <= lanczos.upper + tol
    assert lanczos.lower <= lanczos.value <= lanczos.upper


@pytest.mark.parametrize("seed", range(10))
def test_lanczos_value_reaches_rtol(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3))
    mode = ["zeros", "reflect", "replicate", "symmetric", "circular"][seed % 5]
    op = convmat.ConvOperator(w, (3, 9, 8), stride=(1 + seed % 2, 1), padding=1,
                              padding_mode=mode)
    top = np.linalg.norm(op.matrix.toarray(), 2)
    r = convmat.spectral_norm(op, rtol=1e-10, dense_limit=0)
    assert r.lower <= top * (1 + 1e-12) and top <= r.upper * (1 + 1e-12)
    assert abs(r.value - top) <= 1e-8 * top
    assert 0 <= r.width < 1


def test_bracket_of_compositions_and_layers():
    rng = np.random.default_rng(1)
    conv = convmat.ConvOperator(rng.standard_normal((3, 2, 3, 3)), (2, 8, 8), padding=1,
                                padding_mode="reflect")
    pool = convmat.avg_pool_operator((3, 8, 8), 2)
    up = convmat.upsample_operator((3, 4, 4), scale_factor=2, mode="bilinear")
    ops = [pool @ conv, 2.5 * (up @ pool @ conv), conv.T @ pool.T,
           convmat.vstack([conv, conv]), conv + conv, conv.reshape(output_shape=(192,))]
    for op in ops:
        top = np.linalg.norm(op.matrix.toarray(), 2)
        r = convmat.spectral_norm(op, dense_limit=0)
        assert r.lower <= top * (1 + 1e-12) <= r.upper * (1 + 1e-12) + 1e-300, op
        assert abs(r.value - top) <= 1e-6 * top


# --------------------------------------------------------------------------- svds, conditioning
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_svds_against_the_dense_svd(which):
    rng = np.random.default_rng(2)
    op = convmat.ConvOperator(rng.standard_normal((2, 2, 3, 3)), (2, 7, 6), padding=1,
                              padding_mode="replicate")
    t = convmat.svds(op, 3, which=which)
    ref = np.linalg.svd(op.matrix.toarray(), compute_uv=False)
    ref = ref[:3] if which == "largest" else np.sort(ref)[:3]
    np.testing.assert_allclose(t.s, ref, rtol=1e-8)
    assert t.u.shape == (3, *op.output_shape) and t.v.shape == (3, *op.input_shape)
    for i in range(3):  # A v = s u, A^H u = s v, unit vectors
        np.testing.assert_allclose(op @ t.v[i], t.s[i] * t.u[i], atol=1e-8 * ref.max())
        np.testing.assert_allclose(op.H @ t.u[i], t.s[i] * t.v[i], atol=1e-8 * ref.max())
        assert np.isclose(np.linalg.norm(t.v[i]), 1)
    assert t.residuals.max() < 1e-8 * ref.max()


def test_condition_number():
    rng = np.random.default_rng(3)
    op = convmat.ConvOperator(rng.standard_normal((2, 2, 3)), (2, 12), padding=1)
    s = np.linalg.svd(op.matrix.toarray(), compute_uv=False)
    assert np.isclose(convmat.condition_number(op), s[0] / s[-1])
    assert np.isclose(convmat.condition_number(op, dense_limit=0), s[0] / s[-1], rtol=1e-6)
    singular = convmat.ConvOperator(np.zeros((1, 1, 2)), (1, 5))
    assert convmat.condition_number(singular) == np.inf


def test_errors():
    big = convmat.ConvOperator(np.ones((3, 3)), (64, 64), padding=1)
    with pytest.raises(ValueError, match=r"the operator is 4096 x 4096 \(16,777,216 entries > "
                                         r"dense_limit=1,000\).*use convmat.svds\(op, k\)"):
        convmat.singular_values(big, dense_limit=1000)
    with pytest.raises(ValueError, match=r"which='middle' must be 'largest' or 'smallest'"):
        convmat.svds(big, 1, which="middle")
    with pytest.raises(ValueError, match=r"k=0 must satisfy 1 <= k < 4096 \(min\(m, n\) = "
                                         r"4096\)"):
        convmat.svds(big, 0)
    small = convmat.ConvOperator(np.ones((1, 1, 2), dtype=complex), (1, 5))
    with pytest.raises(ValueError, match=r"k=3 must satisfy 1 <= k < 3 \(min\(m, n\) = 4, "
                                         r"less 1 for complex operators\)"):
        convmat.svds(small, 3)


# --------------------------------------------------------------------------- networks
def small_network(torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.1),
        nn.MaxPool2d(3, stride=1, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.2, 2.0)
    return net.double().eval()


def test_lipschitz_bound_of_a_small_network():
    torch = pytest.importorskip("torch")
    net = small_network(torch)
    r = convmat.lipschitz_bound(net, (1, 8, 8))
    assert [name for name, _ in r.layers] == ["0: Conv2d", "1: BatchNorm2d", "4: Conv2d",
                                              "7: AvgPool2d", "8: Flatten", "9: Linear"]
    assert [name for name, _ in r.runs] == ["0: Conv2d -> 1: BatchNorm2d", "4: Conv2d",
                                            "7: AvgPool2d -> 8: Flatten -> 9: Linear"]
    # the overlapping 3x3 stride-1 max pool: each input in up to 9 windows
    assert dict(r.nonlinear)["6: MaxPool2d"] == 3.0 and dict(r.nonlinear)["3: MaxPool2d"] == 1
    # each value and bracket against the dense SVD of the layer's own matrix
    for (name, s), module in zip(r.layers, [net[0], net[1], net[4], net[7], net[8], net[9]],
                                 strict=True):
        shape = {"0": (1, 8, 8), "1": (4, 8, 8), "4": (4, 4, 4), "7": (4, 4, 4), "8": (4, 2, 2),
                 "9": (16,)}[name.split(":")[0]]
        dense = np.linalg.norm(convmat.from_torch(module, shape).matrix.toarray(), 2)
        assert s.lower <= dense * (1 + 1e-12) and dense <= s.upper * (1 + 1e-12), name
    assert r.estimate <= r.bound * (1 + 1e-12)
    assert r.bound <= r.product_of_layers * (1 + 1e-9)  # the exact runs are tighter
    assert r.estimate < 0.99 * r.product_of_layers
    # empirical ratios over random pairs, near and far, and the local Jacobians' norms
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, 8, 8, dtype=torch.float64, generator=g)
    for scale in (1e-4, 1e-1, 3.0):
        y = x + scale * torch.randn(x.shape, dtype=torch.float64, generator=g)
        with torch.no_grad():
            num = (net(x) - net(y)).flatten(1).norm(dim=1)
        ratio = (num / (x - y).flatten(1).norm(dim=1)).max().item()
        assert ratio <= r.bound * (1 + 1e-12)
    for i in range(3):
        local = convmat.from_torch(net, (1, 8, 8), at=x[i])
        assert convmat.spectral_norm(local).upper <= r.bound * (1 + 1e-9)


def test_lipschitz_bound_errors():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Sequential, got Linear"):
        convmat.lipschitz_bound(nn.Linear(2, 2), (2,))
    with pytest.raises(ValueError, match=r"1: Sigmoid at position 1 is neither a linear module"):
        convmat.lipschitz_bound(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()), (2,))
    with pytest.raises(ValueError, match=r"0: LeakyReLU has negative_slope=2.0 > 1"):
        convmat.lipschitz_bound(nn.Sequential(nn.LeakyReLU(2.0)), (2,))


@pytest.mark.parametrize("seed", range(12))
def test_embedding_bound_is_the_circular_norm_on_the_torus(seed):
    """The bound (half the frequencies for a real kernel) equals the dense norm of the
    circular convolution on the torus that holds the padded input."""
    rng = np.random.default_rng(500 + seed)
    nd = 1 + seed % 2
    s = int(rng.integers(1, 3))
    k, p = int(rng.integers(1, 4)), int(rng.integers(0, 2))
    n = s * int(rng.integers(2, 5)) - 2 * p
    n += s if n < k else 0
    dtype = ["float64", "complex128"][seed % 3 == 0]
    w = random_array(rng, (3, 2, *(k,) * nd), dtype)
    op = convmat.ConvOperator(w, (2, *(n,) * nd), stride=s, padding=p)
    torus = n + 2 * p  # a multiple of s: the bound's torus
    assert torus % s == 0
    total = k - 1 - min(s - 1, k - 1)  # a circular convolution with output torus / s
    circ = convmat.ConvOperator(w, (2, *(torus,) * nd), stride=s,
                                padding=((0, total),) * nd, padding_mode="circular")
    assert circ.output_shape[1:] == (torus // s,) * nd
    dense = np.linalg.norm(circ.matrix.toarray(), 2)
    assert np.isclose(embedding_bound(op), dense, rtol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_pointwise_norm_is_exact(seed):
    rng = np.random.default_rng(700 + seed)
    g = 1 + seed % 2
    w = rng.standard_normal((2 * g, 3, 1, 1))
    op = convmat.ConvOperator(w, (3 * g, 7, 6), stride=1 + seed % 3, padding=seed % 2,
                              groups=g)
    dense = np.linalg.norm(op.matrix.toarray(), 2)
    r = convmat.spectral_norm(op, dense_limit=0)
    assert r.method == "pointwise"
    assert r.lower <= dense * (1 + 1e-13) and dense <= r.upper * (1 + 1e-13)
    assert np.isclose(r.value, dense, rtol=1e-13)
    assert pointwise_norm(convmat.ConvOperator(w[:, :, :1, :1], (3 * g, 7, 6), groups=g,
                                               padding=1, padding_mode="reflect")) is None
    far = convmat.ConvOperator(np.ones((1, 1, 1)), (1, 1), padding=2, stride=3)  # reads zeros
    assert far.output_shape == (1, 2) and far.nnz == 0 and pointwise_norm(far) is None


@pytest.mark.parametrize("seed", range(10))
def test_gram_bound(seed):
    import scipy.sparse as sp

    from convmat.spectral import gram_bound

    rng = np.random.default_rng(800 + seed)
    dtype = [np.float32, np.float64, np.complex128][seed % 3]
    a = sp.random_array((30, 20), density=0.2, rng=rng, format="csr").astype(dtype)
    if seed % 3 == 2:
        a = a + 1j * sp.random_array((30, 20), density=0.2, rng=rng, format="csr")
    dense = np.linalg.norm(a.toarray(), 2)
    absolute = abs(a)
    holder = np.sqrt(absolute.sum(axis=0).max() * absolute.sum(axis=1).max())
    bound = gram_bound(a)
    assert dense <= bound * (1 + 1e-6) and bound <= holder * (1 + 1e-6)
    assert bound <= 1.5 * dense  # four squarings: at most rank^(1/32) above
    assert gram_bound(sp.csr_array((3, 4))) == 0.0


def test_review_cases(monkeypatch):
    """Cases a review found: float32 / complex64 scalings whose matrices round their
    entries (the upper bound carries that rounding), and a start vector with no real part."""
    rng = np.random.default_rng(1)
    bn = convmat.batch_norm_operator((1, 6, 5), rng.standard_normal(1), [2.0],
                                     dtype=np.float32)
    up = convmat.upsample_operator((2, 4, 3), scale_factor=2, mode="nearest-exact",
                                   dtype=np.complex64)
    for op in (-3.7 * bn, (0.3 - 2j) * up):
        dense = np.linalg.norm(op.matrix.toarray().astype(np.complex128), 2)
        r = convmat.spectral_norm(op, dense_limit=0)
        assert r.lower <= dense <= r.upper, (op, r, dense)
    from convmat import spectral

    op = convmat.ConvOperator(rng.standard_normal((2, 1, 3)), (1, 9), padding=1)
    upper = spectral.embedding_bound(op)
    monkeypatch.setattr(spectral, "_bounds", lambda o: (upper, 1j * np.ones(o.shape[1])))
    r = convmat.spectral_norm(op, dense_limit=0)  # the real part of the start is zero
    dense = np.linalg.norm(op.matrix.toarray(), 2)
    assert r.lower <= dense * (1 + 1e-12) and abs(r.value - dense) <= 1e-6 * dense


def test_second_review_cases():
    """lipschitz_bound refuses look-alike activations; zero operators on the Lanczos path;
    Hoelder's rounding in float32; rank-deficient conditioning on the Lanczos path."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class ReLU(nn.Module):
        def forward(self, x):
            return 10 * x

    net = nn.Sequential(nn.Conv1d(1, 1, 1, bias=False), ReLU()).double().eval()
    with pytest.raises(ValueError, match=r"1: ReLU is not torch.nn.ReLU itself"):
        convmat.lipschitz_bound(net, (1, 8))
    hooked = nn.ReLU()
    hooked.register_forward_hook(lambda m, i, o: 10 * o)
    with pytest.raises(ValueError, match=r"0: ReLU is not torch.nn.ReLU itself"):
        convmat.lipschitz_bound(nn.Sequential(hooked), (3,))
    zero = convmat.ConvOperator(np.ones((4, 2, 1)), (4, 2), stride=4, padding=((1, 4),),
                                groups=2)
    assert zero.nnz == 0
    r = convmat.spectral_norm(zero, dense_limit=0)
    assert r.value == 0 and r.lower == 0 and r.upper >= 0
    pool = convmat.avg_pool_operator((1, 40, 40), 10, 10, dtype=np.float32)
    dense = np.linalg.norm(pool.matrix.toarray().astype(np.float64), 2)
    assert dense <= convmat.spectral_norm(pool, dense_limit=0).upper
    diff = convmat.ConvOperator(np.array([1.0, -1.0]), (400,), padding=((0, 1),),
                                padding_mode="replicate")
    assert convmat.condition_number(diff, dense_limit=0) == np.inf


# --------------------------------------------------------------------------- the roundings
def _float64_norm_ratio(op, v):
    """``||A v|| / ||v||`` from the operator's dense matrix widened to double precision."""
    a = op.matrix.toarray()
    a = a.astype(np.result_type(a.dtype, np.float64))
    v = v.astype(np.result_type(v.dtype, np.float64))
    return np.linalg.norm(a @ v) / np.linalg.norm(v)


@pytest.mark.parametrize("dtype", ["float32", "complex64", "float64"])
def test_the_lower_bound_carries_the_products_rounding(dtype):
    """The certified ratio sits under the ratio of the exact matrix (widened to float64),
    by at most ``gamma_K`` times the entrywise-absolute product ``|A_1| |A_2| ... |v|``
    (written here with dense NumPy matrices), for convolutions of every kind and their
    compositions, sums, scalings and stacks."""
    from convmat.spectral import _certified_ratio

    rng = np.random.default_rng(3)
    w = random_array(rng, (4, 3, 3, 3), dtype)
    c = [convmat.ConvOperator(w, (3, 11, 12), stride=2, padding=2, padding_mode=mode)
         for mode in ("zeros", "reflect", "circular", "replicate")]
    # |A| tap by tap: the matrix of |w| (a padded sample read by two taps sums both)
    m = [op.with_weight(abs(w)).matrix.toarray().astype(np.float64) for op in c]
    cases = [(op, a) for op, a in zip(c, m, strict=True)]
    cases += [(c[0].T, m[0].T), (c[1].H, m[1].T), (-2.5 * (c[1].H @ c[1]), 2.5 * m[1].T @ m[1]),
              (c[0] @ c[2].T + c[3] @ c[1].H, m[0] @ m[2].T + m[3] @ m[1].T),
              (convmat.vstack([c[0], c[1]]), np.vstack([m[0], m[1]])),
              (convmat.MatrixOperator(c[2].matrix), m[2])]
    eps = np.finfo(np.dtype(dtype)).eps
    for op, mag in cases:
        v = random_array(rng, (op.shape[1],), dtype)
        exact = _float64_norm_ratio(op, v)
        ratio, lower = _certified_ratio(op, v)
        assert lower <= exact and abs(ratio - exact) <= 1e3 * eps * exact, (op, exact, ratio)
        # K <= 1700 terms per output: the replicate-padded convolution (3 copies of an edge
        # sample per axis: 9) after the reflect-padded one (4), (3 + 4) channels x 9 taps x
        # (9 + 4) = 819, doubled by complex arithmetic, plus the sum's rounding
        slack = np.linalg.norm(mag @ abs(v)) / np.linalg.norm(v)
        assert exact - lower <= 1.01 * 1700 * eps * slack, (op, exact, lower)

    class Opaque(convmat.algebra.ReshapedOperator):
        """A subclass of a known composite: still read as one."""

    ratio, lower = _certified_ratio(Opaque(c[0]), np.ones(c[0].shape[1], dtype))
    assert 0 < lower <= ratio


def test_the_lower_bound_stays_useful_in_float32_at_a_million_inputs():
    """The slack counts the terms one output sums (27 here), not the operator's size."""
    from convmat.spectral import _certified_ratio

    rng = np.random.default_rng(4)
    op = convmat.ConvOperator(rng.standard_normal((1, 1, 3, 3, 3)).astype(np.float32),
                              (1, 100, 100, 100), padding=1)
    chain = 0.5 * (op.H @ op)
    v = rng.standard_normal(op.shape[1]).astype(np.float32)
    ratio, lower = _certified_ratio(chain, v)
    # gamma_55 |A| |v| is 1.3e-4 of ||A v|| here; a slack counting n = 10^6 terms per
    # row would be 4 n eps = 0.48
    assert 0 < ratio - lower <= 1e-3 * ratio


@pytest.mark.parametrize("seed", range(40))
def test_the_embedding_bound_of_float32_kernels_is_above_the_exact_norm(seed):
    """Single-precision kernels are bounded in double precision, FFT rounding included: the
    bound is never under the norm of the exact matrix (widened to float64) of the circular
    convolution on the torus that holds the padded input, and within 1e-9 of it."""
    rng = np.random.default_rng(900 + seed)
    dtype = ["float32", "complex64"][seed % 2]
    s = 1 + seed % 3
    k, p = int(rng.integers(1, 5)), int(rng.integers(0, 3))
    n = s * int(rng.integers(3, 6)) - 2 * p
    n += s * -(-(k - n) // s) if n < k else 0
    w = random_array(rng, (3, 2, k, k), dtype)
    op = convmat.ConvOperator(w, (2, n, n), stride=s, padding=p)
    torus = n + 2 * p
    total = k - 1 - min(s - 1, k - 1)
    circ = convmat.ConvOperator(w, (2, torus, torus), stride=s, padding=((0, total),) * 2,
                                padding_mode="circular")
    a = circ.matrix.toarray()
    exact = np.linalg.norm(a.astype(np.result_type(a.dtype, np.float64)), 2)
    bound = embedding_bound(op)
    assert exact <= bound <= exact * (1 + 1e-9)


def test_svds_says_how_far_arpack_got():
    from scipy.sparse.linalg import ArpackNoConvergence

    rng = np.random.default_rng(0)
    op = convmat.ConvOperator(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), (2, 20, 20),
                              padding=1)
    with pytest.raises(ArpackNoConvergence, match=r"svds: ARPACK converged to 0 of the 3 "
                       r"smallest singular triplets \(tol=0.0 \(machine precision\), maxiter=1, "
                       r"float32\); raise maxiter or loosen tol: .* about 1.2e-07 times"):
        convmat.svds(op, 3, which="smallest", maxiter=1)
