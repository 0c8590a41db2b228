"""Per-axis plans: which input indices each output position of one axis reads.

Output position ``p`` of an axis reads the padded input at ``u = stride*p + dilation*t - lo``
through tap ``t < k``; the padding mode maps ``u`` back into ``[0, n)`` or drops it. Taps
that land on the same input index are summed ("folded").

The modes are a registry, :data:`PADDING_MODES`: each :class:`PaddingMode` says, per side of
the axis, how padded positions read the input, ``index(u) = sign*u + per_n*n + shift``
(``sign`` 1: in order, wrapped; -1: reversed, mirrored; 0: clamped), and how much padding
that holds for (its fits rule). The index map, the border parts and the far-padding runs
below all derive from those two sides, so a new mode is one entry.

A plan splits the ``out`` output positions into *runs* of consecutive positions that read
the same relative pattern of input indices, with a first index that is affine in the
position, so a run of any length is described in O(1) and the builder writes it as one
strided box.

Cost
----
Planning never tabulates anything per position and tap where it need not:

* The number ``a(p)`` of taps below the input and the number ``b(p)`` of taps below its end
  are monotone in ``p`` and change at most ``k`` times each, at positions given by a
  formula; so the positions split into at most ``2k + 1`` *intervals* of constant ``(a, b)``
  in O(k log k), whatever the padding.
* Under ``zeros`` padding an interval is a run: taps ``a..b-1`` read consecutive input
  indices ``dilation`` apart (no tap folds), first index ``stride*p + dilation*a - lo``.
  Intervals where every tap is in the input are the interior, under every mode.
* Intervals with no tap inside the input (the far padding) under a clamping mode
  (``replicate``) are one run each: the taps fold onto index 0 or ``n - 1``.
* With dilation 1 (every long filter), a position of a folding mode reads at most three
  *parts*: the taps below the input (mirrored, wrapped or clamped), those inside, those
  beyond it. Where every tap is outside on one side under a wrapping or mirroring mode
  (far ``circular``, ``reflect``, ``symmetric`` padding: taps in order or reversed, with
  any dilation) the pattern is the same for the whole interval: one run. Each remaining
  border position (at most ``(k-1)/stride + 1`` per side) is a run described by its parts
  in O(1), from a formula.
* With dilation > 1, the border positions of the folding modes (at most
  ``dilation*(k-1)/stride + 1`` per side, or up to the padding, which these modes bound by
  ``n``) are tabulated in chunks of bounded memory (:func:`fold_table`) and split into runs;
  only ``m`` and the first index are kept, and the pattern is recomputed from the run's
  first position when the builder needs it.

So a plan holds O(k + border runs) small objects, and planning costs O(k log k), except for
folding modes with dilation > 1: O(k * border positions) vectorised work in bounded memory.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["PADDING_MAPS", "PADDING_MODES", "AxisMap", "AxisPlan", "AxisRun", "PaddingMode",
           "PaddingSide", "axis_plan", "fold_table", "padded_index"]


# --------------------------------------------------------------------------- padding modes
@dataclasses.dataclass(frozen=True)
class PaddingSide:
    """Where the padding on one side of an axis reads: ``index(u) = sign*u + per_n*n + shift``.

    ``sign`` says how consecutive padded positions read the input: ``1`` in order (wrapped),
    ``-1`` in reverse order (mirrored), ``0`` all the same index (clamped to an edge). Exact
    for every ``u`` the mode's fits rule allows: one reflection or wrap suffices.
    """

    sign: int
    per_n: int
    shift: int

    def index(self, u: Any, n: int) -> Any:
        """Input index read at padded position ``u`` (an int, or an int64 array) on this side."""
        return self.sign * u + self.per_n * n + self.shift


@dataclasses.dataclass(frozen=True)
class PaddingMode:
    """A ``padding_mode``: how the padded positions ``u < 0`` and ``u >= n`` read the input.

    ``below`` and ``beyond`` describe the two sides (``None``: the taps there are dropped).
    Everything else derives from them: the index map (calling the mode), the border parts
    of a position (:meth:`AxisMap.parts`) and the far-padding runs (:func:`axis_plan`).
    ``limit(n)`` is the most padding a side may have for input size ``n`` (``None``:
    unbounded), ``rule`` that bound in words for the error message.
    """

    name: str
    below: PaddingSide | None
    beyond: PaddingSide | None
    limit: Callable[[int], int] | None = None
    rule: str = ""

    def __post_init__(self) -> None:
        if (self.below is None) != (self.beyond is None):
            raise ValueError(f"padding mode {self.name!r}: both sides drop, or neither")

    @property
    def folds(self) -> bool:
        """Whether padded positions read the input (``False``: dropped, as ``zeros``)."""
        return self.below is not None

    def __call__(self, u: np.ndarray, n: int) -> np.ndarray:
        """Input indices (int64, -1: dropped) read at padded positions ``u``.

        Exact within the padding that :meth:`check` allows.
        """
        u = np.asarray(u, dtype=np.int64)
        if self.below is None or self.beyond is None:
            return np.where((u >= 0) & (u < n), u, -1)
        return np.where(u < 0, self.below.index(u, n),
                        np.where(u >= n, self.beyond.index(u, n), u))

    def check(self, size: tuple[int, ...], pad: tuple[tuple[int, int], ...]) -> None:
        """Raise ``ValueError`` where an axis has more padding than ``limit`` allows."""
        if self.limit is None:
            return
        for d, (n, (lo, hi)) in enumerate(zip(size, pad, strict=True)):
            if max(lo, hi) > self.limit(n):
                raise ValueError(
                    f"padding_mode={self.name!r} needs {self.rule}; axis {d} has padding "
                    f"({lo}, {hi}) for input size {n}"
                )


#: The padding modes, by ``padding_mode`` name; a new mode is one entry. ``reflect`` mirrors
#: about the edge sample, without repeating it (NumPy ``reflect``, PyTorch's): ``u < 0``
#: reads ``-u``, ``u >= n`` reads ``2(n-1) - u``; ``symmetric`` mirrors about the edge,
#: repeating the edge sample (NumPy ``symmetric``, SciPy ndimage ``reflect``, MATLAB
#: ``symmetric``): ``-u - 1`` and ``2n - 1 - u``; ``replicate`` clamps (NumPy ``edge``);
#: ``circular`` wraps (NumPy ``wrap``): ``u + n`` and ``u - n``.
PADDING_MODES: dict[str, PaddingMode] = {mode.name: mode for mode in (
    PaddingMode("zeros", None, None),
    PaddingMode("reflect", PaddingSide(-1, 0, 0), PaddingSide(-1, 2, -2),
                lambda n: n - 1, "padding < input size"),
    PaddingMode("replicate", PaddingSide(0, 0, 0), PaddingSide(0, 1, -1)),
    PaddingMode("circular", PaddingSide(1, 1, 0), PaddingSide(1, -1, 0),
                lambda n: n, "padding <= input size (it wraps once)"),
    PaddingMode("symmetric", PaddingSide(-1, 0, -1), PaddingSide(-1, 2, -1),
                lambda n: n, "padding <= input size (it mirrors once)"),
)}
#: The index maps of the modes (each mode is its index map), under their historical name.
PADDING_MAPS: dict[str, PaddingMode] = PADDING_MODES


def padded_index(u: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Input indices read at padded positions ``u`` of an axis of size ``n`` (-1: dropped).

    Examples
    --------
    >>> padded_index(np.arange(-2, 5), 3, "reflect").tolist()
    [2, 1, 0, 1, 2, 1, 0]
    >>> padded_index(np.arange(-2, 5), 3, "symmetric").tolist()
    [1, 0, 0, 1, 2, 2, 1]
    """
    return PADDING_MODES[mode](u, n)


# --------------------------------------------------------------------------- one axis
@dataclasses.dataclass(frozen=True)
class AxisMap:
    """The arguments of one axis: position ``p`` reads ``map(stride*p + dilation*t - lo)``."""

    n: int
    k: int
    stride: int
    dilation: int
    lo: int
    mode: str

    @property
    def padding(self) -> PaddingMode:
        """The padding mode (its entry in :data:`PADDING_MODES`)."""
        return PADDING_MODES[self.mode]

    def tap_counts(self, p: int) -> tuple[int, int]:
        """``(a, b)``: taps ``t < a`` fall below the input, taps ``t >= b`` beyond its end.

        ``a = clip(ceil((lo - stride*p) / dilation), 0, k)`` and
        ``b = clip(floor((n - 1 + lo - stride*p) / dilation) + 1, 0, k)``; ``a <= b``.
        """
        s, d, k = self.stride, self.dilation, self.k
        a = min(max(-((s * p - self.lo) // d), 0), k)
        b = min(max((self.n - 1 + self.lo - s * p) // d + 1, 0), k)
        return a, b

    def intervals(self, out: int) -> list[tuple[int, int, int, int]]:
        """``(start, stop, a, b)``: the positions ``[0, out)`` split where ``(a, b)`` changes.

        ``a(p) >= t`` exactly for ``p < ceil((lo - dilation*(t-1)) / stride)`` and
        ``b(p) >= t`` for ``p < floor((n - 1 + lo - dilation*(t-1)) / stride) + 1``
        (``t = 1..k``): at most ``2k`` cuts, found in O(k log k) whatever the padding.
        """
        s, d, lo, n, k = self.stride, self.dilation, self.lo, self.n, self.k
        if max(abs(lo), n, d * k, s * out) < 2**61:  # vectorised in int64
            t = np.arange(k, dtype=np.int64) * d
            cuts = np.concatenate(((lo - t + s - 1) // s, (n - 1 + lo - t) // s + 1, [0, out]))
            edges = np.unique(cuts[(cuts >= 0) & (cuts <= out)])
            p = edges[:-1]
            a = np.clip(-((s * p - lo) // d), 0, k)
            b = np.clip((n - 1 + lo - s * p) // d + 1, 0, k)
            return list(zip(p.tolist(), edges[1:].tolist(), a.tolist(), b.tolist(),
                            strict=True))
        cut_set = {0, out}  # Python ints: paddings beyond int64
        for tt in range(k):
            for c in (-((d * tt - lo) // s), (n - 1 + lo - d * tt) // s + 1):
                if 0 < c < out:
                    cut_set.add(c)
        bounds = sorted(cut_set)
        return [(p0, p1, *self.tap_counts(p0)) for p0, p1 in zip(bounds[:-1], bounds[1:],
                                                                  strict=True)]

    def parts(self, p: int) -> list[tuple[int, int, int, int]]:
        """Dilation 1 (or every tap clamped), a folding mode: what ``p`` reads, in parts.

        ``(t0, t1, i0, di)``: taps ``t0..t1-1`` read input index ``i0 + di*(t - t0)``, with
        ``di = 1`` (inside, or wrapped), ``-1`` (mirrored) or ``0`` (clamped to an edge).
        The taps below the input come first, then those inside, then those beyond it; each
        index is read at most once per part. A side's part starts where its first tap's
        padded position ``u`` reads (``side.index(u, n)``) and moves by ``side.sign``.
        """
        n, k, mode = self.n, self.k, self.padding
        u0 = self.stride * p - self.lo
        a, b = self.tap_counts(p)
        out = []
        if a > 0:
            assert mode.below is not None  # a folding mode
            out.append((0, a, mode.below.index(u0, n), mode.below.sign))
        if b > a:
            out.append((a, b, u0 + a, 1))
        if b < k:
            assert mode.beyond is not None
            out.append((b, k, mode.beyond.index(u0 + b, n), mode.beyond.sign))
        return out

    @staticmethod
    def spans(parts: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
        """The indices ``parts`` read, as sorted disjoint ranges ``[lo, hi]``."""
        ranges = sorted((min(i0, i0 + di * (t1 - t0 - 1)), max(i0, i0 + di * (t1 - t0 - 1)))
                        for t0, t1, i0, di in parts)
        merged = [list(ranges[0])]
        for lo, hi in ranges[1:]:
            if lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [(lo, hi) for lo, hi in merged]

    def table(self, first: int, count: int) -> np.ndarray:
        """Input index (-1: dropped) that positions ``first .. first+count-1`` read per tap.

        Shape ``(count, k)``; the large offset ``stride*first - lo`` is taken in Python ints.
        """
        u0 = self.stride * first - self.lo
        u = (np.arange(count, dtype=np.int64)[:, None] * self.stride
             + np.arange(self.k, dtype=np.int64)[None, :] * self.dilation + u0)
        return self.padding(u, self.n)


@dataclasses.dataclass(eq=False, slots=True)
class AxisRun:
    """Consecutive output positions ``[start, stop)`` of one axis that share a tap pattern.

    Every position ``p`` of the run reads the ``m`` distinct input indices
    ``base(p) + offsets`` (ascending), ``base(p) = base0 + step*(p - start)``. Input index
    ``offsets[r]`` receives the sum of the kernel taps ``t`` with ``slots[t] == r``.

    ``taps=(a, b)`` marks the common case where taps ``a..b-1`` read one index each,
    ``dilation`` apart (``offsets = dilation*arange(m)``), and the other taps are dropped;
    otherwise the pattern is recomputed from ``axis`` at position ``start``: from its parts
    (``parts=True``: contiguous, mirrored or clamped stretches of taps, O(1) to describe) or
    from a table of its taps.
    """

    start: int
    stop: int
    m: int
    base0: int = 0
    step: int = 0
    taps: tuple[int, int] | None = None
    axis: AxisMap | None = None
    #: The pattern is ``axis.parts(start)`` (dilation 1 under a folding mode).
    parts: bool = False
    #: For a ``parts`` run of one position: ``(parts, spans)``, kept from planning.
    layout: tuple[Any, ...] | None = None
    #: Number of output positions in the run (``stop - start``).
    size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.size = self.stop - self.start

    def part_layout(self) -> tuple[Any, ...]:
        """``(parts, spans)`` of the run's first position (see :meth:`AxisMap.parts`)."""
        if self.layout is not None:
            return self.layout
        assert self.axis is not None
        parts = self.axis.parts(self.start)
        return parts, AxisMap.spans(parts)

    def base(self, positions: np.ndarray) -> np.ndarray:
        """Smallest input index read at ``positions`` (int64, relative to ``start``)."""
        return self.base0 + self.step * np.asarray(positions, dtype=np.int64)

    def pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, slots)``: int64 offsets (length ``m``) and each tap's slot (-1: dropped)."""
        if self.taps is not None:
            a, b = self.taps
            k = self.axis.k if self.axis is not None else b
            d = self.axis.dilation if self.axis is not None else 1
            slots = np.full(k, -1, dtype=np.int64)
            slots[a:b] = np.arange(b - a)
            return d * np.arange(b - a, dtype=np.int64), slots
        assert self.axis is not None  # every other run is made with its axis
        if self.parts:
            parts, spans = self.part_layout()
            cols = np.concatenate([np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in spans])
            slots = np.empty(self.axis.k, dtype=np.int64)
            for t0, t1, i0, di in parts:
                slots[t0:t1] = np.searchsorted(cols, i0 + di * np.arange(t1 - t0))
            return cols - cols[0], slots
        q = self.axis.table(self.start, 1)
        order, entry, _, cols = fold_table(q)
        slots = np.empty(q.shape[1], dtype=np.int64)
        slots[order[0]] = entry[0]
        return cols - cols[0], slots

    def fold(self, weight: Any, axis: int, xp: ModuleType) -> Any:
        """``weight`` with its taps along ``axis`` summed into this run's ``m`` slots."""
        if self.taps is not None:
            a, b = self.taps
            if (a, b) == (0, weight.shape[axis]):
                return weight  # every tap reads its own index, in order
            index = [slice(None)] * weight.ndim
            index[axis] = slice(a, b)
            return weight[tuple(index)]
        _, slots = self.pattern()
        taps = np.flatnonzero(slots >= 0)
        order = taps[np.argsort(slots[taps], kind="stable")]
        sorted_slots = slots[order]
        starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        # One tap per slot first, then the folded extras: small groups layer by layer
        # (each layer a scatter onto distinct slots), large ones (a replicated edge) by a
        # running sum. Either way each slot sums its taps one after another in tap order,
        # as the grouped rows' sparse product does, so every path rounds alike.
        out = xp.take(weight, xp.asarray(order[starts]), axis=axis)
        moved = xp.moveaxis(out, axis, -1)
        src = xp.moveaxis(weight, axis, -1)
        large = sizes > 4
        for r in np.flatnonzero(large).tolist():
            group = order[starts[r]:starts[r] + sizes[r]]
            moved[..., r] = xp.cumsum(src[..., xp.asarray(group)], axis=-1)[..., -1]
        for layer in range(1, int(sizes[~large].max(initial=1))):
            pick = np.flatnonzero(~large & (sizes > layer))
            if len(pick):
                moved[..., xp.asarray(pick)] += src[..., xp.asarray(order[starts[pick] + layer])]
        return xp.moveaxis(moved, -1, axis)


@dataclasses.dataclass(frozen=True, eq=False)
class AxisPlan:
    """The runs of one axis, in order; together they cover every output position."""

    runs: tuple[AxisRun, ...]

    @functools.cached_property
    def total(self) -> int:
        """Entries along this axis summed over output positions (a factor of nnz)."""
        return sum(r.size * r.m for r in self.runs)

    def counts(self, dtype: Any = np.int64) -> np.ndarray:
        """Distinct input indices read by each output position (length ``out``)."""
        return np.repeat(np.array([r.m for r in self.runs], dtype=dtype),
                         [r.size for r in self.runs])

    def prefix(self, run: AxisRun) -> int:
        """Entries along this axis for the positions before ``run``."""
        return self._prefixes[run.start]

    def prefix_at(self, position: int) -> int:
        """Entries along this axis for the positions before ``position`` (0..out)."""
        starts, prefixes = self._table
        i = bisect.bisect_right(starts, position) - 1
        if i < 0:
            return 0
        r = self.runs[i]
        return prefixes[i] + (min(position, r.stop) - r.start) * r.m

    @functools.cached_property
    def _table(self) -> tuple[list[int], list[int]]:
        starts = [r.start for r in self.runs]
        return starts, [self._prefixes[s] for s in starts]

    @functools.cached_property
    def _prefixes(self) -> dict[int, int]:
        out, total = {}, 0
        for r in self.runs:
            out[r.start] = total
            total += r.size * r.m
        return out


#: Entries of a border table tabulated at once (bounds the planning workspace).
TABLE_ENTRIES = 1 << 16


def fold_table(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct indices and tap slots of tabulated positions ``q`` (``(P, k)``, none dropped).

    Returns ``(order, entry, m, cols)``: ``order[p]`` sorts the taps of row ``p`` by input
    index (stably, so folded taps keep their order), ``entry[p, j]`` is the entry of the
    concatenated rows that tap ``order[p, j]`` adds to, ``m[p]`` the distinct indices of row
    ``p`` and ``cols`` those indices, row after row, ascending (``sum(m)`` of them).
    """
    order = np.argsort(q, axis=1, kind="stable")
    qs = np.take_along_axis(q, order, axis=1)
    new = np.ones(q.shape, dtype=bool)
    new[:, 1:] = qs[:, 1:] != qs[:, :-1]
    m = new.sum(axis=1)
    entry = np.cumsum(new, axis=1) - 1 + (np.cumsum(m) - m)[:, None]
    return order, entry, m, qs[new]


def _tabulated_runs(axis: AxisMap, first: int, stop: int) -> list[AxisRun]:
    """Runs of positions ``[first, stop)`` under a folding mode, tabulated in chunks.

    A run continues while the relative pattern is the same and the first index moves by
    the same step. Each chunk is compared and counted in vectorised form; only the run
    boundaries are walked in Python.
    """
    runs: list[AxisRun] = []
    chunk = max(2, TABLE_ENTRIES // axis.k)
    last_rel: np.ndarray | None = None
    last_base = base0 = m0 = 0
    start: int | None = None
    step: int | None = None
    for c0 in range(first, stop, chunk):
        q = axis.table(c0, min(chunk, stop - c0))
        base = q.min(axis=1)
        rel = q - base[:, None]
        same = np.empty(len(q), dtype=bool)
        same[1:] = (rel[1:] == rel[:-1]).all(axis=1)
        same[0] = last_rel is not None and bool(np.array_equal(rel[0], last_rel))
        m = fold_table(q)[2]
        for i, (is_same, b, mi) in enumerate(zip(same.tolist(), base.tolist(), m.tolist(),
                                                 strict=True)):
            p = c0 + i
            if is_same and (step is None or b - last_base == step):
                step = b - last_base
            else:
                if start is not None:
                    runs.append(AxisRun(start, p, m0, base0, step or 0, axis=axis))
                start, base0, m0, step = p, b, mi, None
            last_base = b
        last_rel = rel[-1].copy()
    if start is not None:
        runs.append(AxisRun(start, stop, m0, base0, step or 0, axis=axis))
    return runs


@functools.lru_cache(maxsize=16)
def axis_plan(axis: AxisMap, out: int) -> AxisPlan:
    """The runs of an axis with ``out`` output positions (see the module docstring)."""
    s, d, lo, n, k = axis.stride, axis.dilation, axis.lo, axis.n, axis.k
    mode = axis.padding
    runs: list[AxisRun] = []
    pending: list[int] = []  # [first, stop) of consecutive intervals to tabulate

    def flush() -> None:
        if pending:
            runs.extend(_tabulated_runs(axis, pending[0], pending[1]))
            pending.clear()

    for p0, p1, a, b in axis.intervals(out):
        step = s if p1 - p0 > 1 else 0
        # the sides a position's taps outside the input fall on (below first, then beyond)
        sides = [side for side, used in ((mode.below, a > 0), (mode.beyond, b < k))
                 if used and side is not None]
        if not mode.folds or (a, b) == (0, k):
            flush()
            base0 = s * p0 + d * a - lo if b > a else 0
            runs.append(AxisRun(p0, p1, b - a, base0, step if b > a else 0, taps=(a, b),
                                axis=axis))
        elif a == b and all(side.sign == 0 for side in sides):
            flush()  # far padding, every tap clamped onto an edge: the same parts throughout
            parts = axis.parts(p0)
            spans = AxisMap.spans(parts)
            runs.append(AxisRun(p0, p1, sum(hi - lo + 1 for lo, hi in spans), spans[0][0], 0,
                                axis=axis, parts=True, layout=(parts, spans)))
        elif a == b and len(sides) == 1 and sides[0].sign == 1:
            flush()  # far padding on one side, every tap wrapped: in order
            runs.append(AxisRun(p0, p1, k, sides[0].index(s * p0 - lo, n), step, taps=(0, k),
                                axis=axis))
        elif a == b and len(sides) == 1 and sides[0].sign == -1:
            flush()  # far padding on one side, every tap mirrored: in reverse order
            last = s * p0 - lo + d * (k - 1)  # the last tap's padded position
            runs.append(AxisRun(p0, p1, k, sides[0].index(last, n), -step, axis=axis,
                                parts=d == 1))
        elif d == 1:  # border positions reading the edge and the inside: O(1) each
            flush()
            for p in range(p0, p1):
                parts = axis.parts(p)
                spans = AxisMap.spans(parts)
                runs.append(AxisRun(p, p + 1, sum(hi - lo + 1 for lo, hi in spans),
                                    spans[0][0], axis=axis, parts=True,
                                    layout=(parts, spans)))
        elif pending:
            pending[1] = p1
        else:
            pending.extend((p0, p1))
    flush()
    return AxisPlan(tuple(runs))
