"""Per-axis plans of ``S.T``: which output positions read each input index of an axis.

The transpose of :mod:`convmat.axes`: ``S`` (one axis of the forward convolution) has a row
per output position ``p`` and reads input index ``i = map(stride*p + dilation*t - lo)``
through tap ``t``; a row of ``S.T`` is an input index ``i`` and holds the output positions
that read it, ascending, each entry summing its taps in tap order (the order the forward
builder sums folded taps in, so the values are bit-for-bit the forward ones).

A plan tabulates the ``out*k`` taps of the axis once (vectorised, O(out*k) memory while it
is made, ``PLAN_PAIR_BYTES`` per tap), sorts them by input index and splits the rows into
runs: ``count`` consecutive *blocks* of ``width`` rows reading one relative pattern, the
first output position advancing by ``step`` per block. With stride ``s`` every interior
row reads the pattern of the row ``s`` before it, one position on: the interior is one run
of blocks of ``s`` rows (the ``s`` phases ``i mod s``), whose row lengths are periodic so
that CSR offsets stay affine per block. Border rows are gathered into blocks of a single
repetition (at most ``MAX_BLOCK_ROWS`` rows each). Only run boundaries are walked in Python.
"""

from __future__ import annotations

import dataclasses
import functools
from types import ModuleType
from typing import Any

import numpy as np

from .axes import TABLE_ENTRIES, AxisMap

__all__ = ["MAX_BLOCK_ROWS", "PLAN_PAIR_BYTES", "TransposedPlan", "TransposedRow",
           "TransposedRun", "interior", "transposed_axis_plan"]

#: Consecutive border rows of one axis gathered into one block (a run of count 1).
MAX_BLOCK_ROWS = 64
#: Bytes per tabulated (output position, tap) pair while an axis is planned.
PLAN_PAIR_BYTES = 160


@dataclasses.dataclass(eq=False, slots=True)
class TransposedRow:
    """One row of a block: ``m`` output positions ``block_base + offsets`` (ascending).

    Entry ``r`` sums the kernel taps ``first[r]``, then ``taps`` of each layer ``l`` whose
    ``entries`` include ``r`` (the ``l``-th tap of those entries), in tap order.
    """

    m: int
    offsets: np.ndarray
    first: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    def shifted(self, shift: int) -> TransposedRow:
        """The same row with its positions moved by ``shift``."""
        return dataclasses.replace(self, offsets=self.offsets + shift)

    def fold(self, weight: Any, axis: int, xp: ModuleType) -> Any:
        """``weight`` with its taps along ``axis`` summed into this row's ``m`` entries."""
        out = xp.take(weight, xp.asarray(self.first), axis=axis)
        if not self.layers:
            return out
        moved = xp.moveaxis(out, axis, -1)
        src = xp.moveaxis(weight, axis, -1)
        for entries, taps in self.layers:
            moved[..., xp.asarray(entries)] += src[..., xp.asarray(taps)]
        return xp.moveaxis(moved, -1, axis)


@dataclasses.dataclass(eq=False, slots=True)
class TransposedRun:
    """``count`` blocks of ``width`` consecutive rows from ``start``, one pattern.

    Block ``j`` holds rows ``start + j*width + phi``; row ``phi`` reads the output positions
    ``base0 + j*step + rows[phi].offsets``. ``prefix0`` entries of the axis precede the
    run and each block holds ``entries`` of them. (A run of ``joined`` blocks, see
    :meth:`merged`, keeps the rows of one original block.)
    """

    start: int
    width: int
    count: int
    base0: int
    step: int
    prefix0: int
    entries: int
    rows: tuple[TransposedRow, ...]
    #: Original blocks joined into one (:meth:`merged`): a block is then ``joined`` times
    #: ``rows``, the ``b``-th time shifted by ``b * step / joined`` positions.
    joined: int = 1
    #: Merged forms of the run, by blocks (see :meth:`merged`).
    cache: dict[int, list[TransposedRun]] = dataclasses.field(default_factory=dict,
                                                               repr=False)

    def phases(self) -> list[TransposedRun]:
        """The run as ``width`` runs of one row per block (for the axes before the last)."""
        out, prefix = [], self.prefix0
        for phi, row in enumerate(self.rows):
            out.append(TransposedRun(self.start + phi, self.width, self.count, self.base0,
                                     self.step, prefix, self.entries, (row,)))
            prefix += row.m
        return out

    def merged(self, blocks: int) -> list[TransposedRun]:
        """The run with up to ``blocks`` consecutive blocks as one block.

        The blocks are split evenly (``ceil(count / blocks)`` pieces), and a remainder is
        one block of its own: no short super-rows are left over. Cached per ``blocks``
        (the plans are shared, and the same run is merged for every head of a build).
        """
        blocks = min(blocks, self.count)
        if blocks <= 1:
            return [self]
        done = self.cache.get(blocks)
        if done is not None:
            return done
        even = -(-self.count // -(-self.count // blocks))  # even pieces
        full = self.count // even
        out = [self._joined(0, even, full)]
        rest = self.count - full * even
        if rest:
            out.append(self._joined(full * even, rest, 1))
        self.cache[blocks] = out
        return out

    def _joined(self, first: int, blocks: int, count: int) -> TransposedRun:
        """``count`` blocks of ``blocks`` consecutive blocks, from block ``first``."""
        return TransposedRun(self.start + first * self.width, self.width * blocks, count,
                             self.base0 + first * self.step, self.step * blocks,
                             self.prefix0 + first * self.entries, self.entries * blocks,
                             self.rows, blocks)


@dataclasses.dataclass(frozen=True, eq=False)
class TransposedPlan:
    """The rows of one axis of ``S.T``: runs in order, covering every input index."""

    runs: tuple[TransposedRun, ...]
    counts: np.ndarray  # entries per row (input index)
    #: Taps tabulated at once while planning (those of the largest border segment).
    tabulated: int = 0
    #: Rows of the largest border segment (each holds a few counters while planning).
    border: int = 0

    @functools.cached_property
    def total(self) -> int:
        """Entries of the axis (the same as the forward plan's)."""
        return int(self.counts.sum())

    @functools.cached_property
    def widest(self) -> int:
        """Most entries of one row."""
        return int(self.counts.max(initial=0))

    @functools.cached_property
    def widest_block(self) -> int:
        """Most entries of one block."""
        return max((r.entries for r in self.runs), default=0)


def _row(pairs_p: np.ndarray, pairs_t: np.ndarray, block_base: int) -> TransposedRow:
    """A row from its ``(p, t)`` pairs, sorted by ``p`` then ``t``."""
    if pairs_p.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return TransposedRow(0, empty, empty, ())
    new = np.ones(pairs_p.size, dtype=bool)
    new[1:] = pairs_p[1:] != pairs_p[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, pairs_p.size))
    layers = []
    for layer in range(1, int(sizes.max())):
        entries = np.flatnonzero(sizes > layer)
        layers.append((entries, pairs_t[starts[entries] + layer]))
    return TransposedRow(int(starts.size), pairs_p[starts] - block_base, pairs_t[starts],
                         tuple(layers))


def interior(axis: AxisMap, out: int) -> tuple[int, int]:
    """Rows ``[a, b)`` read only directly, every tap in range: ``b - a`` a multiple of stride.

    Row ``i`` is interior when every tap ``t`` with ``stride | i + lo - dilation*t`` lands
    on an output position ``0 <= p < out`` and no padded position that some output reads
    maps onto ``i`` (each side's padding reads a range of positions; its image is a range of
    indices, or one index when clamped, which bounds the interior from below or above,
    whichever keeps more of it). Interior rows read the same pattern, one position on per
    ``stride`` rows. ``(0, 0)`` when fewer than two blocks of ``stride`` rows are interior.
    """
    n, k, s, d, lo = axis.n, axis.k, axis.stride, axis.dilation, axis.lo
    span = d * (k - 1)
    a = max(0, span - lo)
    b = min(n, s * (out - 1) - lo + 1)
    mode = axis.padding
    top = s * (out - 1) + span - lo  # the last padded position read
    for side, u0, u1 in ((mode.below, -lo, min(-1, top)), (mode.beyond, max(n, -lo), top)):
        if side is None or u0 > u1:
            continue
        x0, x1 = sorted((side.index(u0, n), side.index(u1, n)))
        if x0 + x1 < n - 1:
            a = max(a, x1 + 1)
        else:
            b = min(b, x0)
    count = (b - a) // s if b > a else 0
    return (a, a + count * s) if count >= 2 else (0, 0)


def _pairs(axis: AxisMap, out: int, r0: int, r1: int) -> tuple[np.ndarray, ...]:
    """``(row, p, t)`` of every tap landing on rows ``[r0, r1)``, sorted by row, ``p``, ``t``.

    Tabulates only the output positions that can reach those rows: those reading them
    directly, and (folding modes) those reading the padding, in chunks of
    ``TABLE_ENTRIES``.
    """
    n, k, s, d, lo = axis.n, axis.k, axis.stride, axis.dilation, axis.lo
    span = d * (k - 1)
    ranges = [(-((span - r0 - lo) // s), (r1 - 1 + lo) // s + 1)]
    if axis.padding.folds:
        ranges += [(0, -(-lo // s)), ((n + lo - span) // s, out)]
    ranges = sorted((max(0, p0), min(out, p1)) for p0, p1 in ranges)
    merged: list[list[int]] = []
    for p0, p1 in ranges:
        if p0 >= p1:
            continue
        if merged and p0 <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], p1)
        else:
            merged.append([p0, p1])
    chunk = max(1, TABLE_ENTRIES // k)
    rows, pos, tap = [], [], []
    for p0, p1 in merged:
        for c0 in range(p0, p1, chunk):
            q = axis.table(c0, min(chunk, p1 - c0)).ravel()
            where = np.flatnonzero((q >= r0) & (q < r1))
            rows.append(q[where])
            pos.append(c0 + where // k)
            tap.append(where % k)
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    row_a, pos_a, tap_a = (np.concatenate(x) for x in (rows, pos, tap))
    order = np.argsort(row_a, kind="stable")  # positions ascend across chunks: (p, t) kept
    return row_a[order], pos_a[order], tap_a[order]


def _segment(axis: AxisMap, out: int, r0: int, r1: int, prefix0: int
             ) -> tuple[list[TransposedRun], np.ndarray, int]:
    """Runs of the rows ``[r0, r1)`` from their tabulated taps, their entry counts, taps.

    Each row is compared with the row ``stride`` before it (vectorised): a run continues
    while every row repeats that pattern one step on; only run boundaries are walked in
    Python.
    """
    w, size = axis.stride, r1 - r0
    rows_i, pos, tap = _pairs(axis, out, r0, r1)
    rows_i = rows_i - r0
    cnt = np.bincount(rows_i, minlength=size)
    ptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(cnt, out=ptr[1:])
    new = np.ones(rows_i.size, dtype=bool)
    new[1:] = (rows_i[1:] != rows_i[:-1]) | (pos[1:] != pos[:-1])
    m = np.bincount(rows_i[new], minlength=size)
    del new
    prefix = np.full(size + 1, prefix0, dtype=np.int64)
    np.cumsum(m, out=prefix[1:])
    prefix[1:] += prefix0
    nonempty = cnt > 0
    base = np.zeros(size, dtype=np.int64)
    base[nonempty] = pos[ptr[:-1][nonempty]]
    rel = pos - base[rows_i]

    # same[i]: row i reads the pattern of row i - w (same pairs relative to its base)
    same = np.zeros(size, dtype=bool)
    if size > w:
        same_cnt = np.zeros(size, dtype=bool)
        same_cnt[w:] = cnt[w:] == cnt[:-w]
        pick = np.flatnonzero(same_cnt[rows_i])
        at = rows_i[pick]
        other = pick - ptr[at] + ptr[at - w]
        bad = (rel[pick] != rel[other]) | (tap[pick] != tap[other])
        mismatched = np.bincount(at[bad], minlength=size)
        del pick, at, other, bad
        same = same_cnt & (mismatched == 0)
    delta = np.zeros(size, dtype=np.int64)
    delta[w:] = base[w:] - base[:-w]
    del rel
    ends = np.where(same, size, np.arange(size))  # next row not repeating its pattern
    next_bad = np.append(np.minimum.accumulate(ends[::-1])[::-1], size)

    def block(start: int, width: int, count: int, step: int) -> TransposedRun:
        rows_at = range(start, start + width)
        first = next((i for i in rows_at if cnt[i]), None)
        b0 = int(base[first]) if first is not None else 0
        rows = tuple(_row(pos[ptr[i]:ptr[i + 1]], tap[ptr[i]:ptr[i + 1]], b0)
                     for i in rows_at)
        return TransposedRun(r0 + start, width, count, b0, step, int(prefix[start]),
                             int(prefix[start + width] - prefix[start]), rows)

    runs: list[TransposedRun] = []
    loose: list[int] = []  # border rows waiting to be gathered into a block

    def flush() -> None:
        for a in range(0, len(loose), MAX_BLOCK_ROWS):
            chunk = loose[a:a + MAX_BLOCK_ROWS]
            runs.append(block(chunk[0], len(chunk), 1, 0))
        loose.clear()

    i = 0
    while i < size:
        count, step = 0, 0
        if i + 2 * w <= size:
            count = (int(next_bad[i + w]) - i) // w
            if count >= 2:  # the nonempty rows must all step alike
                seg = slice(i + w, i + count * w)
                live = np.flatnonzero(cnt[seg] > 0)
                steps = delta[seg][live]
                if steps.size:
                    step = int(steps[0])
                    off = np.flatnonzero(steps != step)
                    if off.size:
                        count = int(live[off[0]] + w) // w
        if count >= 2:
            flush()
            runs.append(block(i, w, count, step))
            i += count * w
        else:
            loose.append(i)
            i += 1
    flush()
    return runs, m, int(rows_i.size)


@functools.lru_cache(maxsize=16)
def transposed_axis_plan(axis: AxisMap, out: int) -> TransposedPlan:
    """The runs of ``S.T`` for an axis with ``out`` output positions (module docstring).

    The interior (:func:`interior`) is one run made from its first block; the rows below
    and above it are tabulated (:func:`_segment`), so planning costs O(k * border).
    """
    n, w = axis.n, axis.stride
    a, b = interior(axis, out)
    runs: list[TransposedRun] = []
    counts: list[np.ndarray] = []
    prefix = 0
    tabulated = border = 0
    for r0, r1, inside in ((0, a, False), (a, b, True), (b, n, False)) if b > a else (
            (0, n, False),):
        if r1 <= r0:
            continue
        if inside:  # one block of `stride` rows, repeated one position on per block
            first, _, _ = _segment(axis, out, r0, r0 + w, prefix)
            rows = tuple(row for run in first for row in run.rows)
            m = np.array([row.m for row in rows], dtype=np.int64)
            live = [i for i, row in enumerate(rows) if row.m]
            b0 = first[0].base0 if first else 0
            rows = tuple(row.shifted(run.base0 - b0) for run in first for row in run.rows)
            count = (r1 - r0) // w
            runs.append(TransposedRun(r0, w, count, b0, 1 if live else 0, prefix,
                                      int(m.sum()), rows))
            counts.append(np.tile(m, count))
        else:
            seg_runs, m, pairs = _segment(axis, out, r0, r1, prefix)
            runs.extend(seg_runs)
            counts.append(m)
            tabulated = max(tabulated, pairs)
            border = max(border, r1 - r0)
        prefix += int(counts[-1].sum())
    return TransposedPlan(tuple(runs), np.concatenate(counts) if counts else
                          np.zeros(0, dtype=np.int64), tabulated, border)
