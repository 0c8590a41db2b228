"""Geometry of an N-d convolution: the arguments resolved once into a frozen plan, sized.

The arguments are checked by :mod:`convmat.arguments`, sized by the formulas of
:mod:`convmat.sizes` and planned per axis by :mod:`convmat.axes`; the memory guard is
:mod:`convmat.guard`. Everything here works on plain Python ints; the per-axis plans
cost O(kernel + border runs), whatever the padding, and nothing proportional to the number
of nonzeros is ever allocated. A :class:`ConvGeometry` is the *plan* of a
convolution matrix: frozen, hashable, and it knows the exact ``nnz``, the index dtype
and the bytes of the finished CSR before anything is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .arguments import (
    as_bool,
    as_int,
    check_dtype,
    check_input_shape,
    check_layout,
    check_positive,
    per_axis,
    resolve_padding,
    shape_of,
)
from .axes import PADDING_MAPS, TABLE_ENTRIES, AxisMap, AxisPlan, AxisRun, axis_plan
from .backend import format_bytes
from .sizes import conv_output_size, conv_transpose_output_size, dilated_kernel_size
from .transposed_axes import PLAN_PAIR_BYTES, TransposedPlan, transposed_axis_plan

__all__ = [
    "INDEX_LIMIT",
    "PADDING_MODES",
    "AxisPlan",
    "AxisRun",
    "ConvGeometry",
    "conv_geometry",
    "conv_transpose_geometry",
    "output_shape",
]

#: PyTorch's ``padding_mode`` values.
PADDING_MODES = tuple(PADDING_MAPS)
#: The builder (:mod:`convmat.indices`) writes pending boxes once their tables hold this
#: many bytes, so its workspace stays bounded; :attr:`ConvGeometry.workspace_bytes` counts it.
BATCH_BYTES = 4 << 20
#: Bytes of Python objects a pending box holds beside its tables (an upper estimate).
BOX_OVERHEAD = 1024
#: Planes whose row lengths the builder computes at once, and the ratio of a grouped row's
#: column range to its entries up to which it reads columns from one table (see
#: :mod:`convmat.indices`; counted by :attr:`ConvGeometry.workspace_bytes`).
INDPTR_BLOCK = 1 << 16
LINE_FACTOR = 4
#: Runs of the last axis with at most this many positions are written as groups.
GROUP_RUN = 8
#: A channels-last matrix is built channels-first in pieces of whole output planes, each
#: moved to its place (see :attr:`ConvGeometry.layout_pieces`): pieces of at most
#: ``max(nnz / LAYOUT_PIECES, LAYOUT_PIECE_ENTRIES)`` entries (or a single plane), moved
#: in slabs of at most ``LAYOUT_BLOCK`` entries, ``LAYOUT_THREADS`` at a time at most.
LAYOUT_PIECES = 8
LAYOUT_PIECE_ENTRIES = 1 << 20
LAYOUT_BLOCK = 1 << 18
LAYOUT_THREADS = 8
#: Rows of one slab's first-column table at most, in the direct ``W.T`` build
#: (:mod:`convmat.transposed`; counted by :attr:`ConvGeometry.transposed_workspace_bytes`).
TASK_ROWS = 1 << 16
#: Index arrays are int32 when ``max(rows, cols, nnz) < INDEX_LIMIT``, else int64.
#: A module constant so that tests can lower it and exercise the int64 path cheaply.
INDEX_LIMIT = 2**31

# --------------------------------------------------------------------------- the geometry


@dataclasses.dataclass(frozen=True, repr=False)
class ConvGeometry:
    """Resolved geometry of a convolution matrix (frozen, hashable).

    The fields describe the *forward* convolution ``y = W @ x``; ``transposed=True`` marks
    the geometry of a transposed convolution, whose matrix is ``W.T`` of that forward
    convolution (so ``input_shape``, ``output_shape`` and ``shape`` are swapped).

    Attributes
    ----------
    in_channels, out_channels, groups : int
        Channels of the forward convolution (``out_channels`` rows blocks, ``in_channels``
        column blocks); ``groups`` divides both.
    input_size, output_size : tuple of int
        Spatial sizes of the forward convolution's input and output.
    kernel_size, stride, dilation : tuple of int
        Per-axis kernel size, stride and dilation.
    padding : tuple of (int, int)
        Resolved per-axis ``(lo, hi)`` padding.
    padding_mode : str
        One of :data:`PADDING_MODES`.
    dtype : str
        dtype of ``W`` (the weight's).
    shorthand : bool
        One-channel shorthand: shapes are spatial only (no channel axis).
    transposed : bool
        The matrix is the transpose of the forward convolution's.
    flip : bool
        True convolution: the builder reads the weight with every spatial axis reversed
        (``weight_shape`` is unchanged).
    layout : {'channels_first', 'channels_last'}
        Where the channel axis is in ``input_shape``, ``output_shape`` and
        ``weight_shape``; every other field (channels, sizes) is layout-free.

    Notes
    -----
    Output position ``p`` of axis ``d`` reads the padded input at
    ``stride[d] * p + dilation[d] * t - padding[d][0]`` for taps ``t < kernel_size[d]``;
    ``output_size[d] = (n + lo + hi - dilation*(k - 1) - 1) // stride + 1``.
    Positions outside the input are dropped (``zeros``) or mapped back into it
    (``reflect``, ``replicate``, ``circular``); taps that land on the same input index
    are summed, so each row holds ``C_in/groups * prod_d m_d(p_d)`` entries, ``m_d(p)``
    being the number of distinct input indices axis ``d`` reads at ``p``. With ``flip``
    tap ``t`` carries ``w[..., k-1-t]``. A channels-last matrix is the channels-first one
    with rows and columns permuted: index ``(c, p)`` becomes ``p*C + c``.
    """

    in_channels: int
    out_channels: int
    groups: int
    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    padding_mode: str
    output_size: tuple[int, ...]
    dtype: str = "float64"
    shorthand: bool = False
    transposed: bool = False
    flip: bool = False
    layout: str = "channels_first"

    # ---------------------------------------------------------------- derived sizes
    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.input_size)

    @property
    def channels_last(self) -> bool:
        """Whether shapes put the channel axis last (``layout='channels_last'``)."""
        return self.layout == "channels_last"

    def _with_channels(self, channels: int, size: tuple[int, ...]) -> tuple[int, ...]:
        if self.shorthand:
            return size
        return (*size, channels) if self.channels_last else (channels, *size)

    @property
    def conv_input_shape(self) -> tuple[int, ...]:
        """Shape of the forward convolution's input (the columns of ``W``)."""
        return self._with_channels(self.in_channels, self.input_size)

    @property
    def conv_output_shape(self) -> tuple[int, ...]:
        """Shape of the forward convolution's output (the rows of ``W``)."""
        return self._with_channels(self.out_channels, self.output_size)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the operator's input (swapped for a transposed geometry)."""
        return self.conv_output_shape if self.transposed else self.conv_input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the operator's output (swapped for a transposed geometry)."""
        return self.conv_input_shape if self.transposed else self.conv_output_shape

    @property
    def conv_shape(self) -> tuple[int, int]:
        """Shape of the forward convolution matrix ``(C_out*prod(out), C_in*prod(in))``."""
        return (
            self.out_channels * math.prod(self.output_size),
            self.in_channels * math.prod(self.input_size),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the matrix this geometry describes."""
        rows, cols = self.conv_shape
        return (cols, rows) if self.transposed else (rows, cols)

    @property
    def output_padding(self) -> tuple[int, ...]:
        """For a transposed geometry, the ``output_padding`` that yields its output size."""
        if not self.transposed:
            return (0,) * self.ndim
        return tuple(
            n - conv_transpose_output_size(o, k, s, d, lo, hi, 0)
            for n, o, k, s, d, (lo, hi) in zip(
                self.input_size, self.output_size, self.kernel_size, self.stride,
                self.dilation, self.padding, strict=True,
            )
        )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the weight: ``(C_out, C_in/G, *k)`` of the forward convolution.

        The same array is the transposed convolution's ``(C_in, C_out/G, *k)``. Channels
        last: ``(*k, C_in/G, C_out)`` (Keras' ``Conv*D`` kernel), the same array as the
        transposed convolution's ``(*k, C_out/G, C_in)`` (``Conv*DTranspose``).
        """
        if self.shorthand:
            return self.kernel_size
        cin_g = self.in_channels // self.groups
        if self.channels_last:
            return (*self.kernel_size, cin_g, self.out_channels)
        return (self.out_channels, cin_g, *self.kernel_size)

    @property
    def T(self) -> ConvGeometry:  # noqa: N802 - mirrors ndarray.T
        """The geometry of the transposed matrix."""
        return dataclasses.replace(self, transposed=not self.transposed)

    @functools.cached_property
    def axis_plans(self) -> tuple[AxisPlan, ...]:
        """Per-axis tap tables (see :class:`AxisPlan`)."""
        return tuple(
            axis_plan(AxisMap(n, k, s, d, lo, self.padding_mode), o)
            for n, k, s, d, (lo, _), o in zip(
                self.input_size, self.kernel_size, self.stride, self.dilation,
                self.padding, self.output_size, strict=True,
            )
        )

    @functools.cached_property
    def transposed_axis_plans(self) -> tuple[TransposedPlan, ...]:
        """Per-axis plans of the transposed matrix ``S.T`` (see :mod:`convmat.transposed_axes`).

        Describe the forward matrix's axes whatever ``transposed`` says.
        """
        return tuple(
            transposed_axis_plan(AxisMap(n, k, s, d, lo, self.padding_mode), o)
            for n, k, s, d, (lo, _), o in zip(
                self.input_size, self.kernel_size, self.stride, self.dilation,
                self.padding, self.output_size, strict=True,
            )
        )

    @property
    def nnz_per_channel(self) -> int:
        """Stored entries in the rows of one output channel."""
        return (self.in_channels // self.groups) * math.prod(p.total for p in self.axis_plans)

    @property
    def nnz(self) -> int:
        """Exact number of stored entries of ``W`` (folded taps summed into one)."""
        return self.out_channels * self.nnz_per_channel

    @property
    def density(self) -> float:
        """``nnz / (rows * cols)``."""
        rows, cols = self.shape
        return self.nnz / (rows * cols)

    @property
    def index_dtype(self) -> np.dtype:
        """int32 when ``max(rows, cols, nnz) < INDEX_LIMIT``, else int64."""
        small = max(*self.shape, self.nnz) < INDEX_LIMIT
        return np.dtype(np.int32 if small else np.int64)

    @property
    def itemsize(self) -> int:
        """Bytes of one stored value."""
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the finished CSR: ``data`` + ``indices`` + ``indptr``."""
        return self._csr_bytes(self.shape[0])

    @property
    def peak_bytes(self) -> int:
        """Upper bound of the memory the build holds at its peak.

        The matrix is written in place (CSR plus :attr:`workspace_bytes`, plus
        :attr:`layout_bytes` channels last). A transposed matrix is written directly too:
        as the adjoint convolution when ``W.T`` is itself one (stride 1, zero padding),
        otherwise from the per-axis transposed plans (:mod:`convmat.transposed`, CSR plus
        :attr:`transposed_workspace_bytes`, in either layout).
        """
        if self.transposed:
            adjoint = self.adjoint
            if adjoint is None:
                return self.nbytes + self.transposed_workspace_bytes
            # built as the adjoint convolution, from the flipped weight
            weight = self.out_channels * self.in_channels // self.groups * math.prod(
                self.kernel_size) * self.itemsize
            return adjoint.nbytes + adjoint.workspace_bytes + adjoint.layout_bytes + weight
        return self.nbytes + self.workspace_bytes + self.layout_bytes

    @property
    def permuted(self) -> bool:
        """Whether the layout permutes the channels-first matrix.

        Channels last with more than one input or output channel: with one of each (or
        the shorthand) both orders are the same.
        """
        return self.channels_last and not self.shorthand and (
            self.in_channels > 1 or self.out_channels > 1)

    def plane_offset(self, plane: int) -> int:
        """Entries of the channels-first ``W`` before output plane ``plane``.

        A plane is an ``(output channel, first-axis position)`` pair: the rows
        ``plane*R .. (plane+1)*R`` with ``R = prod(output_size[1:])``.
        """
        o1 = self.output_size[0]
        channel, p = divmod(plane, o1)
        rest = math.prod(plan.total for plan in self.axis_plans[1:])
        return (channel * self.nnz_per_channel
                + (self.in_channels // self.groups) * self.axis_plans[0].prefix_at(p) * rest)

    @functools.cached_property
    def layout_pieces(self) -> tuple[tuple[int, int], ...]:
        """Plane ranges ``[q0, q1)`` a channels-last matrix is built in (channels first).

        Consecutive, covering every plane; each holds at most ``max(nnz / LAYOUT_PIECES,
        LAYOUT_PIECE_ENTRIES)`` entries, or is a single plane (found by bisection over
        :meth:`plane_offset`: O(pieces * log planes)).
        """
        planes = self.out_channels * self.output_size[0]
        target = max(LAYOUT_PIECE_ENTRIES, -(-self.nnz // LAYOUT_PIECES))
        pieces = []
        q = 0
        while q < planes:
            start = self.plane_offset(q)
            lo, hi = q + 1, planes  # the largest end whose piece fits, at least q + 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.plane_offset(mid) - start <= target:
                    lo = mid
                else:
                    hi = mid - 1
            pieces.append((q, lo))
            q = lo
        return tuple(pieces)

    @property
    def layout_bytes(self) -> int:
        """Bytes a channels-last build holds beside the finished CSR and the workspace.

        The largest piece's channels-first CSR (:attr:`layout_pieces`), the row pointers of
        one output channel with their lengths and two temporaries, and the two column
        temporaries of each slab in flight (``LAYOUT_THREADS`` slabs of ``LAYOUT_BLOCK``
        entries). Zero when the layout permutes nothing (:attr:`permuted`).
        """
        if not self.permuted:
            return 0
        rest = math.prod(self.output_size[1:])
        idx = self.index_dtype.itemsize
        piece = max((self.plane_offset(q1) - self.plane_offset(q0)) * (self.itemsize + idx)
                    + ((q1 - q0) * rest + 1) * idx for q0, q1 in self.layout_pieces)
        channel = 5 * (math.prod(self.output_size) + 1) * idx
        block = LAYOUT_THREADS * min(LAYOUT_BLOCK, self.nnz) * 2 * idx
        return piece + channel + block

    @property
    def transposed_workspace_bytes(self) -> int:
        """Upper bound of the temporaries of a direct ``W.T`` build beside its CSR arrays.

        Planning each axis (its ``out*k`` taps tabulated and sorted, one axis at a time) and
        the plans kept; the row lengths (the counts of each axis and one plane of them); the
        weight with its channels swapped and folded along the axes before the last; one
        box's super-row (its columns and the values of every row channel, short super-rows
        merged up to ``BLOCKED_ROW`` entries) plus the pending boxes' (at most
        ``BATCH_BYTES``, and no more than the entries they write); and the first columns of
        the rows of the slabs in flight (at most ``TASK_ROWS`` rows each, 8 threads).
        Describes the forward matrix's transpose whatever ``transposed`` says.
        """
        g = self.T if self.transposed else self
        plans = g.transposed_axis_plans
        idx, item = g.index_dtype.itemsize, g.itemsize
        c_rows, cout_g = g.in_channels, g.out_channels // g.groups
        # a border segment's taps (sorted, with their rows) and its rows' counters, the
        # counts of every row (twice while joined), and one chunk of the table
        planning = max(PLAN_PAIR_BYTES * p.tabulated + 96 * p.border + 16 * len(p.counts)
                       for p in plans)
        planning += 40 * min(TABLE_ENTRIES, max(o * k for o, k in zip(
            g.output_size, g.kernel_size, strict=True)))
        kept = sum(sum(640 * len(r.rows) + 48 * r.entries for r in p.runs) for p in plans)
        rows = c_rows * math.prod(g.input_size)
        rest = math.prod(g.input_size[1:])
        indptr = (sum(g.input_size) + 3 * rest) * idx + min(INDPTR_BLOCK, rows) * 16
        head = math.prod(p.widest for p in plans[:-1])
        weight = g.out_channels * (c_rows // g.groups) * math.prod(self.kernel_size) * item
        folded = 3 * c_rows * cout_g * math.prod(
            max(p.widest, k) for p, k in zip(plans, g.kernel_size, strict=True)) * item
        row = cout_g * head * plans[-1].widest_block * (c_rows if g.permuted else 1)
        # merged short super-rows stay below BLOCKED_ROW + SHORT_ROW; a super-row holds at
        # most the entries of one row channel (channels last: of every channel)
        row = min(max(row, 2048 + 512), g.nnz if g.permuted else g.nnz // c_rows)
        one = row * (idx + 40) + (1 if g.permuted else c_rows) * row * 3 * item
        # the templates of every box together: a block's entries per phase on the axes
        # before the last, merged blocks (and a remainder) on the last, per row channel
        boxes = 2 * len(plans[-1].runs) * math.prod(sum(len(r.rows) for r in p.runs)
                                                    for p in plans[:-1])
        merged = sum(min(r.count, 2048 // max(1, r.entries) + 1) * r.entries * 2
                     for r in plans[-1].runs)
        every = c_rows * cout_g * math.prod(sum(r.entries for r in p.runs)
                                            for p in plans[:-1]) * merged * (item + idx)
        pending = min(BATCH_BYTES, boxes * BOX_OVERHEAD + min(
            every, g.nnz * (item + idx + 8)))
        slabs = min(8 * TASK_ROWS, rows) * (3 * idx + 16)  # in flight: distinct rows
        return planning + kept + indptr + 2 * weight + folded + one + pending + slabs

    @property
    def workspace_bytes(self) -> int:
        """Upper bound of the builder's temporaries beside the CSR arrays.

        The counts of the first axis and a block of row lengths for ``indptr``, the per-box
        tables (a row's column offsets and the folded kernel of every output channel, over
        at most one blocked row, see :mod:`convmat.indices`), the pieces and templates of
        grouped border rows (a row of the last axis per output channel, its column table,
        and for the folding modes the tap tables of at most ``TABLE_ENTRIES``), the weight
        folded twice, and the plan's objects. Bounded by the problem, not a fixed allowance.
        """
        plans = self.axis_plans
        idx, item = self.index_dtype.itemsize, self.itemsize
        cin_g = self.in_channels // self.groups
        widest = [max((r.m for r in p.runs), default=0) for p in plans]
        row = cin_g * math.prod(widest)
        blocked = min(max(row, 2 * 2048), row * self.output_size[-1])  # rows in a block
        one = (self.out_channels + 2) * blocked * (item + 8)  # one box's tables
        # Pending boxes (pieces x channel segments x blocks per product of runs): each holds
        # tables for distinct entries of W, so all of them together at most nnz entries.
        boxes = 6 * math.prod(len(p.runs) for p in plans)
        tables = one + min(BATCH_BYTES, boxes * BOX_OVERHEAD + self.nnz * (item + idx + 8))
        # Grouped border rows (runs of at most GROUP_RUN positions on the last axis): pieces
        # that are copies (several input channels or other axes), the column table (one
        # row of the input's last axis per input channel and slot of the other axes), the
        # columns computed for runs that are not slices, the tap tables of tabulated
        # positions, and with other axes a template per output channel.
        head = cin_g * math.prod(widest[:-1])
        small = [r for r in plans[-1].runs if r.size <= GROUP_RUN]
        grouped = head * sum(r.size * r.m for r in small)
        computed = head * sum(r.size * r.m for r in small if r.size > 1
                              or (r.taps is None and not r.parts))
        tabulated = sum(r.size for r in small if r.taps is None and not r.parts)
        line = min(head * self.input_size[-1], LINE_FACTOR * grouped)
        group = line * idx + computed * (8 + idx)
        if head > 1:
            group += grouped * (idx + item)
        if self.ndim > 1:
            group += grouped * (idx + 2 * self.out_channels * item)
        if tabulated:
            group += 48 * min(TABLE_ENTRIES, tabulated * self.kernel_size[-1]) + computed * 40
        rest = math.prod(self.output_size[1:])  # rows of a plane
        planes = self.out_channels * self.output_size[0]
        indptr = ((self.output_size[0] + 2 * rest + sum(self.output_size[1:])) * idx
                  + min(INDPTR_BLOCK, planes) * 24)
        weight = 2 * self.out_channels * cin_g * math.prod(self.kernel_size) * item
        objects = 512 * sum(len(p.runs) for p in plans)
        return indptr + tables + group + weight + objects

    @property
    def adjoint(self) -> ConvGeometry | None:
        """The convolution whose matrix is this one's transpose, when there is one.

        With stride 1 and zero padding, ``W.T`` correlates with the flipped kernel (channels
        swapped within each group) under padding ``lo' = dilation*(k-1) - lo`` and
        ``hi' = n - out + lo`` (so that its output is the forward input ``n``); it exists
        when both are >= 0. Strided or mode-padded convolutions have none (None). Describes
        the forward matrix whatever ``transposed`` says. Its weight is
        ``convmat.structured.adjoint_weight`` of the weight the builder reads (already flipped
        when ``flip``), so the adjoint has ``flip=False``; it keeps the layout.
        """
        if self.padding_mode != "zeros" or any(s != 1 for s in self.stride):
            return None
        pads = tuple(
            (d * (k - 1) - lo, n - o + lo)
            for n, o, k, d, (lo, _) in zip(self.input_size, self.output_size, self.kernel_size,
                                           self.dilation, self.padding, strict=True)
        )
        if any(lo < 0 or hi < 0 for lo, hi in pads):
            return None
        return dataclasses.replace(
            self, in_channels=self.out_channels, out_channels=self.in_channels,
            input_size=self.output_size, output_size=self.input_size, padding=pads,
            transposed=False, flip=False,
        )

    def _csr_bytes(self, rows: int) -> int:
        idx = self.index_dtype.itemsize
        return self.nnz * (self.itemsize + idx) + (rows + 1) * idx

    # ---------------------------------------------------------------- display
    def describe(self) -> str:
        """Kind, shapes and the non-default options in one line."""
        kind = f"conv_transpose{self.ndim}d" if self.transposed else f"conv{self.ndim}d"
        parts = [
            f"{kind}: {self.input_shape} -> {self.output_shape}",
            f"kernel={self.kernel_size}",
            f"stride={self.stride}",
            f"padding={self.padding}",
            f"dilation={self.dilation}",
        ]
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode!r}")
        if self.flip:
            parts.append("flip=True")
        if self.channels_last:
            parts.append(f"layout={self.layout!r}")
        if self.transposed and any(self.output_padding):
            parts.append(f"output_padding={self.output_padding}")
        return ", ".join(parts)

    def summary(self) -> str:
        """Shape, nnz, density and bytes in one line."""
        return (
            f"shape={self.shape}, nnz={self.nnz:,}, density={self.density:.3g}, "
            f"dtype={self.dtype}, {format_bytes(self.nbytes)}"
        )

    def __repr__(self) -> str:
        return f"ConvGeometry({self.describe()}; {self.summary()})"


# --------------------------------------------------------------------------- constructors


def _build(
    weight: Any,
    input_shape: Any,
    *,
    transposed: bool,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: Any,
    output_padding: Any = 0,
    output_size: Any = None,
    dtype: Any = None,
    flip: Any = False,
    origin: Any = None,
    layout: Any = "channels_first",
) -> ConvGeometry:
    wshape, wdtype = shape_of(weight)
    dtype_name = check_dtype(wdtype if wdtype is not None else (dtype or "float64"))
    shape = check_input_shape(input_shape)
    groups = as_int("groups", groups)
    if groups <= 0:
        raise ValueError(f"groups must be >= 1, got groups={groups}")
    flip = as_bool("flip", flip)
    layout = check_layout(layout)
    last = layout == "channels_last"
    # where the channel axes are, for the messages
    w_out_at, w_in_at, c_at = ("[-1]", "[-2]", "[-1]") if last else ("[0]", "[1]", "[0]")

    if len(wshape) == len(shape):  # one-channel shorthand: kernel only
        shorthand = True
        if groups != 1:
            raise ValueError(
                f"groups={groups} needs a weight with channel axes; a weight of shape {wshape} "
                f"with input_shape={shape} is the one-channel shorthand (groups=1)"
            )
        kernel, spatial = wshape, shape
        w_out, w_in, c_in = 1, 1, 1
    elif len(wshape) == len(shape) + 1 and len(shape) >= 2:
        shorthand = False
        if last:  # (*kernel, C_in/G, C_out) or (*kernel, C_out_t/G, C_in_t), (*spatial, C)
            w_out, w_in, kernel = wshape[-1], wshape[-2], wshape[:-2]
            c_in, spatial = shape[-1], shape[:-1]
        else:
            w_out, w_in, kernel = wshape[0], wshape[1], wshape[2:]
            c_in, spatial = shape[0], shape[1:]
    else:
        names = ("C_in", "C_out") if transposed else ("C_out", "C_in")
        expected = (f"(*kernel, {names[1]}//groups, {names[0]})" if last
                    else f"({names[0]}, {names[1]}//groups, *kernel)")
        raise ValueError(
            f"weight.ndim={len(wshape)} (shape {wshape}) does not fit input_shape={shape}: "
            f"expected ndim {len(shape) + 1} {expected} for input "
            f"{'(*spatial, C)' if last else '(C, *spatial)'}, or ndim {len(shape)} "
            "(a one-channel kernel) for a spatial-only input_shape"
        )
    if w_out <= 0 or w_in <= 0:
        raise ValueError(f"weight shape {wshape} has a channel axis <= 0; channel counts must "
                         "be >= 1")
    ndim = len(spatial)
    for d, k in enumerate(kernel):
        if k <= 0:
            raise ValueError(f"kernel size must be >= 1; axis {d} of weight shape {wshape} is {k}")
    if transposed:
        # weight (C_in_t, C_out_t // groups, *k): C_in_t are the forward conv's out channels.
        conv_out, conv_in = w_out, w_in * groups
        if c_in != conv_out:
            raise ValueError(
                f"weight.shape{w_out_at}={w_out} (transposed-conv input channels) must equal "
                f"input_shape{c_at}={c_in}"
            )
        if w_out % groups:
            raise ValueError(f"groups={groups} must divide in_channels={w_out}")
    else:
        conv_out, conv_in = w_out, c_in
        if c_in % groups:
            raise ValueError(f"groups={groups} must divide in_channels={c_in}")
        if w_out % groups:
            raise ValueError(f"groups={groups} must divide out_channels={w_out}")
        if w_in * groups != c_in:
            raise ValueError(
                f"weight.shape{w_in_at}={w_in} times groups={groups} must equal input channels "
                f"input_shape{c_at}={c_in}"
            )

    stride_t = per_axis("stride", stride, ndim)
    check_positive("stride", stride_t)
    dilation_t = per_axis("dilation", dilation, ndim)
    check_positive("dilation", dilation_t)
    pad = resolve_padding(padding, ndim, kernel, stride_t, dilation_t, origin=origin, flip=flip)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode={padding_mode!r} is not one of {', '.join(map(repr, PADDING_MODES))}"
        )

    if transposed:
        if output_size is not None:
            if not (isinstance(output_padding, int) and output_padding == 0) and any(
                per_axis("output_padding", output_padding, ndim)
            ):
                raise ValueError("give output_padding or output_size, not both")
            out_pad = _output_padding_from_size(
                output_size, spatial, kernel, stride_t, dilation_t, pad, last
            )
        else:
            out_pad = per_axis("output_padding", output_padding, ndim)
        for d, (op, s, dl) in enumerate(zip(out_pad, stride_t, dilation_t, strict=True)):
            if op < 0 or op >= max(s, dl):
                raise ValueError(
                    f"output_padding must satisfy 0 <= output_padding < max(stride, dilation); "
                    f"axis {d} has output_padding={op}, stride={s}, dilation={dl}"
                )
        conv_in_size = tuple(
            conv_transpose_output_size(n, k, s, dl, lo, hi, op)
            for n, k, s, dl, (lo, hi), op in zip(
                spatial, kernel, stride_t, dilation_t, pad, out_pad, strict=True
            )
        )
        for d, m in enumerate(conv_in_size):
            if m <= 0:
                raise ValueError(
                    f"axis {d}: transposed-convolution output size "
                    f"(n-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1 = {m} <= 0 "
                    f"for n={spatial[d]}, k={kernel[d]}, stride={stride_t[d]}, padding={pad[d]}, "
                    f"dilation={dilation_t[d]}, output_padding={out_pad[d]}"
                )
        conv_out_size = spatial
    else:
        conv_in_size = spatial
        conv_out_size = ()

    _check_padding_mode_fits(padding_mode, conv_in_size, pad)
    natural = []
    for d, (n, k, s, dl, (lo, hi)) in enumerate(
        zip(conv_in_size, kernel, stride_t, dilation_t, pad, strict=True)
    ):
        span = dilated_kernel_size(k, dl)
        if span > n + lo + hi:
            raise ValueError(
                f"axis {d}: dilated kernel spans {span} > padded input {n + lo + hi} "
                f"(input {n} + padding {lo}+{hi}); output would be empty"
            )
        natural.append(conv_output_size(n, k, s, dl, lo, hi))
    # A transposed conv with output_padding >= stride keeps only the first `n` conv outputs.
    out = conv_out_size if transposed else tuple(natural)

    return ConvGeometry(
        in_channels=conv_in,
        out_channels=conv_out,
        groups=groups,
        input_size=tuple(conv_in_size),
        kernel_size=tuple(kernel),
        stride=stride_t,
        dilation=dilation_t,
        padding=pad,
        padding_mode=padding_mode,
        output_size=tuple(out),
        dtype=dtype_name,
        shorthand=shorthand,
        transposed=transposed,
        flip=flip,
        layout=layout,
    )


def _check_padding_mode_fits(
    mode: str, size: tuple[int, ...], pad: tuple[tuple[int, int], ...]
) -> None:
    PADDING_MAPS[mode].check(size, pad)  # the registry's fits rule (``axes.PaddingMode``)


def _output_padding_from_size(
    output_size: Any,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pad: tuple[tuple[int, int], ...],
    channels_last: bool = False,
) -> tuple[int, ...]:
    """``output_padding`` for a requested ``output_size``, as PyTorch's ``_output_padding``.

    ``output_size`` is the spatial sizes, or a whole output shape: ``(C, *spatial)`` or
    ``(N, C, *spatial)``; channels last ``(*spatial, C)`` or ``(N, *spatial, C)``.
    """
    ndim = len(spatial)
    if not isinstance(output_size, Sequence) or isinstance(output_size, str):
        raise TypeError(f"output_size must be a tuple of ints, got {output_size!r}")
    if len(output_size) not in (ndim, ndim + 1, ndim + 2):
        around = ("followed by channels, or preceded by batch and followed by channels"
                  if channels_last else "preceded by channels, or batch and channels")
        raise ValueError(
            f"output_size={tuple(output_size)!r} must give the {ndim} spatial sizes "
            f"(optionally {around})"
        )
    first = (len(output_size) - ndim) // 2 if channels_last else len(output_size) - ndim
    size = tuple(
        as_int(f"output_size[{i}]", output_size[i]) for i in range(first, first + ndim)
    )
    mins = tuple(
        conv_transpose_output_size(n, k, s, d, lo, hi, 0)
        for n, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pad, strict=True)
    )
    maxs = tuple(m + s - 1 for m, s in zip(mins, stride, strict=True))
    if any(not lo <= v <= hi for v, lo, hi in zip(size, mins, maxs, strict=True)):
        raise ValueError(
            f"requested output_size {size}, but valid sizes range from {mins} to {maxs} "
            f"(for an input of {spatial})"
        )
    return tuple(v - m for v, m in zip(size, mins, strict=True))


def conv_geometry(
    weight: Any,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    dtype: Any = None,
    flip: bool = False,
    origin: int | Sequence[int] | None = None,
    layout: str = "channels_first",
) -> ConvGeometry:
    """Validate the arguments of a convolution and return its :class:`ConvGeometry`.

    Parameters
    ----------
    weight : array or tuple of int
        The weight ``(C_out, C_in // groups, *kernel)`` (channels last: ``(*kernel,
        C_in // groups, C_out)``) or just its shape; a kernel with as many axes as
        ``input_shape`` is the one-channel shorthand.
    input_shape : tuple of int
        ``(C_in, *spatial)`` (channels last: ``(*spatial, C_in)``), or the spatial shape
        for the one-channel shorthand.
    stride, dilation : int or tuple of int
        Per-axis stride and dilation (>= 1).
    padding : int, tuple, tuple of (lo, hi) pairs, 'valid', 'same' or 'full'
        Zero or mode padding added to each side of each spatial axis; ``'full'`` is
        ``dilation*(k-1)`` on both sides.
    groups : int
        Blocked connections from input to output channels.
    padding_mode : str
        How the padded border is filled, one of :data:`PADDING_MODES` (PyTorch's meaning).
    dtype : dtype, optional
        dtype of ``W`` when ``weight`` is a shape (default float64).
    flip : bool
        True convolution: the kernel reversed on every spatial axis.
    origin : int or tuple of int, optional
        With ``padding='same'``: SciPy ndimage's centring (see :func:`convmat.conv_matrix`).
    layout : {'channels_first', 'channels_last'}
        Where the channel axis of inputs, outputs and the weight is.

    Returns
    -------
    ConvGeometry

    Raises
    ------
    TypeError
        A non-int where an int is expected, or an unsupported dtype.
    ValueError
        Any inconsistent or out-of-range argument (the message names it).

    Examples
    --------
    >>> g = conv_geometry((10, 3, 4, 4), (3, 64, 64), stride=2, padding=1)
    >>> g.output_shape, g.shape, g.nnz
    ((10, 32, 32), (10240, 12288), 476280)
    >>> conv_geometry((4, 4, 3, 10), (64, 64, 3), stride=2, padding=1,
    ...               layout="channels_last").output_shape
    (32, 32, 10)
    >>> conv_geometry((4, 4), (8, 8), padding="same", origin=(-1, 0)).padding
    ((1, 2), (2, 1))
    """
    return _build(
        weight, input_shape, transposed=False, stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode, dtype=dtype,
        flip=flip, origin=origin, layout=layout,
    )


def conv_transpose_geometry(
    weight: Any,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    dtype: Any = None,
    flip: bool = False,
    origin: int | Sequence[int] | None = None,
    layout: str = "channels_first",
) -> ConvGeometry:
    """Validate the arguments of a transposed convolution and return its geometry.

    ``weight`` is ``(C_in, C_out // groups, *kernel)`` (PyTorch/MXNet layout; channels
    last ``(*kernel, C_out // groups, C_in)``, Keras') and ``input_shape`` is
    ``(C_in, *spatial)`` (channels last ``(*spatial, C_in)``). ``output_size`` picks
    ``output_padding`` as PyTorch's ``ConvTranspose*d.forward(output_size=...)`` does.
    The other arguments are those of :func:`conv_geometry` (``flip``: the transpose of the
    flipped convolution); the result has ``transposed=True``.

    Notes
    -----
    ``out = (in - 1)*stride - pad_lo - pad_hi + dilation*(k - 1) + output_padding + 1``.

    Examples
    --------
    >>> g = conv_transpose_geometry((10, 3, 4, 4), (10, 32, 32), stride=2, padding=1)
    >>> g.output_shape
    (3, 64, 64)
    """
    return _build(
        weight, input_shape, transposed=True, stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode,
        output_padding=output_padding, output_size=output_size, dtype=dtype,
        flip=flip, origin=origin, layout=layout,
    )


def output_shape(
    weight: Any, input_shape: Sequence[int], *, transposed: bool = False, **options: Any
) -> tuple[int, ...]:
    """Output shape of a convolution (or, with ``transposed=True``, a transposed one).

    Examples
    --------
    >>> output_shape((20, 10, 5, 5), (10, 16, 16), stride=3, padding=2)
    (20, 6, 6)
    >>> output_shape((20, 10, 5, 5), (20, 6, 6), stride=3, padding=2, transposed=True)
    (10, 16, 16)
    """
    make = conv_transpose_geometry if transposed else conv_geometry
    return make(weight, input_shape, **options).output_shape
