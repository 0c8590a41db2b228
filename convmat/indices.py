"""Write the CSR arrays of a convolution matrix in place, against an array namespace ``xp``.

No validation happens here: the :class:`~convmat.geometry.ConvGeometry` did it.

How it works
------------
Rows are ``(c_out, p_1, ..., p_D)`` in C order, entries of a row are
``(c_in, r_1, ..., r_D)``: the ``c_in`` of the group, and for each axis the ``r``-th distinct
input index the output position reads (see :class:`~convmat.geometry.AxisPlan`). Each axis
splits into *runs* of output positions sharing one relative tap pattern (the interior is
one run; border positions where padding drops or folds taps form their own). A product of
one run per axis is a *box*: all its rows have the same length ``L`` and their offsets in
the CSR arrays are affine in ``(group, c_out, p_1, ..., p_D)``, so the box is a strided
view ``(G, C_out/G, |R_1|, ..., |R_D|, L)`` of ``indices`` and of ``data``:

* ``indices[box] = outer[g, p] + inner[c_in, r]`` -- a single broadcast add, where
  ``outer = g*C_in/G*N_in + sum_d base_d[p_d]*N_d`` and
  ``inner = c_in*N_in + sum_d offsets_d[r_d]*N_d`` (``N_d`` the C-order stride of axis d);
* ``data[box] = F[c_out, c_in, r]`` broadcast over ``p``, where ``F`` is the weight with
  each axis' taps gathered (and folded taps summed) for that run.

Every entry is written once, straight into its final place, so the build runs at the
speed of writing the CSR; large boxes are split into tasks that run on threads (NumPy
releases the GIL in these bulk operations).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from .axes import TABLE_ENTRIES, AxisMap, fold_table
from .backend import csr_container
from .geometry import (
    BATCH_BYTES,
    BOX_OVERHEAD,
    GROUP_RUN,
    INDPTR_BLOCK,
    LAYOUT_BLOCK,
    LAYOUT_THREADS,
    LINE_FACTOR,
    AxisRun,
    ConvGeometry,
)

__all__ = ["build_channels_last", "build_csr_arrays", "fold_weight", "plane_offset"]

#: Entries written by one task (a slab of a box); bounds per-task temporaries.
TASK_ENTRIES = 1 << 21
#: Below this many entries, build on the calling thread only.
THREADED_MIN_NNZ = 1 << 20
#: Rows shorter than this are written in blocks of consecutive rows (see ``_last_axis_spans``)
#: of about ``BLOCKED_ROW`` entries, so that the innermost loop NumPy runs is long.
SHORT_ROW = 512
BLOCKED_ROW = 2048


def default_threads() -> int:
    """Worker threads for a build: the CPUs this process may run on, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child: the parent's pool has no threads there; make a new one on use."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def thread_pool() -> ThreadPoolExecutor:
    """The process-wide worker pool for builds and split sparse products (created once)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=default_threads(),
                                   thread_name_prefix="convmat")
    return _POOL


def fold_weight(weight: Any, runs: tuple[AxisRun, ...], xp: ModuleType) -> Any:
    """Weight ``(C_out, C_in/G, *kernel)`` with each axis' taps gathered for ``runs``.

    Returns ``F`` of shape ``(C_out, C_in/G, m_1, ..., m_D)`` with
    ``F[..., r_1, ..., r_D] = sum over taps t_d in slot r_d of runs[d] of weight[..., t]``.
    """
    f = weight
    for d, run in enumerate(runs):
        f = run.fold(f, 2 + d, xp)
    return f


def _as_strided(xp: ModuleType, flat: Any, offset: int, shape: tuple[int, ...],
                strides: tuple[int, ...]) -> Any:
    item = flat.itemsize
    return xp.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=tuple(s * item for s in strides)
    )


def build_csr_arrays(
    geometry: ConvGeometry,
    weight: Any | None,
    xp: ModuleType = np,
    *,
    indices: bool = True,
    threads: int | None = None,
    planes: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any]:
    """``(data, indices, indptr)`` of the forward convolution matrix of ``geometry``.

    Parameters
    ----------
    geometry : ConvGeometry
        Validated geometry (its ``transposed`` flag is ignored: this is the forward ``W``).
    weight : array or None
        ``(C_out, C_in/G, *kernel)`` in ``geometry.dtype``; ``None`` skips ``data``.
    xp : module
        ``numpy`` or ``cupy``.
    indices : bool
        Whether to write ``indices`` and ``indptr`` (``False`` when only swapping data).
    threads : int, optional
        Worker threads (NumPy only); default :func:`default_threads`.
    planes : (start, stop), optional
        Build only the rows of output planes ``[start, stop)``, a plane being one
        ``(output channel, first-axis position)`` pair, i.e. the contiguous rows
        ``start*R .. stop*R`` with ``R = prod(output_size[1:])`` (a distributed build's
        share), in channels-first order whatever ``geometry.layout`` says. ``indptr`` then
        starts at 0. Default: every plane, in the geometry's layout (see
        :func:`build_channels_last`).
    """
    if planes is None and geometry.permuted:
        return build_channels_last(geometry, weight, xp, indices=indices, threads=threads)
    g = geometry
    groups = g.groups
    cout_g = g.out_channels // groups
    cin_g = g.in_channels // groups
    plans = g.axis_plans
    ndim = g.ndim
    n_in = math.prod(g.input_size)
    axis_stride = [math.prod(g.input_size[d + 1:]) for d in range(ndim)]
    totals = [p.total for p in plans]
    nnz_ch = g.nnz_per_channel
    idx_dtype = g.index_dtype
    o1 = g.output_size[0]
    q0, q1 = planes if planes is not None else (0, g.out_channels * o1)
    base = plane_offset(g, q0)
    nnz = plane_offset(g, q1) - base

    data_arr = xp.empty(nnz, dtype=g.dtype) if weight is not None else None
    idx_arr = xp.empty(nnz, dtype=idx_dtype) if indices else None
    indptr = _indptr(g, xp, q0, q1) if indices else None

    def write(task: tuple[_Box, int, slice]) -> None:
        box, axis, sl = task
        index = [slice(None)] * len(box.shape)
        index[axis] = sl
        sub = tuple(index)
        if idx_arr is not None:
            view = _as_strided(xp, idx_arr, box.offset, box.shape, box.strides)[sub]
            outer = _outer_table(box, sub, cin_g * n_in, axis_stride, xp, idx_dtype)
            xp.add(outer, box.inner, out=view)
        if data_arr is not None:
            view = _as_strided(xp, data_arr, box.offset, box.shape, box.strides)[sub]
            f = box.folded[sub[:2]] if axis < 2 else box.folded
            view[...] = f

    workers = threads if threads is not None else default_threads()
    threaded = xp is np and workers > 1 and nnz >= THREADED_MIN_NNZ
    tasks: list[tuple[_Box, int, slice]] = []
    held = [0]  # bytes of the templates the pending tasks hold

    def run_pending() -> None:
        if threaded and len(tasks) > 1:
            list(thread_pool().map(write, tasks))
        else:
            for task in tasks:
                write(task)
        tasks.clear()
        held[0] = 0

    def add(boxes: list[tuple[_Box, int, slice]]) -> None:
        if boxes:
            box = boxes[0][0]
            held[0] += BOX_OVERHEAD + sum(int(getattr(box, name).nbytes) for name in
                                          ("inner", "folded") if hasattr(box, name))
            tasks.extend(boxes)
            if held[0] > BATCH_BYTES:  # bound the workspace: write what is pending
                run_pending()

    group_cols = cin_g * n_in
    last_runs = plans[-1].runs
    last_items = _last_axis_items(last_runs, threaded) if ndim > 1 else []
    for head in itertools.product(*(p.runs for p in plans[:-1])):
        if any(r.m == 0 for r in head):
            continue
        head_m = math.prod(r.m for r in head)
        head_inner = (_inner_offsets(head, cin_g, n_in, axis_stride)
                      if idx_arr is not None else None)
        head_folded = fold_weight(weight, (*head,), xp) if data_arr is not None else None
        for c0, c1, a, b in _pieces(q0, q1, o1):
            if ndim > 1:
                first = _clip(head[0], a, b)
                if first is None:
                    continue
                head_spans = [first, *(_Span(r, 0, r.size, 1) for r in head[1:])]
                items = last_items
            else:
                head_spans = []
                items = _last_axis_items(tuple(c for c in (_clip_run(r, a, b)
                                                           for r in last_runs) if c), threaded)
            for item in items:
                m_last = item.m if isinstance(item, AxisRun) else item.entries
                if m_last == 0:
                    continue
                ms = [*(r.m for r in head), m_last]
                row_len = cin_g * head_m * m_last
                for g0, gn, j0, jn in _channel_segments(c0, c1, cout_g):
                    offset0 = (g0 * cout_g + j0) * nnz_ch - base
                    strides = []
                    for d, span in enumerate(head_spans):
                        before = math.prod(ms[:d])
                        after = math.prod(totals[d + 1:])
                        offset0 += cin_g * before * (
                            plans[d].prefix(span.run) + span.first * span.run.m) * after
                        strides.append(cin_g * before * span.run.m * after * span.block)
                    lead = cin_g * head_m
                    head_shape = (gn, jn, *(s.count for s in head_spans))
                    head_strides = (cout_g * nnz_ch, nnz_ch, *strides)
                    if isinstance(item, _Group):
                        offset = offset0 + lead * plans[-1].prefix_at(item.start)
                        add(item.boxes(
                            head_spans, head_shape, head_strides, offset, g0, j0,
                            head_inner, head_folded, xp, idx_dtype, data_arr, idx_arr,
                            group_cols, axis_stride, row_len, groups))
                        continue
                    whole = _Span(item, 0, item.size, 1)
                    inner = folded = None
                    if head_inner is not None:
                        inner = _inner_offsets((*head, item), cin_g, n_in, axis_stride)
                    if head_folded is not None:
                        folded = item.fold(head_folded, 1 + ndim, xp).reshape(
                            groups, cout_g, *([1] * ndim), row_len)
                    for last in _last_axis_spans(whole, row_len):
                        spans = (*head_spans, last)
                        offset = offset0 + lead * (plans[-1].prefix_at(last.run.start)
                                                   + last.first * last.run.m)
                        shape = (*head_shape, last.count, row_len * last.block)
                        box = _Box(spans, shape,
                                   (*head_strides, lead * last.run.m * last.block, 1),
                                   offset, g0)
                        if inner is not None:
                            tiled = inner
                            if last.block > 1:  # consecutive rows of an affine run: a shift
                                shift = np.arange(last.block, dtype=np.int64) * (
                                    last.run.step * axis_stride[-1])
                                tiled = (shift[:, None] + inner[None, :]).ravel()
                            box.inner = xp.asarray(tiled.astype(idx_dtype))
                        if folded is not None:
                            f = folded[g0:g0 + gn, j0:j0 + jn]
                            box.folded = f if last.block == 1 else xp.tile(
                                f, (1,) * (ndim + 2) + (last.block,))
                        add(box.split(TASK_ENTRIES))

    run_pending()
    return data_arr, idx_arr, indptr


def build_channels_last(
    g: ConvGeometry,
    weight: Any | None,
    xp: ModuleType = np,
    *,
    indices: bool = True,
    threads: int | None = None,
) -> tuple[Any, Any, Any]:
    """``(data, indices, indptr)`` of the channels-last ``W``, written piece by piece.

    The channels-first matrix with its rows and columns permuted: index ``(c, p)`` of an
    input or output (``p`` a flat spatial position) is ``p*C + c`` channels last.

    A row ``(c_out, p)`` holds, for each of the ``C_in/G`` input channels of its group,
    the same ``M`` spatial columns ``s_0 < ... < s_{M-1}``; channels last its columns
    ``s_r*C_in + c_in`` sort by ``(r, c_in)``, so entry ``c*M + r`` of the row moves to
    ``r*C_in/G + c`` (a fixed transposition, no sort). The rows of output channel ``c`` at
    ``p`` start at ``c*nnz_ch + C_in/G * F(p)`` channels first and at
    ``C_out*C_in/G*F(p) + c*L`` channels last, ``F(p)`` the spatial entries of the
    positions before ``p`` and ``L`` the row length. Over a box (a run per axis, see
    :mod:`convmat.indices`) ``F`` is affine in ``p`` and ``L`` constant, so a box moves as
    one strided copy ``(C, |R_1|, ..., |R_D|, C_in/G, M)`` between two views.

    The channels-first matrix is built in pieces of whole planes
    (``ConvGeometry.layout_pieces``), each moved to its place box by box, in slabs of at
    most ``TASK_ENTRIES`` entries: beside the result, one piece and one slab's column
    temporaries are alive (``ConvGeometry.layout_bytes``).
    """
    idx = g.index_dtype
    c_out = g.out_channels
    n_out, n_in, c_in = math.prod(g.output_size), math.prod(g.input_size), g.in_channels

    ptr0 = _indptr(g, xp, 0, g.output_size[0])  # one output channel: cin_g * F(p)
    lengths = ptr0[1:] - ptr0[:-1]
    indptr = xp.empty(c_out * n_out + 1, dtype=idx)
    rows = indptr[:-1].reshape(n_out, c_out)
    first = ptr0[:-1] * c_out
    del ptr0
    for c in range(c_out):
        rows[:, c] = first + c * lengths
    del first, lengths, rows
    indptr[-1] = g.nnz
    data = xp.empty(g.nnz, dtype=g.dtype) if weight is not None else None
    cols = xp.empty(g.nnz, dtype=idx) if indices else None
    workers = min(LAYOUT_THREADS, threads if threads is not None else default_threads())
    threaded = xp is np and workers > 1 and g.nnz >= THREADED_MIN_NNZ

    def move(task: tuple[Any, ...]) -> None:
        src_data, dst_data, src_cols, dst_cols = task
        if dst_data is not None:
            dst_data[...] = src_data
        if dst_cols is not None:  # column c*n_in + s  ->  s*c_in + c
            col = xp.remainder(src_cols, n_in)
            col *= c_in
            col += src_cols // n_in
            dst_cols[...] = col

    for q0, q1 in g.layout_pieces:
        piece = build_csr_arrays(g, weight, xp, indices=indices, threads=threads,
                                 planes=(q0, q1))
        tasks = _moves(g, (q0, q1), piece, data, cols, xp)
        del piece  # the tasks' views hold it until they are done
        if threaded and len(tasks) > 1:  # at most `workers` slabs in flight
            for k in range(0, len(tasks), workers):
                list(thread_pool().map(move, tasks[k:k + workers]))
        else:
            while tasks:
                move(tasks.pop())
        del tasks
    return data, cols, indptr


def _moves(g: ConvGeometry, planes: tuple[int, int], piece: tuple[Any, Any, Any],
           data: Any, cols: Any, xp: ModuleType) -> list[tuple[Any, ...]]:
    """``(src data, dst data, src cols, dst cols)`` views moving a piece, slab by slab."""
    q0, q1 = planes
    p_data, p_cols, _ = piece
    c_out, cin_g = g.out_channels, g.in_channels // g.groups
    plans = g.axis_plans
    totals = [p.total for p in plans]
    nnz_ch = g.nnz_per_channel
    base = g.plane_offset(q0)
    tasks = []
    for c0, c1, a, b in _pieces(q0, q1, g.output_size[0]):
        first_runs = [r for r in (_clip_run(r, a, b) for r in plans[0].runs) if r]
        for box in itertools.product(first_runs, *(p.runs for p in plans[1:])):
            ms = [r.m for r in box]
            if 0 in ms:
                continue
            m_all = math.prod(ms)
            row = cin_g * m_all
            f0 = 0  # F at the box's first position, and its steps along each axis
            steps = []
            for d, run in enumerate(box):
                scale = math.prod(ms[:d]) * math.prod(totals[d + 1:])
                f0 += plans[d].prefix_at(run.start) * scale
                steps.append(run.m * scale)
            shape = (c1 - c0, *(r.size for r in box), cin_g, m_all)
            src = (c0 * nnz_ch + cin_g * f0 - base,
                   (nnz_ch, *(cin_g * s for s in steps), m_all, 1))
            dst = (c_out * cin_g * f0 + c0 * row,
                   (row, *(c_out * cin_g * s for s in steps), 1, cin_g))
            for sub in _slabs(shape, LAYOUT_BLOCK):
                tasks.append(tuple(
                    None if arr is None else _as_strided(xp, arr, off, shape, strides)[sub]
                    for arr, (off, strides) in ((p_data, src), (data, dst), (p_cols, src),
                                                (cols, dst))))
    return tasks


def _slabs(shape: tuple[int, ...], max_entries: int) -> list[tuple[slice | int, ...]]:
    """Index tuples cutting an array of ``shape`` into slabs of at most ``max_entries``.

    The first axis ``a`` whose trailing block ``prod(shape[a+1:])`` fits is cut into chunks;
    the axes before it are taken one index at a time.
    """
    a = 0
    while math.prod(shape[a + 1:]) > max_entries:
        a += 1
    chunk = max(1, max_entries // max(1, math.prod(shape[a + 1:])))
    return [(*lead, slice(i, min(shape[a], i + chunk)))
            for lead in itertools.product(*(range(n) for n in shape[:a]))
            for i in range(0, shape[a], chunk)]


def plane_offset(g: ConvGeometry, plane: int) -> int:
    """Entries of the channels-first ``W`` before the first row of output plane ``plane``."""
    return g.plane_offset(plane)


def _pieces(q0: int, q1: int, o1: int) -> list[tuple[int, int, int, int]]:
    """Planes ``[q0, q1)`` as ``(c0, c1, a, b)``: channels ``[c0, c1)`` x positions ``[a, b)``.

    At most three pieces, each a contiguous block of rows: the rest of a first channel,
    whole channels, the start of a last channel.
    """
    pieces = []
    q = q0
    while q < q1:
        c, p = divmod(q, o1)
        if p or q1 - q < o1:  # a partial channel
            stop = min(q1, (c + 1) * o1)
            pieces.append((c, c + 1, p, stop - c * o1))
            q = stop
        else:  # whole channels
            c_end = q1 // o1
            pieces.append((c, c_end, 0, o1))
            q = c_end * o1
    return pieces


def _channel_segments(c0: int, c1: int, cout_g: int) -> list[tuple[int, int, int, int]]:
    """Channels ``[c0, c1)`` as ``(g0, groups, j0, per_group)`` blocks of whole-group shape."""
    segments = []
    c = c0
    while c < c1:
        g, j = divmod(c, cout_g)
        if j or c1 - c < cout_g:  # part of one group
            stop = min(c1, (g + 1) * cout_g)
            segments.append((g, 1, j, stop - c))
            c = stop
        else:  # whole groups
            g_end = c1 // cout_g
            segments.append((g, g_end - g, 0, cout_g))
            c = g_end * cout_g
    return segments


def _clip(run: AxisRun, a: int, b: int) -> _Span | None:
    """The positions ``[a, b)`` of ``run`` as a span (None when they do not meet)."""
    lo, hi = max(a, run.start), min(b, run.stop)
    if lo >= hi:
        return None
    return _Span(run, lo - run.start, hi - lo, 1)


def _clip_run(run: AxisRun, a: int, b: int) -> AxisRun | None:
    """The positions ``[a, b)`` of ``run`` as a run of their own (None when empty)."""
    lo, hi = max(a, run.start), min(b, run.stop)
    if lo >= hi:
        return None
    if (lo, hi) == (run.start, run.stop):
        return run
    return dataclasses.replace(run, start=lo, stop=hi,
                               base0=run.base0 + run.step * (lo - run.start))


def _last_axis_items(runs: tuple[AxisRun, ...], threaded: bool) -> list[AxisRun | _Group]:
    """The last axis' runs, consecutive short ones gathered into groups.

    Runs of at most ``GROUP_RUN`` positions are gathered: the rows of a group are
    contiguous, so the group is one box.
    """
    items: list[AxisRun | _Group] = []
    pending: list[AxisRun] = []

    def flush() -> None:
        if len(pending) > 1:
            items.append(_Group(tuple(pending), threaded))
        else:
            items.extend(pending)
        pending.clear()

    for run in runs:
        if run.size <= GROUP_RUN:
            pending.append(run)
        else:
            flush()
            items.append(run)
    flush()
    return items


class _Group:
    """Consecutive short runs of the last axis, written as one box.

    For fixed outer indices (channel, positions on the other axes) the rows of the group's
    positions are consecutive, so their entries form one contiguous "super-row" of
    ``lead * entries`` values; each member's rows are written into a template of that
    super-row (or, when the box is a single super-row, straight into the CSR arrays) by a
    few slice assignments, instead of a box per run.
    """

    def __init__(self, runs: tuple[AxisRun, ...], threaded: bool = False) -> None:
        self.runs = runs
        self.threaded = threaded
        self.start = runs[0].start
        self.entries = sum(r.size * r.m for r in runs)
        # Consecutive one-position runs of a folding mode are tabulated together (a _Block)
        self.parts: list[AxisRun | _Block] = []
        for run in runs:
            if run.m == 0:
                continue
            last = self.parts[-1] if self.parts else None
            if run.taps is None and not run.parts and run.size == 1 and run.axis is not None:
                if (isinstance(last, _Block) and last.stop == run.start
                        and (last.stop - last.start + 1) * run.axis.k <= TABLE_ENTRIES):
                    last.stop = run.stop
                    continue
                self.parts.append(_Block(run.axis, run.start, run.stop))
            else:
                self.parts.append(run)

    m = property(lambda self: self.entries)
    size = 1

    def base(self, positions: np.ndarray) -> np.ndarray:
        """Zero: the templates hold the absolute last-axis columns."""
        return np.zeros(len(np.atleast_1d(positions)), dtype=np.int64)

    def boxes(self, head_spans: list[_Span], head_shape: tuple[int, ...],
              head_strides: tuple[int, ...], offset: int, g0: int, j0: int,
              head_inner: Any, head_folded: Any, xp: ModuleType, idx_dtype: np.dtype,
              data_arr: Any, idx_arr: Any, group_cols: int, axis_stride: list[int],
              row_len: int, groups: int) -> list[tuple[_Box, int, slice]]:
        """Write the group's rows; the boxes (slabs) that remain to be written.

        With one position on the other axes, every channel's super-row is written in place
        (no workspace). Otherwise a template of one super-row per channel is filled and
        broadcast over the other axes' positions by the box.
        """
        gn, jn = head_shape[:2]
        cout_g = head_folded.shape[0] // groups if head_folded is not None else 0
        c0 = g0 * cout_g + j0  # the segment's channels are contiguous
        if math.prod(head_shape[2:]) == 1:
            head_shift = sum(int(s.base(slice(0, 1))[0]) * axis_stride[d]
                             for d, s in enumerate(head_spans))
            for gi in range(gn):
                first = None
                for ji in range(jn):
                    at = offset + gi * head_strides[0] + ji * head_strides[1]
                    if idx_arr is not None:
                        dst = idx_arr[at:at + row_len]
                        if first is None:
                            shift = (g0 + gi) * group_cols + head_shift
                            self._fill_indices(dst, np.asarray(head_inner) + shift, xp,
                                               idx_dtype)
                            first = dst
                        else:  # the same columns for every channel of a group
                            dst[...] = first
                    if data_arr is not None:
                        c = c0 + gi * jn + ji
                        self._fill_data(data_arr[at:at + row_len].reshape(1, row_len),
                                        head_folded[c:c + 1], xp)
            return []
        ndim = len(head_spans) + 1
        box = _Box((*head_spans, _Span(self, 0, 1, 1)),  # type: ignore[arg-type]
                   (*head_shape, 1, row_len), (*head_strides, row_len, 1), offset, g0)
        if idx_arr is not None:
            box.inner = xp.empty(row_len, dtype=idx_dtype)
            self._fill_indices(box.inner, np.asarray(head_inner), xp, idx_dtype)
        if data_arr is not None:
            data_t = xp.empty((gn * jn, row_len), dtype=data_arr.dtype)
            self._fill_data(data_t, head_folded[c0:c0 + gn * jn], xp)
            box.folded = data_t.reshape(gn, jn, *([1] * ndim), row_len)
        return box.split(TASK_ENTRIES)

    def _fill_indices(self, out: Any, head: np.ndarray, xp: ModuleType,
                      idx_dtype: np.dtype) -> None:
        """Columns of the super-row: ``[position][head q][slot r]``, ``head[q] + column``."""
        lead = len(head)
        head_x = xp.asarray(head.astype(idx_dtype))
        sliced = [run for run in self.parts if isinstance(run, AxisRun) and run.size == 1
                  and run.axis is not None and (run.taps is not None or run.parts)]
        sliced_ids = {id(run) for run in sliced}
        line, lo = None, 0
        if sliced:  # head[q] + every column the sliced runs read, if that range is short
            lo = min(_column_range(run)[0] for run in sliced)
            hi = max(_column_range(run)[1] for run in sliced)
            if hi - lo + 1 <= LINE_FACTOR * sum(run.m for run in sliced):
                line = head_x[:, None] + xp.arange(lo, hi + 1, dtype=idx_dtype)[None, :]
        pieces = []
        for run in self.parts:
            if isinstance(run, _Block):
                pieces.append(run.indices(head, xp, idx_dtype))
                continue
            if line is not None and id(run) in sliced_ids:
                if run.parts:  # contiguous ranges of columns
                    spans = run.part_layout()[1]
                    piece = (line[:, spans[0][0] - lo:spans[0][1] + 1 - lo] if len(spans) == 1
                             else xp.concatenate([line[:, a - lo:b + 1 - lo] for a, b in spans],
                                                 axis=1))
                else:
                    d, b0, m = run.axis.dilation, run.base0 - lo, run.m  # type: ignore[union-attr]
                    piece = line[:, b0:b0 + d * (m - 1) + 1:d]
                pieces.append(piece[0] if lead == 1 else piece.reshape(-1))
                continue
            offsets, _ = run.pattern()
            cols = run.base(np.arange(run.size))[:, None] + offsets[None, :]
            pieces.append((head_x[None, :, None]
                           + xp.asarray(cols.astype(idx_dtype))[:, None, :]).reshape(-1))
        _concatenate(xp, pieces, out, self.threaded)

    def _fill_data(self, out: Any, channels: Any, xp: ModuleType) -> None:
        """Values of the super-row per channel (``out`` is ``(channels, row)``)."""
        k = channels.shape[-1]
        rows = channels.reshape(channels.shape[0], -1, k)  # (C, lead, k)
        count, lead = rows.shape[:2]
        pieces: list[Any] = []
        pos = 0
        for run in self.parts:
            if isinstance(run, _Block):
                piece = run.data(rows, xp)
            elif run.taps is not None and run.size == 1:  # a slice of the kernel
                a, b = run.taps
                piece = rows[:, :, a:b]
                piece = piece[:, 0] if lead == 1 else piece.reshape(count, -1)
            elif run.parts and run.size == 1:  # folded in place, from its parts
                _concatenate(xp, pieces, out[:, pos - sum(p.shape[-1] for p in pieces):pos],
                             self.threaded)
                pieces = []
                _parts_row(run, rows, out[:, pos:pos + lead * run.m].reshape(
                    count, lead, run.m), xp)
                pos += lead * run.m
                continue
            else:
                folded = run.fold(rows, 2, xp)[:, None]
                piece = xp.broadcast_to(folded, (count, run.size, lead, run.m)).reshape(
                    count, -1)
            pieces.append(piece)
            pos += piece.shape[-1]
        _concatenate(xp, pieces, out[:, pos - sum(p.shape[-1] for p in pieces):pos],
                     self.threaded)


def _column_range(run: AxisRun) -> tuple[int, int]:
    """First and last column a one-position run reads."""
    if run.parts:
        spans = run.part_layout()[1]
        return spans[0][0], spans[-1][1]
    d = run.axis.dilation if run.axis is not None else 1
    return run.base0, run.base0 + d * (run.m - 1)


def _parts_row(run: AxisRun, rows: Any, out: Any, xp: ModuleType) -> None:
    """Write the folded values ``(C, lead, m)`` of a one-position ``parts`` run into ``out``.

    Each part adds a slice of the kernel (reversed when mirrored, a running sum when
    clamped) onto its columns, parts in tap order: every column sums its taps one after
    another in tap order, as the other paths do.
    """
    parts, spans = run.part_layout()
    los = [lo for lo, _ in spans]
    shifts = np.cumsum([0] + [hi - lo + 1 for lo, hi in spans]).tolist()

    def at(i: int) -> int:  # column index -> position in the row
        j = bisect.bisect_right(los, i) - 1
        return i - los[j] + shifts[j]

    out[...] = 0
    for t0, t1, i0, di in parts:
        taps = rows[:, :, t0:t1]
        if di == 1:
            out[:, :, at(i0):at(i0) + t1 - t0] += taps
        elif di == -1:
            first = at(i0 - (t1 - t0 - 1))
            out[:, :, first:first + t1 - t0] += taps[:, :, ::-1]
        else:  # clamped: a running sum continuing from what the column holds already
            i = at(i0)
            out[:, :, i] = xp.cumsum(xp.concatenate([out[:, :, i:i + 1], taps], axis=-1),
                                     axis=-1)[:, :, -1]


class _Block:
    """Consecutive positions ``[start, stop)`` of a folding mode, one run each, tabulated.

    Their rows are computed together from one table (``axes.fold_table``): the distinct
    columns of every row at once, and the folded values as one sparse product (each row's
    taps summed into its entries), so a long kernel's border costs vectorised work, not a
    Python step per position.
    """

    def __init__(self, axis: AxisMap, start: int, stop: int) -> None:
        self.axis, self.start, self.stop = axis, start, stop

    def _table(self) -> tuple[Any, ...]:
        """The block's tap tables, made anew on each use: only one block's are alive."""
        q = self.axis.table(self.start, self.stop - self.start)
        order, entry, m, cols = fold_table(q)
        return order, entry, m, cols, int(m.sum())

    @staticmethod
    def _layout(lead: int, m: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
        """For the super-row ``[position][q][r]``: each entry's ``q`` and its column entry."""
        starts = np.cumsum(m) - m
        counts = lead * m
        rep = np.repeat(np.arange(len(m)), counts)
        local = np.arange(lead * total) - np.repeat(lead * starts, counts)
        q, r = np.divmod(local, m[rep])
        return q, starts[rep] + r

    def indices(self, head: np.ndarray, xp: ModuleType, idx_dtype: np.dtype) -> Any:
        """Columns of the block's rows: ``head[q] + column``, ``[position][q][r]``."""
        _, _, m, cols, total = self._table()
        if len(head) == 1:
            return xp.asarray((cols + head[0]).astype(idx_dtype))
        q, entry = self._layout(len(head), m, total)
        return xp.asarray((head[q] + cols[entry]).astype(idx_dtype))

    def data(self, rows: Any, xp: ModuleType) -> Any:
        """Folded values ``(C, len)`` of the block's rows for ``rows`` ``(C, lead, k)``."""
        order, entry, m, _, total = self._table()
        count, lead, k = rows.shape
        # one row per (position, tap): entry e gets the sum of its taps
        gather = csr_container(xp)(
            (xp.ones(order.size, dtype=rows.dtype),
             xp.asarray(order.ravel()), xp.asarray(_row_pointers(entry, total))),
            shape=(total, k))
        values = (gather @ rows.reshape(count * lead, k).T).T  # (C*lead, total)
        if lead == 1:
            return values
        q, col = self._layout(lead, m, total)
        return values.reshape(count, lead * total)[:, xp.asarray(q * total + col)]


def _row_pointers(entry: np.ndarray, total: int) -> np.ndarray:
    """CSR row pointers of the (entry, tap) pairs, rows = entries (entries ascend per row)."""
    return np.concatenate(([0], np.cumsum(np.bincount(entry.ravel(), minlength=total))))


def _concatenate(xp: ModuleType, pieces: list[Any], out: Any, threaded: bool) -> None:
    """``out[..., :] = concatenate(pieces, axis=-1)``, written in place.

    A long row on the CPU is cut in two at a piece boundary and the halves are written on
    two threads (NumPy releases the GIL while it copies).
    """
    if len(pieces) == 1:
        out[...] = pieces[0]
        return
    if not pieces:
        return
    if threaded and out.size >= THREADED_MIN_NNZ:
        ends = np.cumsum([p.shape[-1] for p in pieces])
        half = int(np.searchsorted(ends, ends[-1] // 2)) + 1
        if 0 < half < len(pieces):
            cut = int(ends[half - 1])
            job = thread_pool().submit(np.concatenate, pieces[:half], axis=-1,
                                       out=out[..., :cut])
            np.concatenate(pieces[half:], axis=-1, out=out[..., cut:])
            job.result()
            return
    xp.concatenate(pieces, axis=-1, out=out)


@dataclasses.dataclass(frozen=True)
class _Span:
    """Positions ``first + block*i`` (``i < count``) of ``run``; ``block`` rows per position."""

    run: AxisRun
    first: int
    count: int
    block: int

    def base(self, sl: slice) -> np.ndarray:
        """First input index read by the positions ``sl`` of the span."""
        return self.run.base(np.arange(self.count, dtype=np.int64)[sl] * self.block
                             + self.first)


def _last_axis_spans(span: _Span, row_len: int) -> list[_Span]:
    """The last axis' span, cut so that short rows of an affine run go in blocks.

    Rows shorter than ``SHORT_ROW`` make NumPy's innermost loop short; ``block``
    consecutive rows of an affine run differ only by a shift, so they are written as one
    long row of ``block * row_len`` entries (and the remainder separately).
    """
    run = span.run
    if row_len >= SHORT_ROW:
        return [span]
    block = max(1, BLOCKED_ROW // row_len)
    full = span.count // block
    if full == 0:
        return [span]
    spans = [_Span(run, span.first, full, block)]
    if span.count > full * block:
        spans.append(_Span(run, span.first + full * block, span.count - full * block, 1))
    return spans


class _Box:
    """One product of spans: a strided view of the CSR arrays (see module docstring)."""

    inner: Any
    folded: Any

    def __init__(self, spans: tuple[_Span, ...], shape: tuple[int, ...],
                 strides: tuple[int, ...], offset: int, group0: int) -> None:
        self.spans = spans
        self.shape = shape
        self.strides = strides
        self.offset = offset
        self.group0 = group0

    def split(self, max_entries: int) -> list[tuple[_Box, int, slice]]:
        """Slabs of at most about ``max_entries`` entries along the longest outer axis."""
        outer = self.shape[:-1]
        total = math.prod(self.shape)
        axis = max(range(len(outer)), key=lambda a: outer[a])
        pieces = min(outer[axis], max(1, -(-total // max_entries)))
        step = -(-outer[axis] // pieces)
        return [(self, axis, slice(s, min(s + step, outer[axis])))
                for s in range(0, outer[axis], step)]


def _inner_offsets(runs: tuple[AxisRun, ...], cin_g: int, n_in: int,
                   axis_stride: list[int]) -> np.ndarray:
    """Column offsets of one row's entries ``(c_in, r_1, ..., r_D)`` (host, int64)."""
    ndim = len(runs)
    inner = (np.arange(cin_g, dtype=np.int64) * n_in).reshape((cin_g,) + (1,) * ndim)
    for d, run in enumerate(runs):
        shape = [1] * (ndim + 1)
        shape[1 + d] = run.m
        inner = inner + (run.pattern()[0] * axis_stride[d]).reshape(shape)
    return inner.ravel()


def _outer_table(box: _Box, sub: tuple[slice, ...], group_cols: int, axis_stride: list[int],
                 xp: ModuleType, idx_dtype: np.dtype) -> Any:
    """First column of each row of the slab: ``g*group_cols + sum_d base_d[p_d]*N_d``."""
    ndim = len(box.spans)
    full = 2 + ndim + 1
    groups = xp.arange(box.group0, box.group0 + box.shape[0], dtype=idx_dtype)
    out = (groups * idx_dtype.type(group_cols))[sub[0]]
    out = out.reshape((-1,) + (1,) * (full - 1))
    for d, span in enumerate(box.spans):
        part = xp.asarray((span.base(sub[2 + d]) * axis_stride[d]).astype(idx_dtype))
        shape = [1] * full
        shape[2 + d] = -1
        out = out + part.reshape(shape)
    return out


def _indptr(g: ConvGeometry, xp: ModuleType, q0: int, q1: int) -> Any:
    """Row pointers of planes ``[q0, q1)``, from 0.

    Row ``(c_out, p)`` holds ``C_in/G * prod_d counts_d[p_d]`` entries; computed in the
    index dtype (every partial sum is at most nnz, which fits), written into ``indptr``
    plane block by plane block and summed in place: beside ``indptr`` it holds the counts
    of the first axis and one plane of row lengths (``ConvGeometry.workspace_bytes``).
    """
    idx = g.index_dtype
    plans = g.axis_plans
    rest = np.array(g.in_channels // g.groups, dtype=idx)
    for plan in plans[1:]:
        rest = np.multiply.outer(rest, plan.counts(idx))
    rest_x = xp.asarray(rest.ravel())
    first = plans[0].counts(idx)
    o1, per = g.output_size[0], rest_x.size
    indptr = xp.empty((q1 - q0) * per + 1, dtype=idx)
    indptr[0] = 0
    rows = indptr[1:].reshape(q1 - q0, per)
    block = max(1, INDPTR_BLOCK // max(1, per))
    for a in range(q0, q1, block):
        b = min(q1, a + block)
        lengths = xp.asarray(first[np.arange(a, b) % o1])
        xp.multiply(lengths[:, None], rest_x[None, :], out=rows[a - q0:b - q0])
    xp.cumsum(indptr[1:], out=indptr[1:])
    return indptr
