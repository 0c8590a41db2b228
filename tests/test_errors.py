"""Every raise in convmat, each with a test that matches its message."""

import sys
import types

import numpy as np
import pytest

import convmat
from convmat import ConvMatrixTooLarge, ConvOperator, conv_matrix, conv_transpose_matrix
from convmat.backend import format_bytes
from convmat.geometry import conv_geometry

W3 = np.ones((4, 2, 3, 3))  # C_out=4, C_in/g=2, 3x3
IN = (2, 8, 8)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(stride=1.0), TypeError, r"stride must be an int, got 1\.0 \(float\)"),
        (dict(stride=True), TypeError, r"stride must be an int, got True \(bool\)"),
        (dict(dilation=(1, np.float32(2))), TypeError, r"dilation\[1\] must be an int"),
        (dict(padding=1.5), TypeError, r"padding must be an int, got 1\.5"),
        (dict(padding=(1, (1, 2.0))), TypeError, r"padding\[1\]\[1\] must be an int"),
        (dict(groups=False), TypeError, r"groups must be an int"),
        (dict(stride=(1, 2, 3)), ValueError,
         r"stride=\(1, 2, 3\) has 3 entries but the convolution has 2 spatial axes"),
        (dict(stride=0), ValueError, r"stride must be >= 1 on every axis; axis 0 has stride=0"),
        (dict(dilation=(1, -1)), ValueError, r"dilation must be >= 1 .* axis 1 has dilation=-1"),
        (dict(padding="same", stride=2), ValueError,
         r"padding='same' needs stride 1 on every axis, got stride=\(2, 2\)"),
        (dict(padding="fill"), ValueError,
         r"padding='fill' is not a known padding; use 'valid', 'same', 'full', an int"),
        (dict(padding=(1, 1, 1)), ValueError, r"padding=\(1, 1, 1\) has 3 entries"),
        (dict(padding=((1, 2, 3), 1)), ValueError,
         r"padding\[0\]=\(1, 2, 3\) must be an int or a \(lo, hi\) pair"),
        (dict(padding=-1), ValueError,
         r"padding must be >= 0; axis 0 has padding \(lo, hi\)=\(-1, -1\)"),
        (dict(padding=((0, 0), (0, -2))), ValueError, r"axis 1 has padding \(lo, hi\)=\(0, -2\)"),
        (dict(groups=0), ValueError, r"groups must be >= 1, got groups=0"),
        (dict(groups=3), ValueError, r"groups=3 must divide in_channels=2"),
        (dict(padding_mode="mirror"), ValueError,
         r"padding_mode='mirror' is not one of 'zeros', 'reflect', 'replicate', 'circular'"),
        (dict(padding_mode=None), ValueError, r"padding_mode=None is not one of"),
        (dict(padding=8, padding_mode="reflect"), ValueError,
         r"padding_mode='reflect' needs padding < input size; axis 0 has padding \(8, 8\)"),
        (dict(dilation=5), ValueError,
         r"axis 0: dilated kernel spans 11 > padded input 8 \(input 8 \+ padding 0\+0\); "
         r"output would be empty"),
    ],
)
def test_conv_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        conv_matrix(W3, IN, **kwargs)


def test_reflect_padding_must_be_smaller_than_input():
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs padding < input size; "
                                         r"axis 1 has padding \(3, 3\) for input size 3"):
        conv_matrix(np.ones((1, 1, 1, 1)), (1, 5, 3), padding=3, padding_mode="reflect")


def test_circular_padding_wraps_once():
    with pytest.raises(ValueError, match=r"padding_mode='circular' needs padding <= input size "
                                         r"\(it wraps once\); axis 0 has padding \(4, 4\)"):
        conv_matrix(np.ones(1), (3,), padding=4, padding_mode="circular")


def test_groups_must_divide_out_channels():
    with pytest.raises(ValueError, match=r"groups=2 must divide out_channels=3"):
        conv_matrix(np.ones((3, 1, 3)), (2, 8), groups=2)


def test_weight_channels_must_match_input():
    with pytest.raises(ValueError, match=r"weight.shape\[1\]=2 times groups=1 must equal input "
                                         r"channels input_shape\[0\]=3"):
        conv_matrix(W3, (3, 8, 8))


def test_wrong_weight_ndim():
    with pytest.raises(ValueError, match=r"weight.ndim=5 \(shape \(1, 1, 1, 3, 3\)\) does not fit "
                                         r"input_shape=\(2, 8, 8\): expected ndim 4 "
                                         r"\(C_out, C_in//groups, \*kernel\)"):
        conv_matrix(np.ones((1, 1, 1, 3, 3)), IN)
    with pytest.raises(ValueError, match=r"expected ndim 4 \(C_in, C_out//groups, \*kernel\)"):
        conv_transpose_matrix(np.ones((1, 3)), (1, 4, 4))


def test_zero_kernel_and_empty_channels():
    with pytest.raises(ValueError, match=r"kernel size must be >= 1; axis 1 of weight shape "
                                         r"\(1, 1, 3, 0\) is 0"):
        conv_matrix(np.ones((1, 1, 3, 0)), (1, 5, 5))
    with pytest.raises(ValueError, match=r"weight shape \(0, 1, 3\) has a channel axis <= 0"):
        conv_matrix(np.ones((0, 1, 3)), (1, 5))


@pytest.mark.parametrize(
    "shape, exc, match",
    [
        ((2, 0, 8), ValueError, r"input_shape=\(2, 0, 8\) has a size 0 <= 0 at position 1"),
        ((), ValueError, r"input_shape=\(\) is empty"),
        (8, TypeError, r"input_shape must be a tuple of ints, got 8 \(int\)"),
        ((2, 8.0, 8), TypeError, r"input_shape\[1\] must be an int"),
    ],
)
def test_bad_input_shape(shape, exc, match):
    with pytest.raises(exc, match=match):
        conv_matrix(W3, shape)


@pytest.mark.parametrize("dtype", ["float16", "int64", "bool", "object", "uint8"])
def test_unsupported_dtypes(dtype):
    with pytest.raises(TypeError, match=rf"weight dtype {dtype} is not supported; use one of "
                                        r"float32, float64, complex64, complex128"):
        conv_matrix(np.ones((3, 3), dtype=dtype), (5, 5))


def test_unparseable_dtype():
    with pytest.raises(TypeError, match=r"weight dtype 'nonsense' is not supported"):
        conv_geometry((1, 1, 3), (1, 5), dtype="nonsense")


def test_weight_not_array_or_shape():
    with pytest.raises(TypeError, match=r"weight must be an array or a shape tuple of ints, "
                                        r"got float"):
        conv_geometry(3.0, (1, 5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight(bad):
    w = np.ones((3, 3))
    w[1, 2] = bad
    with pytest.raises(ValueError, match=r"weight contains 1 NaN or inf value\(s\)"):
        conv_matrix(w, (5, 5))
    with pytest.raises(ValueError, match=r"weight contains 1 NaN or inf"):
        ConvOperator(w.astype(np.complex64), (5, 5))


def test_shorthand_with_groups():
    with pytest.raises(ValueError, match=r"groups=2 needs a weight with channel axes; a weight "
                                         r"of shape \(3, 3\) with input_shape=\(5, 5\) is the "
                                         r"one-channel shorthand"):
        conv_matrix(np.ones((3, 3)), (5, 5), groups=2)


# ------------------------------------------------------------------ transposed convolution
WT = np.ones((4, 3, 3, 3))  # (C_in=4, C_out/g=3, 3, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_padding=-1), r"output_padding must satisfy 0 <= output_padding < "
                                  r"max\(stride, dilation\); axis 0 has output_padding=-1"),
        (dict(output_padding=1), r"axis 0 has output_padding=1, stride=1, dilation=1"),
        (dict(stride=2, output_padding=(0, 2)), r"axis 1 has output_padding=2, stride=2"),
        (dict(output_padding=1, output_size=(8, 8), stride=2),
         r"give output_padding or output_size, not both"),
        (dict(output_size=(3, 11, 11), stride=2),
         r"requested output_size \(11, 11\), but valid sizes range from \(9, 9\) to \(10, 10\) "
         r"\(for an input of \(4, 4\)\)"),
        (dict(output_size=(1, 2, 3, 9, 9)), r"output_size=\(1, 2, 3, 9, 9\) must give the 2 "
                                            r"spatial sizes"),
        (dict(padding=4), r"axis 0: transposed-convolution output size .* = -2 <= 0"),
        (dict(padding=1, padding_mode="reflect", stride=1), None),
        (dict(groups=3), r"groups=3 must divide in_channels=4"),
    ],
)
def test_conv_transpose_errors(kwargs, match):
    if match is None:  # a valid call, to show the error cases are not over-broad
        assert conv_transpose_matrix(WT, (4, 4, 4), **kwargs).shape == (3 * 16, 4 * 16)
        return
    with pytest.raises(ValueError, match=match):
        conv_transpose_matrix(WT, (4, 4, 4), **kwargs)


def test_conv_transpose_output_size_type():
    with pytest.raises(TypeError, match=r"output_size must be a tuple of ints, got 9"):
        conv_transpose_matrix(WT, (4, 4, 4), output_size=9)


def test_conv_transpose_channel_mismatch():
    with pytest.raises(ValueError, match=r"weight.shape\[0\]=4 \(transposed-conv input "
                                         r"channels\) must equal input_shape\[0\]=3"):
        conv_transpose_matrix(WT, (3, 4, 4))


def test_conv_transpose_reflect_needs_larger_output():
    # transposed output 2 (the conv's input) cannot carry reflect padding 2
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs padding < input size; "
                                         r"axis 0 has padding \(2, 2\) for input size 2"):
        conv_transpose_matrix(np.ones(5), (2,), padding=2, padding_mode="reflect")


# ------------------------------------------------------------------ memory guard
def test_max_bytes_refusal_names_nnz_and_bytes():
    g = conv_geometry(W3, IN, padding=1)
    with pytest.raises(ConvMatrixTooLarge, match=rf"nnz={g.nnz:,} needs {g.peak_bytes:,} bytes "
                                                 r"at peak .* over the limit of 1,000 bytes "
                                                 r"\(max_bytes\)"):
        conv_matrix(W3, IN, padding=1, max_bytes=1000)
    assert issubclass(ConvMatrixTooLarge, MemoryError)
    assert conv_matrix(W3, IN, padding=1, max_bytes=g.peak_bytes).nnz == g.nnz


def test_default_limit_uses_available_memory(monkeypatch):
    monkeypatch.setattr(convmat.backend, "available_memory", lambda: 10_000)
    with pytest.raises(ConvMatrixTooLarge, match=r"default: 50% of 9\.8 KiB available"):
        conv_matrix(W3, IN, padding=1)
    monkeypatch.setattr(convmat.backend, "available_memory", lambda: None)
    assert conv_matrix(W3, IN, padding=1).shape == (4 * 64, 2 * 64)


def test_negative_max_bytes():
    with pytest.raises(ValueError, match=r"max_bytes must be >= 0, got max_bytes=-5"):
        conv_matrix(W3, IN, max_bytes=-5)
    with pytest.raises(TypeError, match=r"max_bytes must be an int"):
        conv_matrix(W3, IN, max_bytes=1e9)


def test_transposed_peak_counts_one_matrix():
    # strided: W.T is written directly from the transposed plans, W is never built
    g = convmat.conv_transpose_geometry(WT, (4, 4, 4), stride=2)
    assert g.adjoint is None and g.T.adjoint is None
    assert g.peak_bytes == g.nbytes + g.transposed_workspace_bytes
    assert g.transposed_workspace_bytes == g.T.transposed_workspace_bytes
    with pytest.raises(ConvMatrixTooLarge, match=r"W of shape \(243, 64\)"):
        conv_transpose_matrix(WT, (4, 4, 4), stride=2, max_bytes=g.nbytes)
    # stride 1, zero padding: W.T is itself a convolution, written directly
    g1 = convmat.conv_transpose_geometry(WT, (4, 4, 4))
    assert g1.T.adjoint is not None
    # one matrix, the adjoint convolution's, written from the flipped weight: no conversion
    assert g1.adjoint.nbytes == g1.nbytes
    assert g1.peak_bytes == g1.nbytes + g1.adjoint.workspace_bytes + WT.nbytes
    assert conv_transpose_matrix(WT, (4, 4, 4), max_bytes=g1.peak_bytes).shape == g1.shape


# ------------------------------------------------------------------ functional forms
def test_conv_x_ndim():
    with pytest.raises(ValueError, match=r"x.ndim=2 \(shape \(2, 8\)\) does not fit a weight "
                                         r"with 2 spatial axes: expected \(C, \*spatial\) with "
                                         r"ndim 3 or \(N, C, \*spatial\) with ndim 4"):
        convmat.conv(np.ones((2, 8)), W3)
    with pytest.raises(ValueError, match=r"y.ndim=5"):
        convmat.conv_transpose(np.ones((1, 1, 4, 4, 4)), WT)


def test_conv_bare_kernel_needs_layout():
    with pytest.raises(ValueError, match=r"weight.ndim=2: the functional form takes PyTorch's "
                                         r"layout"):
        convmat.conv(np.ones((5, 5)), np.ones((3, 3)))


def test_conv_non_numeric_x():
    with pytest.raises(TypeError, match=r"x must be a numeric array, got dtype <U1"):
        convmat.conv(np.array([["a"] * 8] * 2), np.ones((1, 2, 3)))


# ------------------------------------------------------------------ operator
@pytest.fixture
def op():
    return ConvOperator(W3, IN, padding=1)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((127,), r"x of shape \(127,\) does not fit the operator 256x128: expected a vector "
                 r"\(128,\), an input of shape \(2, 8, 8\), a batch \(N, \*\(2, 8, 8\)\) or a "
                 r"block of columns \(128, k\)"),
        ((3, 2, 8, 7), r"x of shape \(3, 2, 8, 7\)"),
        ((2, 8), r"x of shape \(2, 8\)"),
    ],
)
def test_operator_shape_errors(op, shape, match):
    with pytest.raises(ValueError, match=match):
        op @ np.ones(shape)


def test_operator_adjoint_shape_error(op):
    with pytest.raises(ValueError, match=r"expected a vector \(256,\), an input of shape "
                                         r"\(4, 8, 8\)"):
        op.T @ np.ones(128)


def test_operator_non_numeric(op):
    with pytest.raises(TypeError, match=r"x must be a numeric array, got dtype object"):
        op @ np.array([None] * 128)


def test_with_weight_shape(op):
    with pytest.raises(ValueError, match=r"weight of shape \(4, 2, 3, 2\) does not fit this "
                                         r"operator: expected \(4, 2, 3, 3\)"):
        op.with_weight(np.ones((4, 2, 3, 2)))
    with pytest.raises(TypeError, match=r"weight dtype int64 is not supported"):
        op.with_weight(np.ones((4, 2, 3, 3), dtype=np.int64))


# ------------------------------------------------------------------ backends
class _FakeCupyArray:
    """Stands in for cupy.ndarray: convmat detects CuPy through sys.modules only."""

    shape = (128,)
    ndim = 1


def test_mixing_backends_is_a_type_error(op, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=_FakeCupyArray))
    with pytest.raises(TypeError, match=r"x is a CuPy \(GPU\) array but the operator is on "
                                        r"NumPy/SciPy \(CPU\); mixing backends is not supported"):
        op @ _FakeCupyArray()
    with pytest.raises(TypeError, match=r"x is a CuPy \(GPU\) array but the weight is on "
                                        r"NumPy/SciPy \(CPU\)"):
        convmat.conv(_FakeCupyArray(), W3)
    with pytest.raises(TypeError, match=r"weight is a CuPy \(GPU\) array but the operator"):
        op.with_weight(_FakeCupyArray())


def testformat_bytes():
    assert format_bytes(10) == "10 B"
    assert format_bytes(2048) == "2.0 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(5 * 2**40) == "5.0 TiB"
