"""Every numeric example of the founding documents (../shared/seeds/), with the book's numbers."""

import numpy as np
import pytest

import convmat

from reference import trans_conv_reference


def trans_conv(X, K):
    """The chapter's loop, verbatim but for NumPy."""
    h, w = K.shape
    Y = np.zeros((X.shape[0] + h - 1, X.shape[1] + w - 1))
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            Y[i: i + h, j: j + w] += X[i, j] * K
    return Y


def corr2d(X, K):
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i: i + h, j: j + w] * K).sum()
    return Y


X = np.array([[0.0, 1.0], [2.0, 3.0]])
K = np.array([[0.0, 1.0], [2.0, 3.0]])


def test_basic_trans_conv():
    book = np.array([[0, 0, 1], [0, 4, 6], [4, 12, 9]], dtype=float)
    np.testing.assert_array_equal(trans_conv(X, K), book)
    W_T = convmat.conv_transpose_matrix(K, (2, 2))
    np.testing.assert_array_equal((W_T @ X.ravel()).reshape(3, 3), book)
    # the Conv2DTranspose form: 4-D input and kernel
    np.testing.assert_array_equal(convmat.conv_transpose(X[None, None], K[None, None]),
                                  book[None, None])


def test_trans_conv_padding_1():
    out = convmat.conv_transpose(X[None, None], K[None, None], padding=1)
    np.testing.assert_array_equal(out, [[[[4.0]]]])


def test_trans_conv_strides_2():
    book = np.array([[0, 0, 0, 1], [0, 0, 2, 3], [0, 2, 0, 3], [4, 6, 6, 9]], dtype=float)
    out = convmat.conv_transpose(X[None, None], K[None, None], stride=2)
    np.testing.assert_array_equal(out, book[None, None])


@pytest.mark.parametrize("mid_channels", [20, 30])  # the chapter uses 20, the notebook 30
def test_channel_round_trip_shape(mid_channels):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, 10, 16, 16))
    w_conv = rng.standard_normal((mid_channels, 10, 5, 5))
    w_tconv = rng.standard_normal((mid_channels, 10, 5, 5))  # (C_in, C_out, k, k)
    y = convmat.conv(x, w_conv, padding=2, stride=3)
    assert y.shape == (1, mid_channels, 6, 6)
    assert convmat.conv_transpose(y, w_tconv, padding=2, stride=3).shape == x.shape


def test_halving_and_doubling_shapes():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1, 3, 64, 64))
    y = convmat.conv(x, rng.standard_normal((10, 3, 4, 4)), padding=1, stride=2)
    assert y.shape == (1, 10, 32, 32)
    back = convmat.conv_transpose(y, rng.standard_normal((10, 3, 4, 4)), padding=1, stride=2)
    assert back.shape == (1, 3, 64, 64)


def test_relation_to_mm_4x16():
    Xm = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    Km = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(convmat.conv(Xm, Km), [[[[348, 393], [528, 573]]]])
    # the chapter's hand-built W
    W_book = np.zeros((4, 16))
    k = np.zeros(11)
    k[:3], k[4:7], k[8:] = Km[0, 0, 0, :], Km[0, 0, 1, :], Km[0, 0, 2, :]
    W_book[0, 0:11], W_book[1, 1:12], W_book[2, 4:15], W_book[3, 5:16] = k, k, k, k
    W = convmat.conv_matrix(Km, (1, 4, 4))
    assert W.shape == (4, 16)
    np.testing.assert_array_equal(W.toarray(), W_book)
    np.testing.assert_array_equal((W @ Xm.ravel()).reshape(1, 1, 2, 2),
                                  [[[[348, 393], [528, 573]]]])


def test_kernel2matrix_and_transpose():
    Xn = np.arange(9.0).reshape(3, 3)
    Y = corr2d(Xn, K)
    np.testing.assert_array_equal(Y, [[19, 25], [37, 43]])

    def kernel2matrix(K):
        k, W = np.zeros(5), np.zeros((4, 9))
        k[:2], k[3:5] = K[0, :], K[1, :]
        W[0, :5], W[1, 1:6], W[2, 3:8], W[3, 4:] = k, k, k, k
        return W

    W = convmat.conv_matrix(K, (3, 3))
    np.testing.assert_array_equal(W.toarray(), kernel2matrix(K))
    np.testing.assert_array_equal(W.toarray(), [[0, 1, 0, 2, 3, 0, 0, 0, 0],
                                                [0, 0, 1, 0, 2, 3, 0, 0, 0],
                                                [0, 0, 0, 0, 1, 0, 2, 3, 0],
                                                [0, 0, 0, 0, 0, 1, 0, 2, 3]])
    np.testing.assert_array_equal((W @ Xn.ravel()).reshape(2, 2), Y)
    # W.T is the transposed convolution
    np.testing.assert_array_equal((W.T @ X.ravel()).reshape(3, 3), trans_conv(X, K))
    np.testing.assert_array_equal(
        convmat.conv_transpose_matrix(K, (2, 2)).toarray(), W.T.toarray())


def test_scatter_reference_matches_chapter_loop():
    """The test suite's generalised trans_conv reference agrees with the chapter's loop."""
    rng = np.random.default_rng(2)
    Xr, Kr = rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    ref = trans_conv_reference(Xr[None], Kr[None, None], (1, 1), [(0, 0), (0, 0)], (1, 1), 1,
                               "zeros", (0, 0))
    np.testing.assert_allclose(ref[0], trans_conv(Xr, Kr), rtol=1e-14, atol=1e-14)
