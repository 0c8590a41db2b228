"""Write the CSR arrays of ``W.T`` directly, with the transposed plans' boxes.

No validation happens here: the :class:`~convmat.geometry.ConvGeometry` did it.

How it works
------------
``W`` is a sum over taps of Kronecker products of per-axis selection matrices (with the
padding mode's folds); ``W.T`` uses their transposes, planned per axis by
:mod:`convmat.transposed_axes`: runs of ``count`` blocks of ``width`` consecutive rows
(input indices of the forward convolution), one relative pattern per block, the first
output position advancing by ``step`` per block (with stride ``s``, the interior is one
run of blocks of ``s`` rows, the phases ``i mod s``).

Rows of ``W.T`` are ``(c_in, i_1, ..., i_D)`` (channels last ``(i_1, ..., i_D, c_in)``),
entries ``(c_out of the group, r_1, ..., r_D)`` (channels last ``(r_1, ..., r_D, c_out)``).
On the axes before the last, a run splits into its ``width`` *phases* (rows ``start + phi
+ width*j``), each with one row length; on the last axis a block's rows are consecutive,
so they form one *super-row* (their entries one after another), and short super-rows of
consecutive blocks are merged (they differ by a shift). A product of one phase per axis
before the last and one run of the last axis is a *box*: its super-rows have one length
and their offsets are affine in ``(group, c_in, j_1, ..., j_D)``, so it is written as one
strided view, ``indices = outer + inner`` and ``data = template``, as the forward builder
does (:mod:`convmat.indices`), on the same threads. Every entry is written once, in its
final place, sorted within its row; the workspace beside the CSR is bounded
(:attr:`ConvGeometry.transposed_workspace_bytes`).
"""

from __future__ import annotations

import itertools
import math
from types import ModuleType
from typing import Any

import numpy as np

from .geometry import BATCH_BYTES, BOX_OVERHEAD, INDPTR_BLOCK, TASK_ROWS, ConvGeometry
from .indices import (
    BLOCKED_ROW,
    SHORT_ROW,
    TASK_ENTRIES,
    THREADED_MIN_NNZ,
    default_threads,
    thread_pool,
)
from .transposed_axes import TransposedPlan, TransposedRun

__all__ = ["build_transposed_csr_arrays", "swapped_weight"]


def _as_strided(xp: ModuleType, flat: Any, offset: int, shape: tuple[int, ...],
                strides: tuple[int, ...]) -> Any:
    item = flat.itemsize
    return xp.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=tuple(s * item for s in strides))


def swapped_weight(g: ConvGeometry, weight: Any, xp: ModuleType) -> Any:
    """``(C_in, C_out/G, *k)``: the forward weight with its channels swapped per group."""
    groups, cout_g, cin_g = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    w = weight.reshape(groups, cout_g, cin_g, *g.kernel_size)
    return xp.swapaxes(w, 1, 2).reshape(g.in_channels, cout_g, *g.kernel_size)


class _Box:
    """A strided view of the CSR arrays: ``indices = sum(outer) + inner``, ``data = tmpl``."""

    __slots__ = ("data", "inner", "offset", "outer", "shape", "strides")

    def __init__(self, offset: int, shape: tuple[int, ...], strides: tuple[int, ...],
                 outer: list[np.ndarray | None], inner: Any, data: Any) -> None:
        self.offset, self.shape, self.strides = offset, shape, strides
        self.outer, self.inner, self.data = outer, inner, data

    def split(self, max_entries: int) -> list[tuple[_Box, int, slice]]:
        """Slabs of at most about ``max_entries`` entries (and ``TASK_ROWS`` rows)."""
        dims = self.shape[:-1]
        axis = max(range(len(dims)), key=lambda a: dims[a])
        rows = math.prod(dims)
        pieces = max(1, -(-math.prod(self.shape) // max_entries), -(-rows // TASK_ROWS))
        pieces = min(dims[axis], pieces)
        step = -(-dims[axis] // pieces)
        return [(self, axis, slice(s, min(s + step, dims[axis])))
                for s in range(0, dims[axis], step)]

    @property
    def nbytes(self) -> int:
        return BOX_OVERHEAD + sum(int(a.nbytes) for a in (self.inner, self.data)
                                  if a is not None)


def build_transposed_csr_arrays(
    geometry: ConvGeometry,
    weight: Any | None,
    xp: ModuleType = np,
    *,
    indices: bool = True,
    threads: int | None = None,
) -> tuple[Any, Any, Any]:
    """``(data, indices, indptr)`` of ``W.T``, ``W`` the forward matrix of ``geometry``.

    ``weight`` is the weight the forward builder reads, ``(C_out, C_in/G, *kernel)``
    (``None`` skips ``data``); the layout is ``geometry.layout``'s (channels last: rows
    ``i*C_in + c``, columns ``p*C_out + c``). Entries are sorted within each row and
    every ``(row, column)`` is stored once: the canonical CSR of ``W.T``.
    """
    g = geometry.T if geometry.transposed else geometry
    groups = g.groups
    cout_g, cin_g = g.out_channels // groups, g.in_channels // groups
    c_rows, c_cols = g.in_channels, g.out_channels
    last = g.permuted
    ndim = g.ndim
    plans = g.transposed_axis_plans
    totals = [p.total for p in plans]
    n_out = math.prod(g.output_size)
    out_stride = [math.prod(g.output_size[d + 1:]) for d in range(ndim)]
    nnz = g.nnz
    nnz_ch = cout_g * math.prod(totals)  # entries of one row channel (channels first)
    idx_dtype = g.index_dtype
    scale = c_cols if last else 1  # a spatial column's multiplier

    data_arr = xp.empty(nnz, dtype=g.dtype) if weight is not None else None
    idx_arr = xp.empty(nnz, dtype=idx_dtype) if indices else None
    indptr = _indptr(g, plans, xp) if indices else None
    wt = swapped_weight(g, weight, xp) if weight is not None else None

    def write(task: tuple[_Box, int, slice]) -> None:
        box, axis, sl = task
        index: list[Any] = [slice(None)] * len(box.shape)
        index[axis] = sl
        sub = tuple(index)
        if idx_arr is not None:
            view = _as_strided(xp, idx_arr, box.offset, box.shape, box.strides)[sub]
            outer: Any = None
            full = len(box.shape)
            for d, part in enumerate(box.outer):
                if part is None:
                    continue
                values = part[sl] if d == axis else part
                shape = [1] * full
                shape[d] = -1
                values = xp.asarray(values.astype(idx_dtype)).reshape(shape)
                outer = values if outer is None else outer + values
            if outer is None:
                view[...] = box.inner
            else:
                xp.add(outer, box.inner, out=view)
        if data_arr is not None:
            view = _as_strided(xp, data_arr, box.offset, box.shape, box.strides)[sub]
            tmpl = box.data
            if tmpl.ndim == len(box.shape) and tmpl.shape[axis] > 1:
                tmpl = tmpl[sub[:axis + 1]]
            view[...] = tmpl

    workers = threads if threads is not None else default_threads()
    threaded = xp is np and workers > 1 and nnz >= THREADED_MIN_NNZ
    tasks: list[tuple[_Box, int, slice]] = []
    held = [0]

    def run_pending() -> None:
        if threaded and len(tasks) > 1:
            list(thread_pool().map(write, tasks))
        else:
            for task in tasks:
                write(task)
        tasks.clear()
        held[0] = 0

    def add(box: _Box) -> None:
        held[0] += box.nbytes
        tasks.extend(box.split(TASK_ENTRIES))
        if held[0] > BATCH_BYTES:
            run_pending()

    head_phases = [[ph for run in p.runs for ph in run.phases()] for p in plans[:-1]]
    for head in itertools.product(*head_phases):
        rows_h = [run.rows[0] for run in head]
        ms = [r.m for r in rows_h]
        if 0 in ms:
            continue
        mprod = math.prod(ms)
        # spatial column offsets of the head's entries (r_1, ..., r_{D-1}), host int64
        spatial = np.zeros((), dtype=np.int64)
        for d, r in enumerate(rows_h):
            spatial = np.add.outer(spatial, r.offsets * out_stride[d])
        folded = None
        if wt is not None:
            folded = wt
            for d, r in enumerate(rows_h):
                folded = r.fold(folded, 2 + d, xp)
        # offset of the head: sum_d before_d * prefix_d * after_d
        offset_h = 0
        strides_h = []
        for d, run in enumerate(head):
            before = math.prod(ms[:d])
            after = math.prod(totals[d + 1:])
            offset_h += before * run.prefix0 * after
            strides_h.append(before * run.entries * after)
        outer_h: list[np.ndarray | None] = [
            (run_h.base0 + np.arange(run_h.count, dtype=np.int64) * run_h.step)
            * out_stride[d] * scale for d, run_h in enumerate(head)]
        for run in plans[-1].runs:
            if run.entries == 0:
                continue
            base_len = cout_g * mprod * run.entries * (c_rows if last else 1)
            blocks = 1
            if base_len < SHORT_ROW:
                blocks = max(1, BLOCKED_ROW // base_len)
            # one block's super-row; a merged piece repeats it, shifted `step` per block
            inner1, tmpl1 = _templates(run, spatial, folded, g, last, xp, idx_dtype, scale,
                                       n_out, wt is not None, idx_arr is not None)
            for piece in run.merged(blocks):
                joined = piece.joined
                inner, tmpl = None, tmpl1
                if inner1 is not None:
                    shift = np.arange(joined, dtype=np.int64) * (run.step * scale)
                    inner = xp.asarray((shift[:, None] + inner1[None, :]).ravel()
                                       .astype(idx_dtype))
                if joined > 1 and tmpl1 is not None:
                    tmpl = xp.tile(tmpl1, (1, joined) if tmpl1.ndim == 2 else joined)
                row_len = cout_g * mprod * piece.entries  # one super-row (one row channel)
                outer_last = ((piece.base0 + np.arange(piece.count, dtype=np.int64)
                               * piece.step) * out_stride[-1] * scale)
                spatial_shape = (*(r.count for r in head), piece.count)
                outer: list[np.ndarray | None]
                if last:
                    offset = c_rows * cout_g * (offset_h + mprod * piece.prefix0)
                    strides = (*(c_rows * cout_g * s for s in strides_h),
                               c_rows * row_len, 1)
                    shape = (*spatial_shape, c_rows * row_len)
                    outer = [*outer_h, outer_last]
                    data_t = tmpl
                else:
                    offset = cout_g * (offset_h + mprod * piece.prefix0)
                    strides = (cin_g * nnz_ch, nnz_ch, *(cout_g * s for s in strides_h),
                               row_len, 1)
                    shape = (groups, cin_g, *spatial_shape, row_len)
                    outer = [np.arange(groups, dtype=np.int64) * (cout_g * n_out), None,
                             *outer_h, outer_last]
                    data_t = None if tmpl is None else tmpl.reshape(
                        groups, cin_g, *([1] * ndim), row_len)
                if idx_arr is None:
                    outer = [None] * len(outer)
                add(_Box(offset, shape, strides, outer, inner, data_t))
    run_pending()
    return data_arr, idx_arr, indptr


def _templates(piece: TransposedRun, spatial: np.ndarray, folded: Any, g: ConvGeometry,
               last: bool, xp: ModuleType, idx_dtype: np.dtype, scale: int,
               n_out: int, with_data: bool, with_indices: bool) -> tuple[Any, Any]:
    """The super-row of a last-axis block: its columns ``inner`` (host) and values ``tmpl``.

    Channels first: ``[phi][c_out][r_1..r_{D-1}][r_D]`` (values per row channel,
    ``(C_in, L)``); channels last ``[phi][c_in][r_1..r_D][c_out]`` (one row of ``L``).
    """
    cout_g, cin_g = g.out_channels // g.groups, g.in_channels // g.groups
    cols, vals = [], []
    for row in piece.rows:
        if row.m == 0:
            continue
        sp = np.add.outer(spatial, row.offsets) * scale  # (m_1..m_{D-1}, m_D)
        if with_indices:
            if last:  # (c_in, r..., c_out): p*C_out + group*cout_g + c_out
                chan = ((np.arange(g.in_channels) // cin_g) * cout_g)
                c = (sp[None, ..., None] + chan.reshape((-1,) + (1,) * sp.ndim + (1,))
                     + np.arange(cout_g).reshape((1,) * (sp.ndim + 1) + (-1,)))
            else:  # (c_out, r...): c_out*N_out + p
                c = (np.arange(cout_g, dtype=np.int64) * n_out).reshape(
                    (-1,) + (1,) * sp.ndim) + sp[None]
            cols.append(c.ravel())
        if with_data:
            f = row.fold(folded, folded.ndim - 1, xp)
            if last:
                f = xp.moveaxis(f, 1, -1)
            vals.append(f.reshape(g.in_channels, -1))
    inner = np.concatenate(cols) if with_indices else None  # host int64
    tmpl = None
    if with_data:
        if last:  # [phi][c_in][...]: each row's values whole, one after another
            tmpl = xp.concatenate([v.reshape(-1) for v in vals])
        else:
            tmpl = xp.concatenate(vals, axis=1)
    return inner, tmpl


def _indptr(g: ConvGeometry, plans: tuple[TransposedPlan, ...], xp: ModuleType) -> Any:
    """Row pointers of ``W.T``: row ``(c, i)`` holds ``C_out/G * prod_d counts_d[i_d]``.

    Written block of first-axis rows by block into ``indptr`` and summed in place; beside
    it, the counts of each axis and one plane of row lengths.
    """
    idx = g.index_dtype
    cout_g = g.out_channels // g.groups
    rest = np.array(cout_g, dtype=idx)
    for plan in plans[1:]:
        rest = np.multiply.outer(rest, plan.counts.astype(idx))
    rest_x = xp.asarray(rest.ravel())
    del rest
    first = plans[0].counts  # int64; each block cast on its own
    n1, per, c = g.input_size[0], rest_x.size, g.in_channels
    indptr = xp.empty(c * n1 * per + 1, dtype=idx)
    indptr[0] = 0
    block = max(1, INDPTR_BLOCK // max(1, per))
    if g.permuted:  # rows (i, c)
        rows = indptr[1:].reshape(n1, per, c)
        for a in range(0, n1, block):
            b = min(n1, a + block)
            xp.multiply(xp.asarray(first[a:b].astype(idx))[:, None, None],
                        rest_x[None, :, None], out=rows[a:b])
    else:  # rows (c, i): the same lengths for every channel
        rows = indptr[1:].reshape(c, n1, per)
        for a in range(0, n1, block):
            b = min(n1, a + block)
            xp.multiply(xp.asarray(first[a:b].astype(idx))[None, :, None],
                        rest_x[None, None, :], out=rows[:, a:b])
    xp.cumsum(indptr[1:], out=indptr[1:])
    return indptr
