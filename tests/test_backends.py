"""The backend layer: dispatch, moving between devices, CuPy limits, the device memory guard.

The first half runs everywhere: the decisions (which backend, which error, how much device
memory a build may take) are checked against a stand-in ``cupy`` module placed in
``sys.modules``, which is all ``convmat.backend`` looks at. The second half (``requires_gpu``)
runs the same operations on a real GPU and compares them with the CPU.
"""

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

import convmat
from convmat import ConvMatrixTooLarge, ConvOperator, backend
from convmat.guard import check_memory

from backends import cp, eps, host, requires_gpu


class FakeCupyArray:
    """Enough of a ``cupy.ndarray`` for the dispatch: a shape and a dtype."""

    def __init__(self, shape=(3, 3), dtype="float64"):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)


def fake_cupy(version="14.2.0", device_free=2**30, pool_free=0, pool_total=0, pool_limit=0,
              available=True):
    """A stand-in ``cupy`` module: version, memory pool and device memory, no arrays."""
    pool = types.SimpleNamespace(free_bytes=lambda: pool_free, total_bytes=lambda: pool_total,
                                 get_limit=lambda: pool_limit)
    runtime = types.SimpleNamespace(memGetInfo=lambda: (device_free, 80 * 2**30))
    return types.SimpleNamespace(
        __version__=version, ndarray=FakeCupyArray, get_default_memory_pool=lambda: pool,
        cuda=types.SimpleNamespace(runtime=runtime, is_available=lambda: available),
    )


@pytest.fixture
def op():
    return ConvOperator(np.arange(9.0).reshape(3, 3), (6, 5), padding=1)


# --------------------------------------------------------------------------- everywhere
def test_numpy_data_stays_on_the_cpu(op):
    assert backend.array_namespace(op.matrix) is np and op.device == "cpu"
    assert op.to_cpu() is op and convmat.to_cpu(op) is op
    x = np.ones(3)
    assert convmat.to_cpu(x) is x and convmat.to_cpu(op.matrix) is op.matrix
    assert backend.csr_container(np) is sp.csr_array
    assert backend.csr_container(np, "csc") is sp.csc_array


def test_version_parsing():
    assert backend._version_tuple("14.1.0") == (14, 1, 0)
    assert backend._version_tuple("13.6.0rc1") == (13, 6, 0)
    assert backend._version_tuple("14.2.0.dev0+abc") == (14, 2, 0)
    assert backend._version_tuple("15") == (15,)


def test_int64_indices_refused_on_old_cupy():
    old, new = fake_cupy(version="13.6.0"), fake_cupy(version="14.1.0")
    with pytest.raises(ValueError, match=r"W needs int64 indices \(2\*\*31 or more rows, "
                                         r"columns or entries\), which CuPy 13.6.0 does not "
                                         r"support: it casts sparse indices to int32 without "
                                         r"checking. Install CuPy >= 14.1, or build on the CPU"):
        backend.check_index_dtype(np.int64, old)
    backend.check_index_dtype(np.int32, old)   # int32 is fine anywhere
    backend.check_index_dtype(np.int64, new)   # CuPy 14.1 keeps int64
    backend.check_index_dtype(np.int64, np)    # SciPy keeps int64


def test_int64_geometry_refused_before_building_on_old_cupy():
    g = convmat.conv_geometry((1, 1, 1), (1, 2**31 + 5))
    assert g.index_dtype == np.int64
    with pytest.raises(ValueError, match=r"W needs int64 indices .* CuPy 12.3.0"):
        check_memory(g, None, xp=fake_cupy(version="12.3.0"))


def test_device_budget_arithmetic():
    # no pool limit: the device's free memory plus what the pool has cached
    assert backend._device_budget(1000, 200, 500, 0) == 1200
    # a pool limit caps the new memory at limit - held
    assert backend._device_budget(1000, 200, 500, 800) == 200 + 300
    # a pool at or over its limit can only reuse its cache
    assert backend._device_budget(1000, 200, 900, 800) == 200
    # the device itself can be the tighter bound
    assert backend._device_budget(100, 0, 0, 10**9) == 100


def test_device_memory_guard_uses_device_and_pool():
    g = convmat.conv_geometry((8, 8, 3, 3), (8, 64, 64), padding=1)
    peak = g.peak_bytes
    roomy = fake_cupy(device_free=4 * peak)
    check_memory(g, None, xp=roomy)  # half of 4x the peak: allowed
    tight = fake_cupy(device_free=10 * peak, pool_free=peak // 2, pool_total=peak,
                      pool_limit=peak + (peak - peak // 2))
    # budget = pool_free + (limit - held) = peak: half of it is allowed, not enough
    assert backend.device_memory_budget(tight)[0] == peak
    with pytest.raises(ConvMatrixTooLarge,
                       match=r"W of shape .* needs .* bytes at peak .* over the limit of "
                             r".* \(default: 50% of .* free on the GPU \(device free \+ "
                             r"memory-pool free, pool limit .* bytes\)\)"):
        check_memory(g, None, xp=tight)
    with pytest.raises(ConvMatrixTooLarge, match=r"free on the GPU \(device free \+ "
                                                 r"memory-pool free\)\)"):
        check_memory(g, None, xp=fake_cupy(device_free=peak))
    check_memory(g, peak, xp=tight)  # an explicit max_bytes replaces the default


def test_to_gpu_without_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match=r"moving to the GPU needs CuPy: pip install "
                                          r"'convmat\[gpu\]' \(CuPy for CUDA 13\)"):
        convmat.to_gpu(np.ones(3))


def test_to_gpu_without_a_gpu(monkeypatch, op):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False))
    with pytest.raises(RuntimeError, match=r"CuPy is installed but finds no usable CUDA GPU"):
        op.to_gpu()
    with pytest.raises(RuntimeError, match=r"finds no usable CUDA GPU"):
        convmat.to_gpu(op.matrix)


def test_to_gpu_refuses_formats_other_than_csr_csc(op):
    with pytest.raises(TypeError, match=r"only CSR and CSC matrices move between devices, got "
                                        r"format 'coo'"):
        convmat.to_gpu(op.matrix.tocoo())


def test_mixing_backends_is_a_type_error(monkeypatch, op):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    gpu_x = FakeCupyArray(op.input_shape)
    with pytest.raises(TypeError, match=r"x is a CuPy \(GPU\) array but the operator is on "
                                        r"NumPy/SciPy \(CPU\); mixing backends is not "
                                        r"supported: move one of them \(convmat.to_gpu / "
                                        r"convmat.to_cpu\)"):
        op @ gpu_x
    with pytest.raises(TypeError, match=r"x is a NumPy/SciPy \(CPU\) array but the weight is "
                                        r"on CuPy \(GPU\)"):
        convmat.conv(np.ones((1, 5, 5)), FakeCupyArray((1, 1, 3, 3)))
    with pytest.raises(TypeError, match=r"y is a CuPy \(GPU\) array but the operator is on "
                                        r"NumPy/SciPy \(CPU\)"):
        convmat.deconvolve(FakeCupyArray(op.output_shape), op)
    with pytest.raises(TypeError, match=r"weight is a CuPy \(GPU\) array but the operator"):
        op.with_weight(FakeCupyArray((3, 3)))
    with pytest.raises(TypeError, match=r"x0 is a CuPy \(GPU\) array but the operator"):
        convmat.deconvolve(np.ones(op.output_shape), op, x0=FakeCupyArray(op.input_shape))


# --------------------------------------------------------------------------- on a GPU
CASES = [
    ((4, 2, 3, 3), (4, 17, 13), dict(padding=1, groups=2)),
    ((6, 3, 3, 2), (3, 12, 11), dict(stride=(2, 1), padding=((1, 0), (1, 2)),
                                     padding_mode="reflect")),
    ((2, 1, 5), (2, 40), dict(padding=4, dilation=2, groups=2, padding_mode="circular")),
    ((2, 2, 3, 3, 3), (2, 6, 5, 7), dict(padding=1, padding_mode="replicate")),
]
DTYPES = ["float32", "float64", "complex64", "complex128"]


def _weight(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        w = w + 1j * rng.standard_normal(shape)
    return w.astype(dtype)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape, ishape, options", CASES)
def test_gpu_build_equals_cpu_build(wshape, ishape, options, dtype):
    import cupyx.scipy.sparse as csp

    w = _weight(wshape, dtype)
    cpu = convmat.conv_matrix(w, ishape, **options)
    gpu = convmat.conv_matrix(cp.asarray(w), ishape, **options)
    assert csp.issparse(gpu) and gpu.format == "csr" and gpu.dtype == cpu.dtype
    assert gpu.indices.dtype == cpu.indices.dtype and gpu.shape == cpu.shape
    back = host(gpu)
    np.testing.assert_array_equal(back.indptr, cpu.indptr)
    np.testing.assert_array_equal(back.indices, cpu.indices)
    # folded taps are summed on the device: equal up to rounding of those sums
    np.testing.assert_allclose(back.data, cpu.data, rtol=0,
                               atol=8 * eps(dtype) * np.abs(w).sum())


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape, ishape, options", CASES)
def test_gpu_products_agree_with_cpu(wshape, ishape, options, dtype):
    w = _weight(wshape, dtype)
    cpu = ConvOperator(w, ishape, **options)
    gpu = ConvOperator(cp.asarray(w), ishape, **options)
    assert gpu.device == "gpu" and "backend=cupy" in repr(gpu)
    x = _weight((3, *cpu.input_shape), dtype, seed=2)
    y = _weight((3, *cpu.output_shape), dtype, seed=3)
    scale_x = np.abs(host(cpu.matrix)).sum(axis=1).max() * np.abs(x).max()
    scale_y = np.abs(host(cpu.matrix)).sum(axis=0).max() * np.abs(y).max()
    tol = 16 * eps(dtype)
    for a, b, scale in [(gpu @ cp.asarray(x), cpu @ x, scale_x),                  # batch
                        (gpu @ cp.asarray(x[0]), cpu @ x[0], scale_x),            # shaped
                        (gpu.T @ cp.asarray(y), cpu.T @ y, scale_y),              # adjoint
                        (gpu.H @ cp.asarray(y[1]), cpu.H @ y[1], scale_y),
                        (gpu.adjoint_csr() @ cp.asarray(y[2].ravel()),
                         cpu.adjoint_csr() @ y[2].ravel(), scale_y)]:
        assert isinstance(a, cp.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(host(a), b, rtol=0, atol=tol * scale)
    # functional forms
    np.testing.assert_allclose(
        host(convmat.conv(cp.asarray(x), cp.asarray(w), **options)),
        convmat.conv(x, w, **options), rtol=0, atol=tol * scale_x)


@requires_gpu
def test_gpu_linear_operator_and_weight_swap():
    from cupyx.scipy.sparse.linalg import LinearOperator

    w = _weight((4, 2, 3, 3), "float64")
    cpu = ConvOperator(w, (2, 9, 8), padding=1, padding_mode="reflect")
    gpu = cpu.to_gpu()
    A = gpu.aslinearoperator()
    assert isinstance(A, LinearOperator) and A.shape == cpu.shape
    v = np.random.default_rng(0).standard_normal(cpu.shape[1])
    u = np.random.default_rng(1).standard_normal(cpu.shape[0])
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(A.matvec(cp.asarray(v))), cpu.matrix @ v, **tol)
    np.testing.assert_allclose(host(A.rmatvec(cp.asarray(u))), cpu.matrix.T @ u, **tol)
    np.testing.assert_allclose(host(A.H.matvec(cp.asarray(u))), cpu.matrix.T @ u, **tol)
    w2 = _weight(w.shape, "float32", seed=5)
    swapped = gpu.with_weight(cp.asarray(w2))
    assert swapped.device == "gpu" and swapped.dtype == np.float32
    np.testing.assert_array_equal(host(swapped.matrix).toarray(),
                                  cpu.with_weight(w2).matrix.toarray())


@requires_gpu
def test_moving_operators_and_matrices_round_trip():
    import cupyx.scipy.sparse as csp

    w = _weight((3, 4, 4), "float64")[None].repeat(2, axis=0)  # (2, 3, 4, 4)
    t = ConvOperator.transposed(w, (2, 8, 8), stride=2, padding=1)
    g = t.to_gpu()
    assert g.device == "gpu" and g.geometry == t.geometry and g.matrix.format == "csc"
    assert g.to_gpu() is g and convmat.to_gpu(g) is g
    back = g.to_cpu()
    assert back.device == "cpu" and back.matrix.format == "csc"
    np.testing.assert_array_equal(back.matrix.toarray(), t.matrix.toarray())
    m = convmat.to_gpu(t.T.matrix)
    assert csp.issparse(m) and m.format == "csr" and m.indices.dtype == np.int32
    again = convmat.to_cpu(m)
    assert isinstance(again, sp.csr_array)
    np.testing.assert_array_equal(again.toarray(), t.T.matrix.toarray())
    c = ConvOperator(_weight((2, 2), "complex128"), (5, 5)).to_gpu()
    np.testing.assert_array_equal(host(c.H.matrix).toarray(),
                                  host(c.matrix).toarray().conj().T)
    assert c.H.to_cpu().matrix.dtype == np.complex128


@requires_gpu
def test_gpu_memory_guard_with_a_pool_limit():
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    old = pool.get_limit()
    g = convmat.conv_geometry((16, 16, 3, 3), (16, 64, 64), padding=1)
    w = cp.ones((16, 16, 3, 3))
    try:
        pool.set_limit(size=pool.total_bytes() + g.peak_bytes)  # half of it is allowed
        with pytest.raises(ConvMatrixTooLarge, match=r"free on the GPU .*pool limit"):
            convmat.conv_matrix(w, (16, 64, 64), padding=1)
        pool.set_limit(size=pool.total_bytes() + 3 * g.peak_bytes)
        W = convmat.conv_matrix(w, (16, 64, 64), padding=1)
        assert W.nnz == g.nnz
    finally:
        pool.set_limit(size=old)


@requires_gpu
def test_gpu_int64_indices_follow_cupy_version(monkeypatch):
    monkeypatch.setattr(convmat.geometry, "INDEX_LIMIT", 50)
    w = _weight((2, 3, 3, 2), "float64")
    if backend._version_tuple(cp.__version__) < backend.CUPY_INT64_INDICES:
        with pytest.raises(ValueError, match=r"needs int64 indices"):
            convmat.conv_matrix(cp.asarray(w), (3, 5, 6), padding=1)
        return
    W = convmat.conv_matrix(cp.asarray(w), (3, 5, 6), padding=1)
    assert W.indices.dtype == np.int64 and W.indptr.dtype == np.int64
    np.testing.assert_array_equal(host(W).toarray(),
                                  convmat.conv_matrix(w, (3, 5, 6), padding=1).toarray())


@requires_gpu
@pytest.mark.parametrize("method", ["lsqr", "lsmr", "cgls"])
def test_gpu_deconvolution_agrees_with_cpu(monkeypatch, method):
    import cupyx.scipy.sparse.linalg as csl

    def not_lsqr(*args, **kwargs):  # CuPy's lsqr is a direct square solver, not LSQR
        raise AssertionError("cupyx.scipy.sparse.linalg.lsqr must not be called")

    monkeypatch.setattr(csl, "lsqr", not_lsqr)
    rng = np.random.default_rng(0)
    cpu = ConvOperator(rng.standard_normal((4, 2, 3, 3)), (2, 9, 8), padding=1)
    gpu = cpu.to_gpu()
    x = rng.standard_normal(cpu.input_shape)
    y = cpu @ x + 0.01 * rng.standard_normal(cpu.output_shape)
    opts = dict(method=method, damp=0.05, regularizer="gradient", lam=0.3, atol=1e-10,
                btol=1e-10, maxiter=3000)
    ref = convmat.deconvolve(y, cpu, **opts)
    res = convmat.deconvolve(cp.asarray(y), gpu, **opts)
    assert isinstance(res.x, cp.ndarray) and res.x.shape == cpu.input_shape
    assert res.converged and res.method == method
    np.testing.assert_allclose(host(res.x), ref.x, rtol=0, atol=1e-7 * np.abs(ref.x).max())
    assert abs(res.residual_norm - ref.residual_norm) <= 1e-7 * ref.residual_norm
    with pytest.raises(ValueError, match=r"bounds \(spg, lsq_linear\) run on the CPU only"):
        convmat.deconvolve(cp.asarray(y), gpu, bounds=(0, None))
    with pytest.raises(TypeError, match=r"y is a NumPy/SciPy \(CPU\) array but the operator "
                                        r"is on CuPy \(GPU\)"):
        convmat.deconvolve(y, gpu)
    with pytest.raises(TypeError, match=r"regularizer is a NumPy/SciPy \(CPU\) array but the "
                                        r"operator is on CuPy \(GPU\)"):
        convmat.deconvolve(cp.asarray(y), gpu, regularizer=convmat.gradient_operator(
            cpu.input_shape))


@requires_gpu
def test_gpu_history_and_progress():
    rng = np.random.default_rng(0)
    gpu = ConvOperator(cp.asarray(rng.standard_normal((3, 3))), (12, 12), padding=1)
    y = gpu @ cp.asarray(rng.standard_normal((12, 12)))
    seen = []
    res = convmat.deconvolve(y, gpu, method="lsqr", history=True, maxiter=7,
                             callback=lambda k, xk: seen.append(isinstance(xk, cp.ndarray)))
    assert res.iterations == len(seen) == len(res.history["residual_norm"]) <= 7
    assert all(seen)


@requires_gpu
def test_petsc_refuses_gpu_weights():
    from convmat import petsc

    with pytest.raises(TypeError, match=r"convmat.petsc builds from NumPy weights"):
        petsc.conv_matrix(cp.ones((3, 3)), (5, 5))
