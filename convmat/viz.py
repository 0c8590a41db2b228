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


def _matrix(obj: Any) -> tuple[Any, ConvOperator | None]:
    """``(CSR on the host, the operator or None)`` for an operator or a plain matrix.

    A SciPy or CuPy sparse matrix, or a dense 2-D array, is drawn without a geometry (no
    channel boundaries or position labels).
    """
    import scipy.sparse as sp

    if isinstance(obj, ConvOperator):
        op = obj.to_cpu()
        return sp.csr_array(op.matrix), op
    if hasattr(obj, "get") and hasattr(obj, "tocsr"):  # cupyx.scipy.sparse
        obj = obj.get()
    elif hasattr(obj, "get") and hasattr(obj, "ndim"):  # a CuPy array
        obj = obj.get()
    if sp.issparse(obj) or (isinstance(obj, np.ndarray) and obj.ndim == 2):
        return sp.csr_array(obj), None
    raise TypeError(f"expected a ConvOperator or a 2-D (sparse) matrix, got "
                    f"{type(obj).__name__}")


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


def spy(op: Any, ax: Any = None, *, markersize: float | None = None,
        max_points: int = 200_000, boundaries: bool = True) -> Any:
    """Sparsity plot of ``op.matrix`` with channel (thin) and group (thick) boundaries.

    Rows are labelled by output channel and columns by input channel (tick at the middle
    of each block). Above ``max_points`` entries the pattern is drawn as a density image.
    ``op`` may also be a plain SciPy or CuPy sparse matrix (or a dense 2-D array), drawn
    without channel boundaries. Returns the matplotlib ``Axes``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> ax = spy(sp.eye_array(5, format="csr"))
    >>> ax.get_title()
    '5x5, nnz=5'
    """
    w, op = _matrix(op)
    plt = _pyplot()
    rows, cols = w.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * min(2.0, max(0.25, rows / max(cols, 1)))))
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
    ax.set_title(f"{rows}x{cols}, nnz={w.nnz:,}")
    if op is None:
        ax.set_xlabel("columns")
        ax.set_ylabel("rows")
        return ax
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
    return ax


def heatmap(op: Any, ax: Any = None, *, annotate: bool = True,
            max_size: int = 64, fmt: str = "{:g}") -> Any:
    """Dense heat map of a small ``op.matrix`` with values printed in the cells.

    Rows and columns are labelled by ``(channel, position)`` (position only for a
    spatial-only shape; row and column numbers for a plain matrix). The text is white on
    the darker cells. Raises ``ValueError`` above ``max_size`` rows or columns.

    Examples
    --------
    >>> ax = heatmap(np.array([[0.0, 1.0], [2.0, 3.0]]))
    >>> [t.get_text() for t in ax.texts], [t.get_color() for t in ax.texts][-1]
    (['0', '1', '2', '3'], 'white')
    """
    w, op = _matrix(op)
    rows, cols = w.shape
    if max(rows, cols) > max_size:
        raise ValueError(
            f"matrix of shape {w.shape} is too large for a dense heat map (max_size="
            f"{max_size}); use spy() or pass a larger max_size"
        )
    plt = _pyplot()
    dense = w.toarray()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.45 * cols + 1.5), max(2.5, 0.45 * rows + 1)))
    values = dense.real if np.iscomplexobj(dense) else dense
    lim = float(np.abs(values).max()) or 1.0
    ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    if annotate:
        for i in range(rows):
            for j in range(cols):
                dark = abs(values[i, j]) > 0.55 * lim  # the RdBu ends: white text reads
                color = "white" if dark else ("#222222" if dense[i, j] != 0 else "#bbbbbb")
                ax.text(j, i, fmt.format(dense[i, j]), ha="center", va="center", fontsize=7,
                        color=color)
    if op is None:
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        return ax
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
        shape, title = op.input_shape, f"output {_plain(output_index)} reads"
    else:
        values = contributions(op, input_index)
        shape, title = op.output_shape, f"input {_plain(input_index)} feeds"
    last = op.geometry.channels_last
    channels, spatial = _channels(shape, nd, last)
    if last and len(shape) > nd:
        values = np.moveaxis(values, -1, 0)
    grid = values.reshape(channels, *([1] * (2 - nd)), *spatial).real
    # the view: the cells touched, with a margin of 2, on large grids (else all of it)
    touched = np.argwhere(np.any(grid != 0, axis=0))
    h, w = grid.shape[1:]
    (r0, c0), (r1, c1) = (0, 0), (h - 1, w - 1)
    if touched.size and max(h, w) > 16:
        r0, c0 = np.maximum(touched.min(axis=0) - 2, 0)
        r1, c1 = np.minimum(touched.max(axis=0) + 2, (h - 1, w - 1))
    vh, vw = int(r1 - r0 + 1), int(c1 - c0 + 1)
    plt = _pyplot()
    if fig is None:
        cell = min(0.45, 4.0 / max(vh, vw))  # inches per cell, panels at most 4 in
        fig = plt.figure(figsize=(min(16.0, 0.8 + channels * (cell * vw + 0.6)),
                                  cell * vh + 1.2), layout="constrained")
    axes = fig.subplots(1, channels, squeeze=False)[0]
    lim = float(np.abs(grid).max()) or 1.0
    from matplotlib.ticker import MaxNLocator

    for c, ax in enumerate(axes):
        masked = np.ma.masked_equal(grid[c], 0)
        ax.imshow(masked, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        if vh * vw <= 400:
            for i in range(int(r0), int(r1) + 1):
                for j in range(int(c0), int(c1) + 1):
                    if grid[c, i, j] != 0:
                        dark = abs(grid[c, i, j]) > 0.55 * lim
                        ax.text(j, i, f"{grid[c, i, j]:.3g}", ha="center", va="center",
                                fontsize=7, color="white" if dark else "#222222")
        ax.set_xlim(c0 - 0.5, c1 + 0.5)
        ax.set_ylim(r1 + 0.5, r0 - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if nd == 1:
            ax.set_yticks([])
        ax.set_xticks(np.arange(c0 - 0.5, c1 + 1, 1), minor=True)
        ax.set_yticks(np.arange(r0 - 0.5, r1 + 1, 1), minor=True)
        ax.grid(which="minor", color="#dddddd", lw=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"channel {c}" if channels > 1 else "", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def _plain(index: Any) -> tuple[int, ...]:
    """An index as a tuple of Python ints (titles read ``(0, 1)``, not ``np.int64(0)``)."""
    return tuple(int(v) for v in np.atleast_1d(index))
