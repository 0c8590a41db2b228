"""to_torch and to_pylops: the bridges against SciPy's products and PyLops' dot test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import convmat


def random_csr(rng, dtype, index_dtype, shape=(7, 9), density=0.4):
    m = sp.random_array(shape, density=density, format="csr", dtype=np.float64, rng=rng)
    if np.dtype(dtype).kind == "c":
        m = m + 1j * sp.random_array(shape, density=density, format="csr", rng=rng)
    m = sp.csr_array(m.astype(dtype))
    m.indptr, m.indices = m.indptr.astype(index_dtype), m.indices.astype(index_dtype)
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_to_torch_products_equal_scipy(dtype, index_dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    W = random_csr(rng, dtype, index_dtype)
    T = convmat.to_torch(W)
    assert T.layout == torch.sparse_csr and tuple(T.shape) == W.shape
    assert T.crow_indices().dtype == T.col_indices().dtype == getattr(torch, np.dtype(
        index_dtype).name)
    assert T.values().dtype == getattr(torch, dtype)
    x = rng.standard_normal((9, 3)).astype(dtype)
    np.testing.assert_allclose((T @ torch.from_numpy(x)).numpy(), W @ x,
                               rtol=10 * np.finfo(dtype).eps, atol=10 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(T.to_dense().numpy(), W.toarray())


def test_to_torch_formats_operators_and_devices():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 3, 3))
    op = convmat.ConvOperator(w, (2, 6, 5), stride=2, padding=1, padding_mode="reflect",
                              bias=np.ones(3))
    x = rng.standard_normal(op.shape[1])
    y = rng.standard_normal(op.shape[0])
    T = convmat.to_torch(op)  # the linear part
    np.testing.assert_allclose((T @ torch.from_numpy(x)).numpy(), op @ x, rtol=1e-13)
    Tt = convmat.to_torch(op.T)  # a CSC view: converted to CSR
    np.testing.assert_allclose((Tt @ torch.from_numpy(y)).numpy(), op.matrix.T @ y,
                               rtol=1e-13)
    mixed = sp.csr_array(op.matrix)
    mixed.indptr = mixed.indptr.astype(np.int64)  # indices int32: both become int64
    assert convmat.to_torch(mixed).col_indices().dtype == torch.int64
    chain = convmat.from_torch(torch.nn.Sequential(torch.nn.AvgPool2d(2)), (2, 6, 4))
    np.testing.assert_array_equal(convmat.to_torch(chain).to_dense().numpy(),
                                  chain.matrix.toarray())
    assert convmat.to_torch(op, device="cpu").device.type == "cpu"
    convmat.to_torch(op).values().mul_(0.0)  # an operator's matrix is copied, never shared
    np.testing.assert_allclose((T @ torch.from_numpy(x)).numpy(), op @ x, rtol=1e-13)
    assert abs(op.matrix).sum() > 0
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        assert convmat.to_torch(op, device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ValueError, match=r"device='cuda': this PyTorch has no CUDA"):
            convmat.to_torch(op, device="cuda")
    with pytest.raises(TypeError, match=r"matrix must be a SciPy or CuPy sparse matrix or a "
                                        r"convmat operator, got ndarray"):
        convmat.to_torch(np.eye(3))


def test_to_torch_keeps_readonly_input_intact():
    torch = pytest.importorskip("torch")
    W = sp.csr_array(np.eye(3))
    for a in (W.data, W.indices, W.indptr):
        a.flags.writeable = False
    T = convmat.to_torch(W)
    T.values().mul_(2.0)  # a copy was made: W is unchanged
    np.testing.assert_array_equal(W.toarray(), np.eye(3))
    assert torch.equal(T.to_dense(), 2 * torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
def test_to_pylops_dottest_and_products(dtype):
    pylops = pytest.importorskip("pylops")
    from pylops.utils import dottest

    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 1, 3, 2))
    if np.dtype(dtype).kind == "c":
        w = w + 1j * rng.standard_normal(w.shape)
    op = convmat.ConvOperator(w.astype(dtype), (2, 7, 6), stride=(2, 1), groups=2,
                              padding=1, padding_mode="circular")
    P = convmat.to_pylops(op)
    assert isinstance(P, pylops.LinearOperator)
    assert P.dims == op.input_shape and P.dimsd == op.output_shape
    assert P.shape == op.shape and np.dtype(P.dtype) == np.dtype(dtype)
    eps = np.finfo(dtype).eps
    assert dottest(P, *P.shape, complexflag=0 if np.dtype(dtype).kind == "f" else 3,
                   rtol=100 * eps, raiseerror=False)
    x = rng.standard_normal(op.shape[1]).astype(dtype)
    y = rng.standard_normal(op.shape[0]).astype(dtype)
    np.testing.assert_allclose(P @ x, op.matrix @ x, rtol=100 * eps, atol=100 * eps)
    np.testing.assert_allclose(P.H @ y, op.matrix.conj().T @ y, rtol=100 * eps,
                               atol=100 * eps)
    shaped = P @ x.reshape(op.input_shape)  # PyLops' dims: shaped in, shaped out
    assert shaped.shape == op.output_shape


def test_to_pylops_solver_and_errors():
    pytest.importorskip("pylops")
    from pylops.optimization.basic import cgls

    rng = np.random.default_rng(3)
    kernel = 0.3 * rng.standard_normal((5, 5))
    kernel[2, 2] = 5.0  # well conditioned: CGLS converges in a few dozen iterations
    op = convmat.ConvOperator(kernel, (16, 16), padding=2)
    x = rng.standard_normal(op.input_shape)
    xs = cgls(convmat.to_pylops(op), (op @ x).ravel(), niter=200, tol=1e-24)[0]
    assert xs.shape == op.input_shape  # PyLops shapes the solution by dims
    np.testing.assert_allclose(xs, x, rtol=1e-8, atol=1e-8)
    with pytest.raises(TypeError, match=r"op must be a convmat operator, got csr_array"):
        convmat.to_pylops(op.matrix)
    affine = convmat.ConvOperator(np.ones((1, 1, 3)), (1, 5), bias=np.ones(1))
    with pytest.raises(ValueError, match=r"op is affine .*pass op.linear"):
        convmat.to_pylops(affine)
    assert convmat.to_pylops(affine.linear).shape == affine.shape
