"""Optional cross-check against PyTorch (not a dependency: skips cleanly without it)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convmat

from strategies import cases

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@settings(max_examples=100)
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_conv_matches_torch(case, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(case.weight_shape)
    x = rng.standard_normal((2, *case.input_shape))
    D = len(case.input_shape) - 1
    # PyTorch's Conv*d modules: pad with F.pad (mode), then convolve without padding
    flat = [v for pair in reversed(case.pads) for v in pair]
    mode = case.options["padding_mode"]
    xt = F.pad(torch.from_numpy(x), flat, mode="constant" if mode == "zeros" else mode)
    expected = CONV[D](xt, torch.from_numpy(w), stride=case.options["stride"],
                       dilation=case.options["dilation"], groups=case.options["groups"]).numpy()
    got = convmat.conv(x, w, **case.options)
    assert got.shape == expected.shape
    scale = np.abs(w).sum() * np.abs(x).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=64 * np.finfo(float).eps * scale)


@settings(max_examples=100)
@given(case=cases(transposed=True, modes=("zeros",)), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_matches_torch(case, seed):
    # PyTorch's transposed conv takes symmetric padding only and zeros mode only
    pads = case.pads
    if any(lo != hi for lo, hi in pads):
        return
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(case.weight_shape)
    y = rng.standard_normal((2, *case.input_shape))
    D = len(case.input_shape) - 1
    expected = CONV_T[D](torch.from_numpy(y), torch.from_numpy(w),
                         stride=case.options["stride"], padding=tuple(lo for lo, _ in pads),
                         output_padding=case.output_padding, dilation=case.options["dilation"],
                         groups=case.options["groups"]).numpy()
    got = convmat.conv_transpose(y, w, **case.options)
    assert got.shape == expected.shape
    scale = np.abs(w).sum() * np.abs(y).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=64 * np.finfo(float).eps * scale)


def test_output_size_matches_torch_module():
    w = np.random.default_rng(1).standard_normal((4, 2, 3, 3))
    m = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
    y = np.random.default_rng(2).standard_normal((1, 4, 5, 6))
    for size in [(9, 11), (10, 12), (9, 12)]:
        expected = m(torch.from_numpy(y), output_size=size).detach().numpy()
        got = convmat.conv_transpose(y, w, stride=2, padding=1, output_size=size)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="valid sizes range from"):
        m(torch.from_numpy(y), output_size=(11, 11))  # PyTorch refuses the same size
    with pytest.raises(ValueError, match=r"valid sizes range from \(9, 11\) to \(10, 12\)"):
        convmat.conv_transpose(y, w, stride=2, padding=1, output_size=(11, 11))


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_same_padding_matches_torch():
    rng = np.random.default_rng(5)
    for k, d in [(4, 1), (4, 3), (3, 2), (2, 1)]:
        w = rng.standard_normal((2, 3, k, k))
        x = rng.standard_normal((1, 3, 9, 8))
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same",
                            dilation=d).numpy()
        np.testing.assert_allclose(convmat.conv(x, w, padding="same", dilation=d), expected,
                                   rtol=1e-12, atol=1e-12)
