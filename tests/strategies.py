"""Hypothesis strategies that draw valid convolution geometries by construction.

A case draws, in this order: the number of spatial axes, the padding mode, whether the weight
is the one-channel shorthand, the padding style, then per axis the kernel, stride, dilation and
padding, then an input just big enough for them (PyTorch's rules: a dilated kernel that fits
the padded input, ``reflect`` padding below the input size, ``circular`` and ``symmetric``
at most the input size), then channels within what is left of the reference's work budget.
Large kernels, strides, dilations and paddings come with few axes; four axes come with
kernels of 1-2 and tiny inputs, so that the naive loop reference stays fast.

Everything a test needs to know about a case (resolved padding, output padding, whether
``max_bytes`` must refuse) is computed here from the arguments, independently of convmat.
"""

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

#: PyTorch's padding modes (what a cross-check against PyTorch can draw).
TORCH_MODES = ("zeros", "reflect", "replicate", "circular")
#: Every padding mode: PyTorch's and NumPy's ``symmetric`` (the half-sample mirror).
MODES = (*TORCH_MODES, "symmetric")
DTYPES = ("float32", "float64", "complex64", "complex128")
#: Python iterations (rows x taps of the forward convolution) the naive reference may take.
MAX_REFERENCE_WORK = 12000
#: Number of spatial axes, weighted towards the cheap ones.
NDIMS = (1, 1, 1, 2, 2, 2, 3, 3, 4)
#: Per number of spatial axes: the largest kernel, stride, dilation, padding and extra input
#: size (beyond the smallest that fits) drawn.
LIMITS = {
    1: dict(kernel=12, stride=6, dilation=5, padding=10, extra=6),
    2: dict(kernel=5, stride=4, dilation=3, padding=4, extra=3),
    3: dict(kernel=3, stride=3, dilation=3, padding=3, extra=1),
    4: dict(kernel=2, stride=2, dilation=2, padding=1, extra=1),
}
#: Channels per group and groups drawn (less when the budget is short).
MAX_CHANNELS_PER_GROUP = 4
MAX_GROUPS = 3
#: ``max_bytes`` that always builds: above any peak these small cases can reach (the CSR of
#: the widest dtype and index, twice for a converted transpose, plus 128 MiB of workspace).
GENEROUS_SLACK = 2**27


@dataclass
class Case:
    """One drawn convolution (or transposed convolution) and what a test needs to know."""

    weight_shape: tuple     # as passed to convmat; the kernel alone for the shorthand
    input_shape: tuple      # of the operator (conv input, or transposed-conv input)
    options: dict           # keyword arguments of conv_matrix / conv_transpose_matrix
    pads: tuple             # resolved (lo, hi) per axis
    transposed: bool = False
    output_padding: tuple = ()  # resolved, whether given as output_padding or output_size
    refuse: bool | None = False  # max_bytes must refuse (True), build (False), or unknown

    # ------------------------------------------------------------------ shapes
    @property
    def shorthand(self):
        """One-channel shorthand: a kernel-only weight and a spatial-only input shape."""
        return len(self.weight_shape) == len(self.input_shape)

    @property
    def ndim(self):
        return len(self.pads)

    @property
    def kernel(self):
        return tuple(self.weight_shape[-self.ndim:])

    @property
    def full_weight_shape(self):
        """The weight shape with its channel axes (``(1, 1, *k)`` for the shorthand)."""
        return (1, 1, *self.weight_shape) if self.shorthand else tuple(self.weight_shape)

    @property
    def full_input_shape(self):
        """The input shape with its channel axis (``(1, *n)`` for the shorthand)."""
        return (1, *self.input_shape) if self.shorthand else tuple(self.input_shape)

    def full(self, w):
        """The weight with its channel axes."""
        return np.reshape(w, self.full_weight_shape)

    @property
    def groups(self):
        return self.options.get("groups", 1)

    @property
    def stride(self):
        return _axes(self.options.get("stride", 1), self.ndim)

    @property
    def dilation(self):
        return _axes(self.options.get("dilation", 1), self.ndim)

    @property
    def mode(self):
        return self.options.get("padding_mode", "zeros")

    @property
    def out_size(self):
        """Spatial output size of the operator (conv output, or transposed-conv output)."""
        k, s, dl, n = self.kernel, self.stride, self.dilation, self.full_input_shape[1:]
        if self.transposed:
            return tuple((n[d] - 1) * s[d] - sum(self.pads[d]) + dl[d] * (k[d] - 1)
                         + self.output_padding[d] + 1 for d in range(self.ndim))
        return tuple((n[d] + sum(self.pads[d]) - dl[d] * (k[d] - 1) - 1) // s[d] + 1
                     for d in range(self.ndim))

    @property
    def output_channels(self):
        fw = self.full_weight_shape
        return fw[1] * self.groups if self.transposed else fw[0]

    @property
    def output_shape(self):
        """Shape of the operator's output, as convmat gives it (no channel axis: shorthand)."""
        out = self.out_size
        return out if self.shorthand else (self.output_channels, *out)

    # ------------------------------------------------------------------ options
    @property
    def geometry_options(self):
        """Options of ``conv_geometry`` / ``conv_transpose_geometry`` (no ``max_bytes``)."""
        return {k: v for k, v in self.options.items() if k != "max_bytes"}

    @property
    def conv_options(self):
        """Options of the matching forward convolution (no output size, no ``max_bytes``)."""
        return {k: v for k, v in self.options.items()
                if k not in ("output_padding", "output_size", "max_bytes")}

    @property
    def max_bytes(self):
        return self.options.get("max_bytes")

    # ------------------------------------------------------------------ sizes
    @property
    def row_length(self):
        """Most entries in a row of the forward convolution: ``C_in/G * prod(k)``."""
        return self.full_weight_shape[1] * math.prod(self.kernel)

    @property
    def forward_rows(self):
        """Rows of the forward convolution: ``C_out * prod(out)``."""
        if self.transposed:
            return math.prod(self.full_input_shape)
        return self.full_weight_shape[0] * math.prod(self.out_size)

    @property
    def forward_cols(self):
        """Columns of the forward convolution: ``C_in * prod(n)``."""
        if self.transposed:
            return self.output_channels * math.prod(self.out_size)
        return math.prod(self.full_input_shape)

    def _scatter_terms(self, m):
        """Most products summed into one output of a scatter from inputs of size ``m``.

        Per axis, each tap sends an input to at most one padded position, and a padded
        position folds onto an output from at most ``1 + lo + hi`` places (``zeros``: 1).
        """
        fw = self.full_weight_shape
        per_axis = [min(mm * k, k if self.mode == "zeros" else k * (1 + lo + hi))
                    for mm, k, (lo, hi) in zip(m, self.kernel, self.pads, strict=True)]
        return fw[0] // self.groups * math.prod(per_axis)

    @property
    def terms(self):
        """Most products one output of the operator sums (for error bounds)."""
        if self.transposed:
            return self._scatter_terms(self.full_input_shape[1:])
        return self.row_length

    @property
    def adjoint_terms(self):
        """Most products one output of the operator's transpose sums."""
        if self.transposed:
            return self.row_length
        return self._scatter_terms(self.out_size)

    def bytes_bounds(self):
        """Bounds of the build's peak memory from the shapes alone, for any dtype.

        Lower: the ``indptr`` of the matrix alone (4 bytes per row, plus one). Upper: every
        row of the forward matrix full (``C_in/G * prod(k)`` entries of 16 + 8 bytes), twice
        (a converted transpose holds both), plus ``GENEROUS_SLACK``.
        """
        rows = self.forward_cols if self.transposed else self.forward_rows
        lower = 4 * (rows + 1)
        nnz = self.forward_rows * self.row_length
        csr = nnz * 24 + (max(self.forward_rows, self.forward_cols) + 1) * 8
        return lower, 2 * csr + GENEROUS_SLACK


def _axes(value, ndim):
    return tuple(value) if isinstance(value, tuple | list) else (value,) * ndim


def resolve_padding(padding, kernel, dilation):
    """``(lo, hi)`` per axis from convmat's padding argument (PyTorch's 'same' rule)."""
    ndim = len(kernel)
    if padding == "valid":
        return tuple((0, 0) for _ in range(ndim))
    if padding == "same":
        totals = [dl * (k - 1) for k, dl in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, int):
        return tuple((padding, padding) for _ in range(ndim))
    return tuple(tuple(p) if isinstance(p, tuple | list) else (p, p) for p in padding)


def make_case(weight_shape, input_shape, transposed=False, **options):
    """A :class:`Case` from convmat's arguments (for ``@example``), resolved here."""
    ndim = len(input_shape) if len(weight_shape) == len(input_shape) else len(input_shape) - 1
    kernel = tuple(weight_shape[-ndim:])
    dilation = _axes(options.get("dilation", 1), ndim)
    stride = _axes(options.get("stride", 1), ndim)
    pads = resolve_padding(options.get("padding", 0), kernel, dilation)
    op = (0,) * ndim
    if transposed:
        m = input_shape[-ndim:]
        if options.get("output_size") is not None:
            size = tuple(options["output_size"])[-ndim:]
            op = tuple(size[d] - ((m[d] - 1) * stride[d] - sum(pads[d])
                                  + dilation[d] * (kernel[d] - 1) + 1) for d in range(ndim))
        else:
            op = _axes(options.get("output_padding", 0), ndim)
    case = Case(tuple(weight_shape), tuple(input_shape), dict(options), pads, transposed, op)
    case.refuse = _refusal(case)
    return case


def _refusal(case):
    """Whether ``max_bytes`` must refuse (True), must build (False), or either (None)."""
    if case.max_bytes is None:
        return False
    lower, upper = case.bytes_bounds()
    if case.max_bytes < lower:
        return True
    if case.max_bytes >= upper:
        return False
    return None


def _fits(mode, size, lo, hi, span):
    """PyTorch's rules for an axis: the dilated kernel fits, the padding mode can fill."""
    if size < 1 or span > size + lo + hi:
        return False
    if mode == "reflect" and max(lo, hi) >= size:
        return False
    if mode in ("circular", "symmetric") and max(lo, hi) > size:
        return False
    return True


def _smallest(mode, lo, hi, span, size_of, start=1):
    """Smallest ``m >= start`` whose axis ``size_of(m)`` fits."""
    m = start
    while not _fits(mode, size_of(m), lo, hi, span):
        m += 1
    return m


@st.composite
def cases(draw, transposed=False, max_ndim=4, modes=MODES, symmetric=False, refusals=False,
          shorthand=True):
    """A valid convolution (``transposed=False``) or transposed convolution.

    ``symmetric``: padding as one int or an int per axis (what PyTorch's transposed
    convolution takes). ``refusals``: ``max_bytes`` may be drawn too small to build.
    ``shorthand``: the one-channel shorthand may be drawn.
    """
    D = draw(st.sampled_from([d for d in NDIMS if d <= max_ndim]))
    lim = LIMITS[D]
    mode = draw(st.sampled_from(modes))
    short = shorthand and draw(st.integers(0, 4)) == 0
    styles = ["int", "tuple", "valid"] if symmetric else [
        "int", "tuple", "pairs", "mixed", "valid", "same"]
    style = draw(st.sampled_from(styles))
    k = tuple(draw(st.integers(1, lim["kernel"])) for _ in range(D))
    # stride 1 and dilation 1 half the time: the common case, and the one whose transpose
    # is itself a convolution (written directly by the builder)
    s = (1,) * D if style == "same" or draw(st.booleans()) else tuple(
        draw(st.integers(1, lim["stride"])) for _ in range(D))
    dl = (1,) * D if draw(st.booleans()) else tuple(
        draw(st.integers(1, lim["dilation"])) for _ in range(D))
    pmax = lim["padding"]
    if style == "valid":
        padding = "valid"
    elif style == "same":
        padding = "same"
    elif style == "int":
        padding = draw(st.integers(0, pmax))
    elif style == "tuple":
        padding = tuple(draw(st.integers(0, pmax)) for _ in range(D))
    elif style == "pairs":
        padding = tuple((draw(st.integers(0, pmax)), draw(st.integers(0, pmax)))
                        for _ in range(D))
    else:  # an int on some axes, a pair on others
        padding = tuple(draw(st.integers(0, pmax)) if draw(st.booleans())
                        else (draw(st.integers(0, pmax)), draw(st.integers(0, pmax)))
                        for _ in range(D))
    pads = resolve_padding(padding, k, dl)
    span = [dl[d] * (k[d] - 1) + 1 for d in range(D)]

    # Output padding, then the operator's input sizes (conv: n; transposed: m), the
    # smallest whose forward-convolution input fits, plus a few.
    op = (0,) * D
    by_size = transposed and draw(st.booleans())  # output_size instead of output_padding
    if transposed:
        op = tuple(draw(st.integers(0, (s[d] if by_size else max(s[d], dl[d])) - 1))
                   for d in range(D))

    def forward_input(d, size):
        if not transposed:
            return size
        return (size - 1) * s[d] - sum(pads[d]) + span[d] + op[d]

    def spatial_work(sizes):
        """Rows x taps of the forward convolution, one channel."""
        rows = math.prod(sizes) if transposed else math.prod(
            (n + sum(pads[d]) - span[d]) // s[d] + 1 for d, n in enumerate(sizes))
        return rows * math.prod(k)

    smallest = [_smallest(mode, *pads[d], span[d], lambda size, d=d: forward_input(d, size))
                for d in range(D)]
    sizes = [size + draw(st.integers(0, lim["extra"])) for size in smallest]
    if spatial_work(sizes) > MAX_REFERENCE_WORK:  # the extra sizes overshot the budget
        sizes = smallest
    options = dict(stride=s, padding=padding, dilation=dl, padding_mode=mode)

    if short:
        weight_shape, input_shape = k, tuple(sizes)
    else:
        budget = max(1, MAX_REFERENCE_WORK // spatial_work(sizes))
        groups = draw(st.integers(1, max(1, min(MAX_GROUPS, budget))))
        budget = max(1, budget // groups)
        c_in = draw(st.integers(1, max(1, min(MAX_CHANNELS_PER_GROUP, budget))))
        budget = max(1, budget // c_in)
        c_out = draw(st.integers(1, max(1, min(MAX_CHANNELS_PER_GROUP, budget))))
        options["groups"] = groups
        # c_in, c_out: channels per group of the forward convolution, whose weight
        # (C_out, C_in/G, *k) is also the transposed convolution's (C_in, C_out/G, *k)
        weight_shape = (c_out * groups, c_in, *k)
        input_shape = (c_out * groups if transposed else c_in * groups, *sizes)
    if transposed:
        if by_size:
            out_size = tuple((sizes[d] - 1) * s[d] - sum(pads[d]) + span[d] + op[d]
                             for d in range(D))
            if not short and draw(st.booleans()):  # optionally preceded by the channels
                out_size = (weight_shape[1] * options["groups"], *out_size)
            options["output_size"] = out_size
        else:
            options["output_padding"] = op
    case = Case(tuple(weight_shape), tuple(input_shape), options, pads, transposed, op)

    kinds = ["none"] * 4 + ["generous"] * 2 + (["small"] if refusals else [])
    kind = draw(st.sampled_from(kinds))
    lower, upper = case.bytes_bounds()
    if kind == "generous":
        case.options["max_bytes"] = upper + draw(st.integers(0, 2**20))
    elif kind == "small":
        case.options["max_bytes"] = draw(st.integers(0, lower - 1))
    case.refuse = _refusal(case)
    return case


def work(case):
    """Python iterations the naive reference needs for this case (rows x taps)."""
    return case.forward_rows * case.row_length


def random_array(rng, shape, dtype, integer=False):
    """Random values of ``dtype`` (small integers: every sum of products is exact)."""
    dtype = np.dtype(dtype)
    if integer:
        a = rng.integers(-4, 5, size=shape).astype(np.float64)
    else:
        a = rng.standard_normal(shape)
    if dtype.kind == "c":
        b = rng.integers(-4, 5, size=shape) if integer else rng.standard_normal(shape)
        a = a + 1j * b
    return a.astype(dtype)
