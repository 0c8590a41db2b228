"""ConvOperator: shapes, batching, adjoints, LinearOperator bridge, repr, weight swap."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

import convmat
from convmat import ConvOperator

from reference import conv_reference


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2, 3, 3))
    op = ConvOperator(w, (4, 9, 7), stride=(2, 1), padding=((1, 0), (1, 2)), groups=2,
                      padding_mode="reflect")
    return rng, w, op


def test_attributes(setup):
    _, w, op = setup
    assert op.input_shape == (4, 9, 7)
    assert op.output_shape == (6, 4, 8)
    assert op.shape == (6 * 32, 4 * 63) == op.matrix.shape
    assert isinstance(op.matrix, sp.csr_array)
    assert op.dtype == np.float64 and op.nnz == op.matrix.nnz == op.geometry.nnz
    assert op.nbytes == op.geometry.nbytes
    assert op.T.input_shape == op.output_shape and op.T.output_shape == op.input_shape
    assert op.T.T is op and op.H is op.T


def test_apply_forms_agree(setup):
    rng, w, op = setup
    xs = rng.standard_normal((3, *op.input_shape))
    ref = np.stack([conv_reference(x, w, (2, 1), [(1, 0), (1, 2)], (1, 1), 2, "reflect")
                    for x in xs])
    scale = np.abs(w).sum() * np.abs(xs).max()
    tol = dict(rtol=0, atol=64 * np.finfo(float).eps * scale)
    np.testing.assert_allclose(op @ xs, ref, **tol)                      # batch
    np.testing.assert_allclose(op @ xs[0], ref[0], **tol)                # one shaped input
    np.testing.assert_allclose(op @ xs[0].ravel(), ref[0].ravel(), **tol)  # flat vector
    cols = xs.reshape(3, -1).T.copy()
    np.testing.assert_allclose(op @ cols, ref.reshape(3, -1).T, **tol)  # block of columns
    before = xs.copy()
    op @ xs
    np.testing.assert_array_equal(xs, before)  # input not mutated


def test_adjoint_maps_shaped_arrays_back(setup):
    rng, _, op = setup
    y = rng.standard_normal((2, *op.output_shape))
    back = op.T @ y
    assert back.shape == (2, *op.input_shape)
    np.testing.assert_allclose(back[1].ravel(), op.matrix.T @ y[1].ravel(), rtol=1e-14)


def test_complex_H_is_conjugate_transpose():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 1, 3)) + 1j * rng.standard_normal((2, 1, 3))
    op = ConvOperator(w.astype(np.complex64), (1, 10), padding="same", padding_mode="circular")
    assert op.dtype == np.complex64
    dense = op.matrix.toarray()
    np.testing.assert_array_equal(op.H.matrix.toarray(), dense.conj().T)
    np.testing.assert_array_equal(op.T.matrix.toarray(), dense.T)
    assert op.H is not op.T and op.H.H is op


def test_one_dimensional_shorthand_batch_vs_columns():
    op = ConvOperator(np.array([1.0, 2.0, 3.0]), (5,))
    x = np.arange(10.0).reshape(2, 5)
    assert (op @ x).shape == (2, 3)  # batch of two signals
    cols = np.arange(15.0).reshape(5, 3)
    assert (op @ cols).shape == (3, 3)  # block of 3 columns
    np.testing.assert_array_equal(op @ cols, op.matrix @ cols)
    square = np.arange(25.0).reshape(5, 5)  # fits both: read as a batch (documented)
    np.testing.assert_array_equal(op @ square, (op.matrix @ square.T).T)


def test_aslinearoperator(setup):
    rng, _, op = setup
    A = op.aslinearoperator()
    assert isinstance(A, LinearOperator) and A.shape == op.shape and A.dtype == op.dtype
    x = rng.standard_normal(op.shape[1])
    y = rng.standard_normal(op.shape[0])
    np.testing.assert_allclose(A.matvec(x), op.matrix @ x, rtol=1e-14)
    np.testing.assert_allclose(A.rmatvec(y), op.matrix.T @ y, rtol=1e-14)
    np.testing.assert_allclose(A.H.matvec(y), op.matrix.T @ y, rtol=1e-14)
    np.testing.assert_allclose(A.T.matvec(y), op.matrix.T @ y, rtol=1e-14)
    X = rng.standard_normal((op.shape[1], 3))
    np.testing.assert_allclose(A.matmat(X), op.matrix @ X, rtol=1e-14)
    np.testing.assert_allclose(A.rmatmat(op.matrix @ X), op.matrix.T @ (op.matrix @ X),
                               rtol=1e-13)


def test_repr_shows_geometry_shape_nnz_bytes(setup):
    _, _, op = setup
    text = repr(op)
    assert text.startswith("ConvOperator(conv2d: (4, 9, 7) -> (6, 4, 8)")
    for part in ["kernel=(3, 3)", "stride=(2, 1)", "padding=((1, 0), (1, 2))", "groups=2",
                 "padding_mode='reflect'", f"shape={op.shape}", f"nnz={op.nnz:,}", "KiB"]:
        assert part in text
    assert "conv_transpose2d: (6, 4, 8) -> (4, 9, 7)" in repr(op.T)
    g = op.geometry
    assert repr(g).startswith("ConvGeometry(conv2d") and f"nnz={g.nnz:,}" in repr(g)


def test_transposed_constructor_equals_conv_transpose_matrix():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((10, 3, 4, 4))
    op = ConvOperator.transposed(w, (10, 32, 32), stride=2, padding=1)
    assert op.output_shape == (3, 64, 64)
    W = convmat.conv_transpose_matrix(w, (10, 32, 32), stride=2, padding=1)
    assert (op.matrix != W).nnz == 0
    y = rng.standard_normal((10, 32, 32))
    np.testing.assert_allclose(op @ y, convmat.conv_transpose(y, w, stride=2, padding=1),
                               rtol=1e-13, atol=1e-13)


def test_with_weight_swaps_data_only(setup):
    rng, w, op = setup
    w2 = rng.standard_normal(w.shape).astype(np.float32)
    assert not op.with_weight(w2).built  # a lazy operator stays lazy
    op.matrix  # noqa: B018 - once W is built, the new operator shares its indices
    op2 = op.with_weight(w2)
    fresh = ConvOperator(w2, op.input_shape, stride=(2, 1), padding=((1, 0), (1, 2)),
                         groups=2, padding_mode="reflect")
    assert op2.dtype == np.float32
    assert np.shares_memory(op2.matrix.indices, op.matrix.indices)
    np.testing.assert_array_equal(op2.matrix.toarray(), fresh.matrix.toarray())
    t2 = op.T.with_weight(w2)  # an adjoint operator stays an adjoint
    np.testing.assert_array_equal(t2.matrix.toarray(), fresh.matrix.T.toarray())


def test_one_shot_geometry_helpers():
    g = convmat.conv_geometry((10, 3, 4, 4), (3, 64, 64), stride=2, padding=1)
    assert g.output_size == (32, 32) and g.padding == ((1, 1), (1, 1))
    assert hash(g) == hash(convmat.conv_geometry((10, 3, 4, 4), (3, 64, 64), stride=2,
                                                 padding=1))
    assert g.T.T == g and g.T != g
    with pytest.raises(AttributeError):
        g.groups = 2  # frozen
    assert convmat.output_shape((1, 1, 2, 2), (1, 2, 2), transposed=True, stride=2) == (1, 4, 4)
    same = convmat.conv_geometry((1, 1, 4), (1, 10), padding="same", dilation=3)
    assert same.padding == ((4, 5),) and same.output_size == (10,)
    tg = convmat.conv_transpose_geometry((1, 1, 3), (1, 5), stride=2, output_size=(12,))
    assert tg.output_padding == (1,) and tg.output_shape == (1, 12)


@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
@pytest.mark.parametrize("options", [
    dict(padding=1),                                    # W^H is a convolution: direct
    dict(padding=((2, 0), (0, 1)), dilation=(2, 1)),    # direct, asymmetric, dilated
    dict(padding=3),                                    # pads beyond the span: converted
    dict(padding=1, stride=2),                          # strided: converted
    dict(padding=1, padding_mode="circular"),           # mode padding: converted
])
def test_adjoint_csr_equals_conjugate_transpose(dtype, options):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 3, 3, 2))
    if dtype.startswith("complex"):
        w = w + 1j * rng.standard_normal(w.shape)
    w = w.astype(dtype)
    op = ConvOperator(w, (6, 7, 8), groups=2, **options)
    direct = op.geometry.adjoint is not None
    assert direct == (options.get("stride", 1) == 1 and "padding_mode" not in options
                      and options["padding"] != 3)
    for o in (op, op.T, op.H):
        a = o.adjoint_csr()
        assert a.format == "csr" and a.has_canonical_format and a.dtype == o.dtype
        a.check_format(full_check=True)
        expected = o.H.matrix.toarray()
        np.testing.assert_array_equal(a.toarray(), expected)


def test_adjoint_csr_of_symmetric_operator_is_the_matrix():
    g = np.exp(-0.5 * (np.arange(5) - 2.0) ** 2)
    op = ConvOperator(np.outer(g, g), (9, 9), padding=2)
    assert op.adjoint_csr() is op.matrix
    np.testing.assert_array_equal(op.matrix.toarray(), op.matrix.toarray().T)
    asym = ConvOperator(np.outer(g, g), (9, 9), padding=((2, 1), (2, 2)))
    assert asym.adjoint_csr() is not asym.matrix
    np.testing.assert_array_equal(asym.adjoint_csr().toarray(), asym.matrix.T.toarray())
