"""Look at convolution matrices: sparsity, values, receptive fields (matplotlib on first use).

A leaf of the package: nothing in convmat imports it, and it imports matplotlib only inside
the plotting functions; GPU operators are copied to the host first. The data behind the
footprint plots is available without matplotlib:
:func:`receptive_field` (a row of ``W`` on the input grid) and :func:`contributions` (a
column of ``W`` on the output grid).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .operator import ConvOperator

__all__ = [
    "block_boundaries",
    "contributions",
    "footprint",
    "heatmap",
    "position_labels",
    "receptive_field",
    "spy",
]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("convmat.viz needs matplotlib: pip install matplotlib "
                          "(or convmat[viz])") from exc
    return plt


def _as_operator(obj: Any) -> ConvOperator:
    """``obj`` on the CPU (a GPU operator is copied to the host to be drawn)."""
    if not isinstance(obj, ConvOperator):
        raise TypeError(f"expected a ConvOperator, got {type(obj).__name__}")
    return obj.to_cpu()


def _channels(shape: tuple[int, ...], spatial_ndim: int,
              last: bool = False) -> tuple[int, tuple[int, ...]]:
    """``(channels, spatial)`` of an operator shape (1 channel for a spatial-only shape)."""
    if len(shape) == spatial_ndim:
        return 1, shape
    return (shape[-1], shape[:-1]) if last else (shape[0], shape[1:])


def block_boundaries(op: ConvOperator) -> dict[str, list[int]]:
    """Row and column offsets where channels and groups of ``op.matrix`` start.

    Returns ``{'row_channels', 'col_channels', 'row_groups', 'col_groups'}``: the first row
    (column) of every output (input) channel after the first, and of every group. Channels
    last, channels interleave (no channel is a block of rows): the lists are empty.

    Examples
    --------
    >>> import numpy as np
    >>> op = ConvOperator(np.ones((4, 1, 3)), (2, 5), groups=2)
    >>> block_boundaries(op)
    {'row_channels': [3, 6, 9], 'col_channels': [5], 'row_groups': [6], 'col_groups': [5]}
    """
    g = op.geometry
    nd = g.ndim
    if g.channels_last:
        return {"row_channels": [], "col_channels": [], "row_groups": [], "col_groups": []}
    c_out, sp_out = _channels(op.output_shape, nd)
    c_in, sp_in = _channels(op.input_shape, nd)
    n_out, n_in = math.prod(sp_out), math.prod(sp_in)
    groups = g.groups
    return {
        "row_channels": [c * n_out for c in range(1, c_out)],
        "col_channels": [c * n_in for c in range(1, c_in)],
        "row_groups": [k * (c_out // groups) * n_out for k in range(1, groups)],
        "col_groups": [k * (c_in // groups) * n_in for k in range(1, groups)],
    }


def position_labels(shape: tuple[int, ...]) -> list[str]:
    """``'(c, i, j)'`` labels of the raveled entries of an array of ``shape``.

    Examples
    --------
    >>> position_labels((2, 2))
    ['(0, 0)', '(0, 1)', '(1, 0)', '(1, 1)']
    """
    return [str(tuple(int(v) for v in idx)) for idx in np.ndindex(*shape)]


def spy(op: ConvOperator, ax: Any = None, *, markersize: float | None = None,
        max_points: int = 200_000, boundaries: bool = True) -> Any:
    """Sparsity plot of ``op.matrix`` with channel (thin) and group (thick) boundaries.

    Rows are labelled by output channel and columns by input channel (tick at the middle
    of each block). Above ``max_points`` entries the pattern is drawn as a density image.
    Returns the matplotlib ``Axes``.
    """
    op = _as_operator(op)
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * min(2.0, max(0.25, op.shape[0] / op.shape[1]))))
    w = op.matrix
    rows, cols = op.shape
    if w.nnz <= max_points:
        coo = w.tocoo()
        size = markersize if markersize is not None else max(0.5, 300 / max(rows, cols))
        ax.plot(coo.col, coo.row, "s", markersize=size, color="#1f4e79", linestyle="none")
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
    else:
        from .thumbnail import pattern_density

        dens = pattern_density(w, (min(rows, 600), min(cols, 600)))
        ax.imshow(np.log1p(dens), cmap="Blues", aspect="auto",
                  extent=(-0.5, cols - 0.5, rows - 0.5, -0.5), interpolation="nearest")
    bounds = block_boundaries(op)
    if boundaries:
        for r in bounds["row_channels"]:
            ax.axhline(r - 0.5, color="#999999", lw=0.6)
        for c in bounds["col_channels"]:
            ax.axvline(c - 0.5, color="#999999", lw=0.6)
        for r in bounds["row_groups"]:
            ax.axhline(r - 0.5, color="#c0392b", lw=1.6)
        for c in bounds["col_groups"]:
            ax.axvline(c - 0.5, color="#c0392b", lw=1.6)
    nd = op.geometry.ndim
    c_out, _ = _channels(op.output_shape, nd)
    c_in, _ = _channels(op.input_shape, nd)
    if op.geometry.channels_last:  # interleaved channels: no block to label
        c_out = c_in = 1
    row_edges = [0, *bounds["row_channels"], rows]
    col_edges = [0, *bounds["col_channels"], cols]
    if c_out > 1 and c_out <= 32:
        ax.set_yticks([(a + b - 1) / 2 for a, b in zip(row_edges[:-1], row_edges[1:],
                                                        strict=True)])
        ax.set_yticklabels([f"out {c}" for c in range(c_out)])
    if c_in > 1 and c_in <= 32:
        ax.set_xticks([(a + b - 1) / 2 for a, b in zip(col_edges[:-1], col_edges[1:],
                                                        strict=True)])
        ax.set_xticklabels([f"in {c}" for c in range(c_in)], rotation=90)
    ax.set_xlabel(f"columns: input {op.input_shape} raveled")
    ax.set_ylabel(f"rows: output {op.output_shape} raveled")
    ax.set_title(f"{op.shape[0]}x{op.shape[1]}, nnz={op.nnz:,}")
    return ax


def heatmap(op: ConvOperator, ax: Any = None, *, annotate: bool = True,
            max_size: int = 64, fmt: str = "{:g}") -> Any:
    """Dense heat map of a small ``op.matrix`` with values printed in the cells.

    Rows and columns are labelled by ``(channel, position)`` (position only for a
    spatial-only shape). Raises ``ValueError`` above ``max_size`` rows or columns.
    """
    op = _as_operator(op)
    rows, cols = op.shape
    if max(rows, cols) > max_size:
        raise ValueError(
            f"matrix of shape {op.shape} is too large for a dense heat map (max_size="
            f"{max_size}); use spy() or pass a larger max_size"
        )
    plt = _pyplot()
    dense = op.matrix.toarray()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.45 * cols + 1.5), max(2.5, 0.45 * rows + 1)))
    values = dense.real if np.iscomplexobj(dense) else dense
    lim = float(np.abs(values).max()) or 1.0
    ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    if annotate:
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, fmt.format(dense[i, j]), ha="center", va="center", fontsize=7,
                        color="#222222" if dense[i, j] != 0 else "#bbbbbb")
    nd = op.geometry.ndim
    ax.set_yticks(range(rows))
    ax.set_yticklabels(position_labels(op.output_shape), fontsize=7)
    ax.set_xticks(range(cols))
    ax.set_xticklabels(position_labels(op.input_shape), fontsize=7, rotation=90)
    ax.set_xlabel("input (channel, position)" if len(op.input_shape) > nd
                  else "input position")
    ax.set_ylabel("output (channel, position)" if len(op.output_shape) > nd
                  else "output position")
    return ax


def _index(shape: tuple[int, ...], index: Any, what: str) -> int:
    idx = tuple(int(v) for v in (index if isinstance(index, tuple | list) else (index,)))
    if len(idx) != len(shape) or any(not 0 <= v < s for v, s in zip(idx, shape, strict=True)):
        raise ValueError(f"{what} index {idx} is not inside the {what} shape {shape}")
    return int(np.ravel_multi_index(idx, shape))


def receptive_field(op: ConvOperator, output_index: Any) -> np.ndarray:
    """The input pixels one output pixel reads, with their weights (a row of ``W``).

    Returns an array shaped like ``op.input_shape``: the weight of each input entry in
    output ``output_index`` (a multi-index into ``op.output_shape``), 0 elsewhere. Taps
    that a padding mode folds onto the same pixel appear summed.

    Examples
    --------
    >>> import numpy as np
    >>> op = ConvOperator(np.array([1.0, 2.0, 3.0]), (5,), padding=1,
    ...                   padding_mode="reflect")
    >>> receptive_field(op, 0)   # taps at -1, 0, 1: -1 reflects onto 1
    array([2., 4., 0., 0., 0.])
    """
    op = _as_operator(op)
    row = _index(op.output_shape, output_index, "output")
    w = op.matrix.tocsr() if op.matrix.format != "csr" else op.matrix
    out = np.zeros(op.shape[1], dtype=op.dtype)
    s, e = w.indptr[row], w.indptr[row + 1]
    out[w.indices[s:e]] = w.data[s:e]
    return out.reshape(op.input_shape)


def contributions(op: ConvOperator, input_index: Any) -> np.ndarray:
    """The output pixels one input pixel contributes to (a column of ``W``).

    What ``W.T`` spreads: an array shaped like ``op.output_shape`` holding the weight with
    which input ``input_index`` enters each output.

    Examples
    --------
    >>> import numpy as np
    >>> op = ConvOperator(np.array([1.0, 2.0, 3.0]), (6,), stride=2)
    >>> contributions(op, 2)   # input 2 is tap 2 of output 0 and tap 0 of output 1
    array([3., 1.])
    """
    op = _as_operator(op)
    col = _index(op.input_shape, input_index, "input")
    return np.asarray(op.matrix[:, [col]].toarray()).reshape(op.output_shape)


def footprint(op: ConvOperator, *, output_index: Any = None, input_index: Any = None,
              fig: Any = None) -> Any:
    """Draw :func:`receptive_field` (or :func:`contributions`) on the input (output) grid.

    One panel per channel, for 1-D and 2-D spatial shapes; the cells read (written) are
    coloured by weight and annotated, the others blank. Give exactly one of
    ``output_index`` and ``input_index``. Returns the matplotlib ``Figure``.
    """
    op = _as_operator(op)
    if (output_index is None) == (input_index is None):
        raise ValueError("give exactly one of output_index and input_index")
    nd = op.geometry.ndim
    if nd > 2:
        raise ValueError(f"footprint draws 1-D and 2-D grids; this operator has {nd} spatial "
                         "axes (use receptive_field / contributions for the values)")
    if output_index is not None:
        values = receptive_field(op, output_index)
        shape, title = op.input_shape, f"output {tuple(np.atleast_1d(output_index))} reads"
    else:
        values = contributions(op, input_index)
        shape, title = op.output_shape, f"input {tuple(np.atleast_1d(input_index))} feeds"
    last = op.geometry.channels_last
    channels, spatial = _channels(shape, nd, last)
    if last and len(shape) > nd:
        values = np.moveaxis(values, -1, 0)
    grid = values.reshape(channels, *([1] * (2 - nd)), *spatial).real
    plt = _pyplot()
    if fig is None:
        h, w = grid.shape[1:]
        fig = plt.figure(figsize=(min(16, 1 + channels * max(2.0, 0.4 * w)),
                                  max(1.6, 0.4 * h + 1)))
    axes = fig.subplots(1, channels, squeeze=False)[0]
    lim = float(np.abs(grid).max()) or 1.0
    for c, ax in enumerate(axes):
        masked = np.ma.masked_equal(grid[c], 0)
        ax.imshow(masked, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        h, w = grid[c].shape
        if h * w <= 400:
            for i in range(h):
                for j in range(w):
                    if grid[c, i, j] != 0:
                        ax.text(j, i, f"{grid[c, i, j]:.3g}", ha="center", va="center",
                                fontsize=7)
        ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
        ax.grid(which="minor", color="#dddddd", lw=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"channel {c}" if channels > 1 else "", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig
