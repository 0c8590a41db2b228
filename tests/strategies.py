"""Hypothesis strategies that draw valid convolution geometries by construction."""

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

MODES = ("zeros", "reflect", "replicate", "circular")
DTYPES = ("float32", "float64", "complex64", "complex128")
# Keeps the naive reference (rows * row length Python iterations) fast.
MAX_REFERENCE_WORK = 6000


@dataclass
class Case:
    weight_shape: tuple
    input_shape: tuple          # of the operator (conv input, or transposed-conv input)
    options: dict               # keyword arguments of conv_matrix / conv_transpose_matrix
    pads: list                  # resolved (lo, hi) per axis
    transposed: bool = False
    output_padding: tuple = ()
    kernel: tuple = field(default=())

    @property
    def conv_options(self):
        return {k: v for k, v in self.options.items() if k not in ("output_padding",)}


def _padding(draw, D, k, dl, s, transposed):
    styles = ["int", "tuple", "pairs", "valid"]
    if all(v == 1 for v in s):
        styles.append("same")
    if transposed:  # PyTorch-style transposed padding is per axis; keep pairs too (adjoint)
        styles = [x for x in styles]
    style = draw(st.sampled_from(styles))
    if style == "valid":
        return "valid", [(0, 0)] * D
    if style == "same":
        tot = [dl[d] * (k[d] - 1) for d in range(D)]
        return "same", [(t // 2, t - t // 2) for t in tot]
    if style == "int":
        p = draw(st.integers(0, 2))
        return p, [(p, p)] * D
    if style == "tuple":
        ps = tuple(draw(st.integers(0, 2)) for _ in range(D))
        return ps, [(p, p) for p in ps]
    pairs = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(D))
    return pairs, list(pairs)


def _fits(mode, size, lo, hi, span):
    if size < 1 or span > size + lo + hi:
        return False
    if mode == "reflect" and max(lo, hi) >= size:
        return False
    if mode == "circular" and max(lo, hi) > size:
        return False
    return True


@st.composite
def cases(draw, transposed=False, max_ndim=3, modes=MODES):
    D = draw(st.integers(1, max_ndim))
    groups = draw(st.integers(1, 2 if D == 3 else 3))
    cin_g = draw(st.integers(1, 2))
    cout_g = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(modes))
    kmax = 2 if D == 3 else 3
    k = tuple(draw(st.integers(1, kmax)) for _ in range(D))
    s = tuple(draw(st.integers(1, 3)) for _ in range(D))
    dl = tuple(draw(st.integers(1, 2)) for _ in range(D))
    padding, pads = _padding(draw, D, k, dl, s, transposed)
    span = [dl[d] * (k[d] - 1) + 1 for d in range(D)]
    extra = 1 if D == 3 else 3
    options = dict(stride=s, padding=padding, dilation=dl, groups=groups, padding_mode=mode)
    if not transposed:
        n = []
        for d in range(D):
            size = 1 + draw(st.integers(0, extra))
            while not _fits(mode, size, *pads[d], span[d]):
                size += 1
            n.append(size)
        weight_shape = (cout_g * groups, cin_g, *k)
        input_shape = (cin_g * groups, *n)
        op = (0,) * D
    else:
        m, op = [], []
        for d in range(D):
            size = 1 + draw(st.integers(0, extra))
            o = draw(st.integers(0, max(s[d], dl[d]) - 1))
            while not _fits(mode, (size - 1) * s[d] - sum(pads[d]) + span[d] + o,
                            *pads[d], span[d]):
                size += 1
            m.append(size)
            op.append(o)
        op = tuple(op)
        options["output_padding"] = op
        # weight (C_in, C_out/G, *k): C_in = transposed input channels
        weight_shape = (cin_g * groups, cout_g, *k)
        input_shape = (cin_g * groups, *m)
    return Case(weight_shape, tuple(input_shape), options, pads, transposed, op, k)


def work(case):
    """Python iterations the naive reference needs for this case."""
    return int(np.prod(case.input_shape)) * int(np.prod(case.weight_shape)) * 4


def random_array(rng, shape, dtype, integer=False):
    dtype = np.dtype(dtype)
    if integer:
        a = rng.integers(-4, 5, size=shape).astype(np.float64)
    else:
        a = rng.standard_normal(shape)
    if dtype.kind == "c":
        b = rng.integers(-4, 5, size=shape) if integer else rng.standard_normal(shape)
        a = a + 1j * b
    return a.astype(dtype)
