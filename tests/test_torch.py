"""Optional cross-check against PyTorch (not a dependency: skips cleanly without it).

Convolutions go through PyTorch's ``Conv{1,2,3}d`` modules (every ``padding_mode``, int or
per-axis padding, 'same' and 'valid') or, for per-axis ``(lo, hi)`` pairs, ``F.pad`` then
``F.conv{1,2,3}d`` without padding, which is what the modules do. Transposed convolutions go
through ``F.conv_transpose{1,2,3}d`` or, with ``output_size``, ``ConvTranspose{1,2,3}d``:
PyTorch takes symmetric padding and zeros mode only there, and the strategy draws just
that, so no example is discarded. The one-channel shorthand goes through ``ConvOperator``.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import convmat

from reference import assert_close
from strategies import TORCH_MODES, cases, make_case

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CONV_MODULE = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_T_MODULE = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d,
                 3: torch.nn.ConvTranspose3d}
TORCH_DTYPES = ("float32", "float64")
SEEDS = st.integers(0, 2**32 - 1)


def _convmat(case, w, x):
    """convmat on a batch ``x`` with channel axes (``ConvOperator`` for the shorthand)."""
    if case.shorthand:
        make = convmat.ConvOperator.transposed if case.transposed else convmat.ConvOperator
        return (make(w, case.input_shape, **case.options) @ x[:, 0])[:, None]
    apply = convmat.conv_transpose if case.transposed else convmat.conv
    return apply(x, w, **case.options)


def _torch_conv(case, w, x):
    D = case.ndim
    padding = case.options.get("padding", 0)
    pairs = not isinstance(padding, str | int) and any(isinstance(p, tuple) for p in padding)
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    if pairs:  # what the modules do: pad (mode), then convolve without padding
        flat = [v for pair in reversed(case.pads) for v in pair]
        mode = "constant" if case.mode == "zeros" else case.mode
        return CONV[D](F.pad(xt, flat, mode=mode), wt, stride=case.stride,
                       dilation=case.dilation, groups=case.groups)
    c_out, cin_g = w.shape[:2]
    m = CONV_MODULE[D](cin_g * case.groups, c_out, case.kernel, stride=case.stride,
                       padding=padding, dilation=case.dilation, groups=case.groups,
                       bias=False, padding_mode=case.mode, dtype=wt.dtype)
    with torch.no_grad():
        m.weight.copy_(wt)
        return m(xt)


def _torch_conv_transpose(case, w, y):
    D = case.ndim
    padding = tuple(lo for lo, _ in case.pads)
    wt, yt = torch.from_numpy(w), torch.from_numpy(y)
    if "output_size" not in case.options:
        return CONV_T[D](yt, wt, stride=case.stride, padding=padding,
                         output_padding=case.output_padding, dilation=case.dilation,
                         groups=case.groups)
    c_in, cout_g = w.shape[:2]
    m = CONV_T_MODULE[D](c_in, cout_g * case.groups, case.kernel, stride=case.stride,
                         padding=padding, dilation=case.dilation, groups=case.groups,
                         bias=False, dtype=wt.dtype)
    with torch.no_grad():
        m.weight.copy_(wt)
        return m(yt, output_size=list(case.out_size))


def _check(case, dtype, seed, torch_apply):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(case.weight_shape).astype(dtype)
    x = rng.standard_normal((2, *case.full_input_shape)).astype(dtype)
    got = _convmat(case, w, x)
    expected = torch_apply(case, case.full(w), x).numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    # both sides round: 2 gamma(terms + 2) of sum |w| |x| per output (PyTorch's own
    # sum |w| |x|, in float64)
    scale = torch_apply(case, np.abs(case.full(w)).astype(np.float64),
                        np.abs(x).astype(np.float64)).numpy()
    assert_close(got, expected, scale, case.terms, dtype)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@given(case=cases(max_ndim=3, modes=TORCH_MODES), dtype=st.sampled_from(TORCH_DTYPES),
       seed=SEEDS)
@example(case=make_case((2, 3, 4, 4), (3, 9, 8), padding="same", dilation=3,
                        padding_mode="reflect"), dtype="float64", seed=0)
@example(case=make_case((3,), (5,), padding=((4, 2),), stride=4, dilation=2,
                        padding_mode="circular"), dtype="float32", seed=0)
def test_conv_matches_torch(case, dtype, seed):
    _check(case, dtype, seed, _torch_conv)


@given(case=cases(transposed=True, max_ndim=3, modes=("zeros",), symmetric=True),
       dtype=st.sampled_from(TORCH_DTYPES), seed=SEEDS)
@example(case=make_case((4, 2, 3, 3), (4, 5, 6), transposed=True, stride=2, padding=1,
                        output_size=(10, 12)), dtype="float64", seed=0)
@example(case=make_case((1, 1, 2), (1, 3), transposed=True, dilation=3, output_padding=2),
         dtype="float64", seed=0)  # output_padding >= stride (allowed by the dilation)
def test_conv_transpose_matches_torch(case, dtype, seed):
    _check(case, dtype, seed, _torch_conv_transpose)


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
