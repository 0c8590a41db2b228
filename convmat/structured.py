"""Structured products of a convolution: ``W @ x`` and ``W^H @ y`` without reading ``W``.

The CSR product reads all of ``W``, 12-16 bytes per entry, on every product; a dense
convolution reads only the kernel. :class:`StructuredConv` computes the same operator two
more ways, on NumPy (SciPy's FFT, BLAS through ``matmul``) or CuPy (cuFFT, cuBLAS):

``direct``
    im2col and one GEMM per group. The input is padded once into a buffer by the padding
    mode's index map (a gather, below); the windows of every output position are a strided
    view of that buffer, copied into columns ``(C_in/G * prod(k), positions)`` tile by tile
    (at most :data:`TILE_BYTES` of columns at a time), and multiplied by the weight
    ``(C_out/G, C_in/G * prod(k))`` with ``matmul``. The adjoint multiplies by the weight's
    conjugate transpose, then adds the columns back into the buffer tap by tap
    (overlap-add), then folds the buffer (below).
``fft``
    The padded input's FFT (``scipy.fft`` with ``workers``, or ``cupy.fft``) times the FFT
    of the dilated, flipped kernel, summed over the input channels of each group per
    frequency. The FFT length covers the whole padded extent, so the circular product
    equals the linear one on the positions kept (no wrap-around), and a stride subsamples
    the result. The adjoint upsamples by the stride, multiplies by the FFT of the (conjugated)
    kernel, and folds.

Padding, exactly, for every mode
--------------------------------
Each axis of the buffer holds the input at ``[start, start + n)``; every other (border)
position reads the input through the mode's index map (:data:`convmat.axes.PADDING_MAPS`),
or is zero where the mode drops it. The buffer is filled by one copy of the input and, axis
after axis, one plane copy per border position (as ``np.pad`` does, so positions in the
corners read through both axes' maps). The adjoint of that gather is a scatter-add: axis
after axis in reverse order, each border plane is added onto the plane it was copied from,
and the interior is what remains. So the transposed convolution of ``reflect``,
``replicate``, ``circular`` and ``symmetric`` padding is exact, which PyTorch cannot give.

Which path to take is :func:`choose_method`'s answer from :func:`estimate_costs`, a cost
model in seconds per product with constants measured once on the reference machine (see
:data:`COSTS`), which :func:`calibrate` can measure again on this one.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .axes import PADDING_MAPS
from .backend import ConvMatrixTooLarge, format_bytes, memory_limit
from .geometry import ConvGeometry
from .indices import default_threads

__all__ = ["COSTS", "METHODS", "TILE_BYTES", "AxisPad", "StructuredConv", "adjoint_weight",
           "axis_pads", "calibrate", "check_method", "check_structured", "choose_method",
           "estimate_costs", "fft_samples", "structured_bytes"]

#: The ways to apply a convolution operator: the sparse matrix, im2col + GEMM, FFT.
METHODS = ("csr", "direct", "fft")
#: Bytes of im2col columns formed at once by the direct path (a tile of samples, or of
#: rows of the first output axis when one sample's columns are larger).
TILE_BYTES = 1 << 24

#: The cost model's constants (per thread where it matters), measured on the reference
#: 2-core machine (``benchmarks/products.py`` prints the model's error): reading a CSR
#: (bytes/s), moving memory in copies and adds (bytes/s), GEMM (flop/s, float64; float32
#: runs twice as fast), an FFT pair's seconds per ``F log2 F`` of real data (complex
#: data costs twice), and each path's fixed seconds per call (Python and planning
#: overhead, which decides tiny problems).
COSTS = {"csr_read": 7.5e9, "copy": 6e9, "gemm": 45e9, "fft": 1.7e-9,
         "call_csr": 20e-6, "call_direct": 150e-6, "call_fft": 300e-6}
#: A structured workspace below this many bytes is not checked against the available
#: memory (reading it costs more than such a product) unless ``max_bytes`` is given.
SMALL_WORKSPACE = 1 << 26


def adjoint_weight(forward: ConvGeometry, weight: Any, xp: ModuleType) -> Any:
    """Weight of ``forward.adjoint``: channels swapped per group, kernel flipped."""
    g = forward
    groups, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    k = g.kernel_size
    w = weight.reshape(groups, cout_g, cin_g, *k)
    w = xp.swapaxes(w, 1, 2).reshape(g.in_channels, cout_g, *k)
    w = xp.flip(w, axis=tuple(range(2, 2 + len(k))))
    return xp.ascontiguousarray(w)


def check_method(method: str) -> str:
    """``method`` if it is ``'auto'`` or one of :data:`METHODS`, else ``ValueError``."""
    if method != "auto" and method not in METHODS:
        raise ValueError(f"method={method!r} is not one of 'auto', "
                         f"{', '.join(map(repr, METHODS))}")
    return method


# --------------------------------------------------------------------------- padding
@dataclasses.dataclass(frozen=True)
class AxisPad:
    """How one spatial axis sits in the padded buffer.

    Buffer position ``b`` holds padded position ``u = b + first`` (input index ``u`` when
    ``0 <= u < n``). ``read`` is where the windows start (output 0, tap 0), ``span`` the
    positions they read: ``stride*(out - 1) + dilation*(k - 1) + 1``. ``borders`` lists the
    border positions that read the input, as ``(b, b_source)``; ``dropped`` says whether
    some border positions are zero.
    """

    size: int
    start: int
    extent: int
    read: int
    span: int
    borders: tuple[tuple[int, int], ...]
    dropped: bool

    @staticmethod
    def plan(n: int, k: int, stride: int, dilation: int, lo: int, out: int,
             mode: str) -> AxisPad:
        """The axis' place in the buffer (formulas in the class docstring)."""
        span = stride * (out - 1) + dilation * (k - 1) + 1
        jmin, jmax = min(0, lo), max(span, lo + n)  # read range [0, span) and the input
        start = lo - jmin
        outside = np.concatenate([np.arange(0, start), np.arange(start + n, jmax - jmin)])
        src = PADDING_MAPS[mode](outside - start, n)
        kept = src >= 0
        borders = tuple((int(b), int(s) + start) for b, s in zip(outside[kept], src[kept],
                                                                   strict=True))
        return AxisPad(n, start, jmax - jmin, -jmin, span, borders, bool((~kept).any()))


@functools.lru_cache(maxsize=256)
def axis_pads(geometry: ConvGeometry) -> tuple[AxisPad, ...]:
    """The :class:`AxisPad` of every spatial axis of a forward geometry (cached)."""
    g = geometry
    return tuple(
        AxisPad.plan(n, k, s, d, lo, out, g.padding_mode)
        for n, k, s, d, (lo, _), out in zip(g.input_size, g.kernel_size, g.stride,
                                             g.dilation, g.padding, g.output_size,
                                             strict=True))


def _plane(ndim: int, axis: int, index: int | slice) -> tuple[Any, ...]:
    """Index of one position (or slice) of spatial ``axis`` in a ``(N, C, *spatial)`` array."""
    return (slice(None),) * (2 + axis) + (index,) + (slice(None),) * (ndim - axis - 1)


# --------------------------------------------------------------------------- the products
class StructuredConv:
    """``W @ x`` and ``W^H @ y`` of a forward convolution from its kernel (no ``W``).

    Parameters
    ----------
    geometry : ConvGeometry
        The forward convolution (``transposed=False``); its layout is ignored: batches are
        channels-first ``(N, C, *spatial)`` here.
    weight : array
        ``(C_out, C_in/G, *kernel)`` as the builder reads it (flipped when ``flip``; see
        ``convmat.matrix.conv_weight``), NumPy or CuPy.
    xp : module
        ``numpy`` or ``cupy``.

    Examples
    --------
    >>> import numpy as np
    >>> from convmat import conv_geometry, conv_matrix
    >>> w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    >>> g = conv_geometry(w, (1, 5, 5), stride=2, padding=1, padding_mode="reflect")
    >>> s = StructuredConv(g, w, np)
    >>> x = np.random.default_rng(0).standard_normal((2, 1, 5, 5))
    >>> W = conv_matrix(w, (1, 5, 5), stride=2, padding=1, padding_mode="reflect")
    >>> y = s.forward(x, "direct")
    >>> bool(np.allclose(y.reshape(2, -1), (W @ x.reshape(2, -1).T).T))
    True
    >>> bool(np.allclose(s.adjoint(y, "fft").reshape(2, -1), (W.T @ y.reshape(2, -1).T).T))
    True
    """

    def __init__(self, geometry: ConvGeometry, weight: Any, xp: ModuleType) -> None:
        g = geometry
        self.geometry = g
        self.xp = xp
        self.weight = weight
        self.axes = axis_pads(g)
        self._weights: dict[str, Any] = {}
        self._spectra: dict[tuple[Any, ...], Any] = {}
        #: ``geometry.adjoint`` (stride 1, zero padding: ``W^T`` is a convolution), or None.
        self.adjoint_geometry = g.adjoint
        self._adjoint: StructuredConv | None = None
        self.threads = default_threads()

    # ---------------------------------------------------------------- shared parts
    @property
    def ndim(self) -> int:
        """Spatial axes."""
        return self.geometry.ndim

    def _weight(self, dtype: np.dtype) -> Any:
        """The weight in ``dtype`` (cast once per dtype)."""
        key = np.dtype(dtype).str
        if key not in self._weights:
            self._weights[key] = self.xp.ascontiguousarray(self.weight.astype(dtype))
        return self._weights[key]

    def _pad(self, x: Any, dtype: np.dtype) -> Any:
        """The padded buffer ``(N, C_in, *extent)`` of a batch ``x`` ``(N, C_in, *n)``."""
        xp, nd = self.xp, self.ndim
        buf = xp.empty((x.shape[0], x.shape[1], *(a.extent for a in self.axes)), dtype=dtype)
        buf[(slice(None), slice(None), *(slice(a.start, a.start + a.size)
                                         for a in self.axes))] = x
        for d, a in enumerate(self.axes):
            if a.dropped:  # zero the border slabs (the folded positions are overwritten)
                buf[_plane(nd, d, slice(0, a.start))] = 0
                buf[_plane(nd, d, slice(a.start + a.size, a.extent))] = 0
            for b, src in a.borders:
                buf[_plane(nd, d, b)] = buf[_plane(nd, d, src)]
        return buf

    def _fold(self, buf: Any) -> Any:
        """The adjoint of :meth:`_pad`: border planes added onto their sources, the interior."""
        nd = self.ndim
        for d in reversed(range(nd)):
            for b, src in self.axes[d].borders:
                buf[_plane(nd, d, src)] += buf[_plane(nd, d, b)]
        inner = buf[(slice(None), slice(None), *(slice(a.start, a.start + a.size)
                                                 for a in self.axes))]
        return self.xp.ascontiguousarray(inner)

    def _tiles(self, batch: int, per_sample: int) -> list[tuple[int, int, int, int]]:
        """``(n0, n1, r0, r1)``: samples and rows of the first output axis per tile."""
        out0 = self.geometry.output_size[0]
        if batch == 0:
            return []
        if per_sample <= TILE_BYTES:
            step = max(1, TILE_BYTES // max(per_sample, 1))
            return [(n, min(n + step, batch), 0, out0) for n in range(0, batch, step)]
        rows = max(1, TILE_BYTES * out0 // per_sample)
        return [(n, n + 1, r, min(r + rows, out0)) for n in range(batch)
                for r in range(0, out0, rows)]

    def _windows(self, buf: Any, n0: int, n1: int, r0: int, r1: int) -> Any:
        """The strided view ``(n, G, C_in/G, *kernel, rows, *out[1:])`` of one tile."""
        g = self.geometry
        start = [a.read for a in self.axes]
        start[0] += g.stride[0] * r0
        sub = buf[(slice(n0, n1), slice(None), *(slice(s, None) for s in start))]
        st = sub.strides
        cin_g = g.in_channels // g.groups
        outs = (r1 - r0, *g.output_size[1:])
        shape = (n1 - n0, g.groups, cin_g, *g.kernel_size, *outs)
        strides = (st[0], st[1] * cin_g, st[1],
                   *(s * dil for s, dil in zip(st[2:], g.dilation, strict=True)),
                   *(s * stp for s, stp in zip(st[2:], g.stride, strict=True)))
        return _as_strided(self.xp)(sub, shape=shape, strides=strides)

    # ---------------------------------------------------------------- public products
    def apply(self, x: Any, method: str, *, adjoint: bool = False,
              conjugate: bool = False) -> Any:
        """``W @ x`` (or ``W^T``/``W^H @ x``) for a batch in the geometry's layout.

        ``x`` is ``(N, *input_shape)``: one-channel shorthand, channels first or last. It
        goes through :meth:`forward`, or :meth:`adjoint` (``W^H`` with ``conjugate``, else
        ``W^T``); the result comes back in the same layout.
        """
        g, xp = self.geometry, self.xp
        batch = int(x.shape[0])
        if g.shorthand:
            x = x.reshape((batch, 1, *x.shape[1:]))
        elif g.channels_last:
            x = xp.moveaxis(x, -1, 1)
        if adjoint:
            y = self.adjoint(x, method, conjugate=conjugate)
        else:
            y = self.forward(x, method, conjugate=conjugate)
        if g.shorthand:
            return y.reshape((batch, *y.shape[2:]))
        if g.channels_last:
            return xp.ascontiguousarray(xp.moveaxis(y, 1, 1 + g.ndim))
        return y

    def forward(self, x: Any, method: str, *, conjugate: bool = False) -> Any:
        """``W @ x`` (``conj(W) @ x``) for a batch ``x`` ``(N, C_in, *n)``: ``(N, C_out, *out)``."""
        dtype = np.result_type(self.weight.dtype, x.dtype)
        conjugate = conjugate and dtype.kind == "c"
        if method == "fft":
            step = self._fft_samples(dtype)
            if x.shape[0] > step:  # spectra of a few samples at a time stay in cache
                return self.xp.concatenate([self.forward(x[n:n + step], method,
                                                         conjugate=conjugate)
                                            for n in range(0, x.shape[0], step)])
            return self._fft_forward(self._pad(x, dtype), dtype, conjugate)
        return self._direct_forward(self._pad(x, dtype), dtype, conjugate)

    def adjoint(self, y: Any, method: str, *, conjugate: bool = True) -> Any:
        """``W^H @ y`` (``W^T @ y`` with ``conjugate=False``) for ``y`` ``(N, C_out, *out)``."""
        dtype = np.result_type(self.weight.dtype, y.dtype)
        conjugate = conjugate and dtype.kind == "c"
        if method == "direct" and self.adjoint_geometry is not None:
            # stride 1, zero padding: W^T is a convolution (the flipped kernel), whose
            # im2col and GEMM beat the GEMM and the overlap-add of the columns
            return self._adjoint_plan().forward(y, method, conjugate=conjugate)
        if method == "fft":
            step = self._fft_samples(dtype)
            if y.shape[0] > step:  # as in forward
                return self.xp.concatenate([self.adjoint(y[n:n + step], method,
                                                         conjugate=conjugate)
                                            for n in range(0, y.shape[0], step)])
            buf = self._fft_adjoint(y, dtype, conjugate)
        else:
            buf = self._direct_adjoint(y, dtype, conjugate)
        return self._fold(buf)

    def _adjoint_plan(self) -> StructuredConv:
        """The forward plan of ``geometry.adjoint`` (made once)."""
        if self._adjoint is None:
            assert self.adjoint_geometry is not None
            self._adjoint = StructuredConv(
                self.adjoint_geometry, adjoint_weight(self.geometry, self.weight, self.xp),
                self.xp)
        return self._adjoint

    # ---------------------------------------------------------------- direct
    def _direct_forward(self, buf: Any, dtype: np.dtype, conjugate: bool) -> Any:
        g, xp = self.geometry, self.xp
        G, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        K, batch = math.prod(g.kernel_size), buf.shape[0]
        w = self._weight(dtype).reshape(G, cout_g, cin_g * K)
        if conjugate:
            w = w.conj()
        y = xp.empty((batch, g.out_channels, *g.output_size), dtype=dtype)
        per_sample = g.in_channels * K * math.prod(g.output_size) * dtype.itemsize
        for n0, n1, r0, r1 in self._tiles(batch, per_sample):
            view = self._windows(buf, n0, n1, r0, r1)
            cols = xp.empty(view.shape, dtype=dtype)
            cols[...] = view
            cols = cols.reshape(n1 - n0, G, cin_g * K, -1)
            if r0 == 0 and r1 == g.output_size[0]:  # whole samples: straight into y
                xp.matmul(w, cols, out=y[n0:n1].reshape(n1 - n0, G, cout_g, -1))
                continue
            part = xp.matmul(w, cols)  # (n, G, C_out/G, positions)
            y[n0:n1, :, r0:r1] = part.reshape(n1 - n0, g.out_channels, r1 - r0,
                                              *g.output_size[1:])
        return y

    def _direct_adjoint(self, y: Any, dtype: np.dtype, conjugate: bool) -> Any:
        g, xp = self.geometry, self.xp
        G, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        K, batch = math.prod(g.kernel_size), y.shape[0]
        w = self._weight(dtype).reshape(G, cout_g, cin_g * K)
        wh = xp.swapaxes(w.conj() if conjugate else w, 1, 2)  # (G, CK, C_out/G)
        buf = xp.zeros((batch, g.in_channels, *(a.extent for a in self.axes)), dtype=dtype)
        per_sample = g.in_channels * K * math.prod(g.output_size) * dtype.itemsize
        for n0, n1, r0, r1 in self._tiles(batch, per_sample):
            part = xp.ascontiguousarray(y[n0:n1, :, r0:r1], dtype=dtype)
            part = part.reshape(n1 - n0, G, cout_g, -1)
            cols = xp.matmul(wh, part).reshape(n1 - n0, g.in_channels, *g.kernel_size,
                                               r1 - r0, *g.output_size[1:])
            counts = (r1 - r0, *g.output_size[1:])
            for tap in itertools.product(*(range(k) for k in g.kernel_size)):
                first = [a.read + dil * t for a, dil, t in zip(self.axes, g.dilation, tap,
                                                               strict=True)]
                first[0] += g.stride[0] * r0
                where = tuple(slice(f, f + s * (c - 1) + 1, s)
                              for f, s, c in zip(first, g.stride, counts, strict=True))
                buf[(slice(n0, n1), slice(None), *where)] += cols[
                    (slice(None), slice(None), *tap)]
        return buf

    # ---------------------------------------------------------------- fft
    def _fft_shape(self, dtype: np.dtype) -> tuple[int, ...]:
        fast = _fft_module(self.xp)[1]
        real = dtype.kind != "c"
        return tuple(fast(a.span, real=real) for a in self.axes)

    def _fft_samples(self, dtype: np.dtype) -> int:
        """Samples transformed at once (:func:`fft_samples`)."""
        return fft_samples(self.geometry, dtype)

    def _spectrum(self, dtype: np.dtype, adjoint: bool, conjugate: bool) -> Any:
        """FFT of the dilated kernel, frequency-major for :meth:`_contract`.

        ``(G, F, C_out/G, C_in/G)`` for the forward product (the kernel flipped), ``(G, F,
        C_in/G, C_out/G)`` for the adjoint (``F`` the frequencies kept).
        """
        key = (np.dtype(dtype).str, adjoint, conjugate)
        if key in self._spectra:
            return self._spectra[key]
        g, xp = self.geometry, self.xp
        G, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        shape = self._fft_shape(dtype)
        kd = tuple(d * (k - 1) + 1 for k, d in zip(g.kernel_size, g.dilation, strict=True))
        w = self._weight(dtype).reshape(G, cout_g, cin_g, *g.kernel_size)
        if conjugate:
            w = w.conj()
        if not adjoint:  # flipped: tap t at kd - 1 - t*dilation
            w = xp.flip(w, axis=tuple(range(3, 3 + self.ndim)))
        where = tuple(slice(0, e, d) for e, d in zip(kd, g.dilation, strict=True))
        full = xp.zeros((G, cout_g, cin_g, *shape), dtype=dtype)
        full[(slice(None),) * 3 + where] = w
        spec = self._fft(full, shape).reshape(G, cout_g, cin_g, -1)
        order = (0, 3, 2, 1) if adjoint else (0, 3, 1, 2)
        spec = xp.ascontiguousarray(spec.transpose(order))
        self._spectra[key] = spec
        return spec

    def _fft(self, a: Any, shape: tuple[int, ...]) -> Any:
        fft, _ = _fft_module(self.xp)
        axes = tuple(range(a.ndim - self.ndim, a.ndim))
        kw = {"workers": self.threads} if self.xp is np else {}
        if a.dtype.kind == "c":
            return fft.fftn(a, s=shape, axes=axes, **kw)
        return fft.rfftn(a, s=shape, axes=axes, **kw)

    def _ifft(self, a: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        fft, _ = _fft_module(self.xp)
        axes = tuple(range(a.ndim - self.ndim, a.ndim))
        kw = {"workers": self.threads} if self.xp is np else {}
        if dtype.kind == "c":
            return fft.ifftn(a, s=shape, axes=axes, **kw)
        return fft.irfftn(a, s=shape, axes=axes, **kw)

    def _contract(self, a: Any, spec: Any, adjoint: bool) -> Any:
        """Sum over the channels of each group, frequency by frequency.

        One batched GEMM over the frequencies, ``(G, F, p, m) @ (G, F, m, N)``, so that a
        batch reads the kernel's spectrum once.
        """
        g, xp = self.geometry, self.xp
        G = g.groups
        batch, freq = a.shape[0], a.shape[2:]
        p, m = spec.shape[2], spec.shape[3]
        F = math.prod(freq)  # explicit: -1 cannot be inferred for an empty batch
        if p == 1 and m == 1:  # one channel per group: a pointwise product
            out = a.reshape(batch, G, F) * spec.reshape(G, F)
        else:
            cols = xp.ascontiguousarray(a.reshape(batch, G, m, F).transpose(1, 3, 2, 0))
            out = xp.matmul(spec, cols)  # (G, F, p, N)
            out = xp.ascontiguousarray(out.transpose(3, 0, 2, 1))
        return out.reshape(batch, G * p, *freq)

    def _fft_forward(self, buf: Any, dtype: np.dtype, conjugate: bool) -> Any:
        g, xp = self.geometry, self.xp
        shape = self._fft_shape(dtype)
        region = buf[(slice(None), slice(None), *(slice(a.read, a.read + a.span)
                                                   for a in self.axes))]
        spec = self._spectrum(dtype, adjoint=False, conjugate=conjugate)
        z = self._ifft(self._contract(self._fft(region, shape), spec, False), shape, dtype)
        keep = tuple(slice(d * (k - 1), d * (k - 1) + s * (o - 1) + 1, s)
                     for k, d, s, o in zip(g.kernel_size, g.dilation, g.stride,
                                           g.output_size, strict=True))
        return xp.ascontiguousarray(z[(slice(None), slice(None), *keep)].astype(dtype,
                                                                               copy=False))

    def _fft_adjoint(self, y: Any, dtype: np.dtype, conjugate: bool) -> Any:
        g, xp = self.geometry, self.xp
        shape = self._fft_shape(dtype)
        batch = y.shape[0]
        valid = tuple(a.span - d * (k - 1) for a, k, d in zip(self.axes, g.kernel_size,
                                                               g.dilation, strict=True))
        up = xp.zeros((batch, g.out_channels, *valid), dtype=dtype)
        up[(slice(None), slice(None), *(slice(None, None, s) for s in g.stride))] = y
        spec = self._spectrum(dtype, adjoint=True, conjugate=conjugate)
        full = self._ifft(self._contract(self._fft(up, shape), spec, True), shape, dtype)
        buf = xp.zeros((batch, g.in_channels, *(a.extent for a in self.axes)), dtype=dtype)
        buf[(slice(None), slice(None), *(slice(a.read, a.read + a.span) for a in self.axes))] = (
            full[(slice(None), slice(None), *(slice(0, a.span) for a in self.axes))])
        return buf


def _as_strided(xp: ModuleType) -> Callable[..., Any]:
    if xp is np:
        return np.lib.stride_tricks.as_strided
    return xp.lib.stride_tricks.as_strided


def _fft_module(xp: ModuleType) -> tuple[Any, Callable[..., int]]:
    """``(fft module, next_fast_len)`` of the backend."""
    if xp is np:
        import scipy.fft

        return scipy.fft, scipy.fft.next_fast_len
    import cupyx.scipy.fft

    return cupyx.scipy.fft, cupyx.scipy.fft.next_fast_len


# --------------------------------------------------------------------------- the cost model
def fft_samples(geometry: ConvGeometry, dtype: Any) -> int:
    """Samples the fft path transforms at once: their spectra within :data:`TILE_BYTES`."""
    g, dt = geometry, np.dtype(dtype)
    citem = dt.itemsize * (1 if dt.kind == "c" else 2)
    per_sample = (g.in_channels + g.out_channels) * math.prod(
        a.span for a in axis_pads(g)) * citem
    return max(1, TILE_BYTES // max(per_sample, 1))


def structured_bytes(geometry: ConvGeometry, method: str, batch: int = 1,
                     dtype: Any = None) -> int:
    """Peak bytes a product allocates on ``method``'s path for a batch (beside ``x``).

    ``csr``: the output only (``W`` itself is counted by its build). ``direct``: the padded
    buffer, one tile of columns, the GEMM's tile and the output. ``fft``: per chunk of
    samples, the buffer, the spectra of the input and of the kernel, the product's spectrum
    and the inverse FFT; the chunks' outputs and the joined output.
    """
    g = geometry
    dt = np.dtype(g.dtype if dtype is None else dtype)
    item = dt.itemsize
    citem = 2 * item if dt.kind != "c" else item
    n_in = batch * g.in_channels * math.prod(g.input_size)
    n_out = batch * g.out_channels * math.prod(g.output_size)
    if method == "csr":
        return n_out * item
    pads = axis_pads(g)
    extent = math.prod(a.extent for a in pads)
    buf = batch * g.in_channels * extent * item
    if method == "direct":
        K = math.prod(g.kernel_size)
        per_sample = g.in_channels * K * math.prod(g.output_size) * item
        tile = min(batch * per_sample, max(TILE_BYTES, per_sample // max(g.output_size[0], 1)))
        gemm = tile * g.out_channels // max(g.in_channels * K, 1)
        return buf + 2 * tile + gemm + n_out * item
    freq = math.prod(a.span for a in pads)  # ~ the FFT length (next_fast_len adds a little)
    freq = math.ceil(freq * 1.25)
    # the batch is transformed a few samples at a time (StructuredConv._fft_samples), each
    # chunk's output kept until the chunks are joined
    chunk = min(batch, fft_samples(g, dt))
    spectra = chunk * (g.in_channels + 2 * g.out_channels) * freq * citem
    kernel = g.out_channels * (g.in_channels // g.groups) * freq * citem * 2
    joined = n_out * item if chunk < batch else 0
    return (max(buf, n_in * item) // max(batch, 1) * chunk + spectra + kernel
            + n_out * item + joined)


def estimate_costs(geometry: ConvGeometry, batch: int = 1, *, threads: int | None = None,
                   dtype: Any = None, costs: dict[str, float] | None = None
                   ) -> dict[str, float]:
    """Seconds per product on each path, from the cost model.

    * ``csr``: the bytes of ``W`` (data and indices per entry, ``indptr``) read once per
      column of the batch, plus the vectors, at ``csr_read`` per thread.
    * ``direct``: the GEMM's flops at ``gemm`` per thread (float32 twice as fast), but no
      faster than reading its columns (a GEMV when ``C_out/G`` is small), plus the
      im2col and padding copies at ``copy``.
    * ``fft``: ``fft * F log2 F`` per transformed channel (input and output channels of
      every sample), the per-frequency channel sums as complex flops at ``gemm``, and the
      padding copies.

    Examples
    --------
    >>> import numpy as np
    >>> from convmat import conv_geometry
    >>> g = conv_geometry(np.ones((31, 31)), (1024, 1024), padding="same")
    >>> c = estimate_costs(g)
    >>> min(c, key=c.get)
    'fft'
    """
    g = geometry
    c = dict(COSTS if costs is None else costs)
    threads = default_threads() if threads is None else max(1, threads)
    dt = np.dtype(g.dtype if dtype is None else dtype)
    item = dt.itemsize
    complex_ = dt.kind == "c"
    idx = g.index_dtype.itemsize
    P = math.prod(g.output_size)
    K = math.prod(g.kernel_size)
    cin_g = g.in_channels // g.groups
    n_in = g.in_channels * math.prod(g.input_size)
    n_out = g.out_channels * P
    vectors = (n_in + n_out) * item
    csr_bytes = g.nnz * (item + idx) + (g.shape[0] + 1) * idx
    csr = c["call_csr"] + batch * (csr_bytes + vectors) / (c["csr_read"] * threads)
    flop = 2 * g.out_channels * cin_g * K * P * (4 if complex_ else 1)
    rate = c["gemm"] * threads * (2 if dt in (np.float32, np.complex64) else 1)
    cols = g.in_channels * K * P * item
    gemm = max(flop / rate, cols / (c["csr_read"] * threads))
    pads = axis_pads(g)
    buffer = g.in_channels * math.prod(a.extent for a in pads) * item
    direct = c["call_direct"] + batch * (gemm + (2 * cols + buffer + n_out * item) / c["copy"])
    F = math.prod(a.span for a in pads)
    # an FFT pair per (input channel, output channel): the forward and the inverse transform
    transforms = (g.in_channels + g.out_channels) / 2 * F * math.log2(max(F, 2)) * c["fft"]
    transforms *= 2 if complex_ else 1
    half = F if complex_ else F / 2  # frequencies kept (a real FFT keeps half)
    citem = item if complex_ else 2 * item
    if g.out_channels * cin_g == g.groups:  # one channel per group: a pointwise product
        sums = 8 * g.out_channels * half / c["copy"] * citem / 8
        spectrum, moves = 0.0, 0.0
    else:  # the kernel's spectrum, read once per call; the spectra transposed (a strided
        # copy, at a quarter of a copy's speed) for many small GEMMs (at a quarter of the
        # GEMM rate: measured for (64 x 64) @ (64 x 16) complex blocks)
        sums = 8 * g.out_channels * cin_g * half / (rate / 4)
        spectrum = g.out_channels * cin_g * half * citem / (c["csr_read"] * threads)
        moves = 2 * (g.in_channels + g.out_channels) * half * citem / (c["copy"] / 4)
    fft = c["call_fft"] + spectrum + batch * ((transforms + sums) / threads + moves
                                             + (2 * buffer + n_out * item) / c["copy"])
    return {"csr": csr, "direct": direct, "fft": fft}


def choose_method(geometry: ConvGeometry, batch: int = 1, *, xp: ModuleType = np,
                  max_bytes: int | None = None, have_matrix: bool = False,
                  allowed: tuple[str, ...] = METHODS) -> str:
    """The cheapest path by :func:`estimate_costs` among those that fit in memory.

    ``csr`` fits when ``W`` exists already (``have_matrix``) or its build fits
    ``max_bytes``; ``direct`` and ``fft`` when their workspace does
    (:func:`structured_bytes`). When none fits, ``direct`` (it then refuses with the
    numbers).
    """
    costs = estimate_costs(geometry, batch)
    limit, _ = memory_limit(max_bytes, xp)

    def fits(m: str) -> bool:
        if limit is None:
            return True
        if m == "csr":
            return have_matrix or geometry.peak_bytes <= limit
        return structured_bytes(geometry, m, batch) <= limit

    ranked = sorted((costs[m], m) for m in allowed if fits(m))
    return ranked[0][1] if ranked else "direct"


def check_structured(geometry: ConvGeometry, method: str, batch: int, dtype: Any,
                     max_bytes: int | None, xp: ModuleType) -> None:
    """Refuse (``ConvMatrixTooLarge``) a structured product whose workspace does not fit."""
    need = structured_bytes(geometry, method, batch, dtype)
    if max_bytes is None and need <= SMALL_WORKSPACE:
        return
    limit, source = memory_limit(max_bytes, xp)
    if limit is not None and need > limit:
        raise ConvMatrixTooLarge(
            f"the {method} product of a batch of {batch} through {geometry.describe()} needs "
            f"{need:,} bytes at peak ({format_bytes(need)}), over the limit of {limit:,} "
            f"bytes ({source})")


def calibrate(*, seconds: float = 0.5) -> dict[str, float]:
    """Measure the cost model's constants on this machine and use them from now on.

    Times a CSR product, a copy, a GEMM and an FFT pair of a few MiB each, one thread's
    worth of work each (divided by the threads they ran on); returns the new
    :data:`COSTS` (which it updates in place).
    """
    import scipy.fft
    import scipy.sparse as sp

    threads = default_threads()

    def best(f: Callable[[], Any]) -> float:
        out, end = math.inf, time.perf_counter() + seconds / 4
        while True:
            t = time.perf_counter()
            f()
            out = min(out, time.perf_counter() - t)
            if time.perf_counter() > end:
                return out

    rng = np.random.default_rng(0)
    n = 1 << 21
    m, per = n // 16, 32  # a banded CSR like a convolution's: 32 entries a row, 48 MiB
    cols = np.sort((np.arange(m)[:, None] + 61 * np.arange(per)) % m, axis=1)
    a = sp.csr_array((rng.standard_normal(m * per), cols.ravel().astype(np.int32),
                      np.arange(0, m * per + 1, per, dtype=np.int32)), shape=(m, m))
    v = rng.standard_normal(m)
    COSTS["csr_read"] = (a.data.nbytes + a.indices.nbytes) / best(lambda: a @ v)
    src = rng.standard_normal(n)
    dst = np.empty_like(src)
    COSTS["copy"] = 2 * src.nbytes / best(lambda: np.copyto(dst, src))
    m1, m2 = rng.standard_normal((64, 576)), rng.standard_normal((576, 4096))
    COSTS["gemm"] = 2 * 64 * 576 * 4096 / best(lambda: m1 @ m2) / threads
    f = rng.standard_normal((1024, 1024))
    pair = best(lambda: scipy.fft.irfft2(scipy.fft.rfft2(f, workers=threads), s=f.shape,
                                         workers=threads))
    COSTS["fft"] = pair * threads / (f.size * math.log2(f.size))
    return dict(COSTS)
