"""The second generator: separable maps ``I_C (x) A_1 (x) ... (x) A_d`` as one canonical CSR.

Why it exists
-------------
:func:`convmat.conv_matrix` writes every matrix whose rows are one kernel slid over the
input: the same taps at every output position, shifted by the stride. Several linear layers
around convolutions are not of that form, yet act on each spatial axis independently and on
every channel alike:

* adaptive average pooling: windows whose start and length vary with the output position;
* interpolation (``F.interpolate``): per-position source indices and weights (nearest,
  linear), generally at a non-integer scale;
* selections: crops, and gathers such as those above (one entry per row).

Such a map is the Kronecker product ``I_C (x) A_1 (x) ... (x) A_d`` of the channel identity
and one small 1-D matrix per spatial axis (``A_d`` maps axis ``d`` of the input to axis ``d``
of the output). Its rows and columns are raveled in C order, ``(c, i_1, ..., i_d)``, as
everywhere in convmat, and its entries are products of one entry per axis. The exact number
of entries, ``C * prod(nnz(A_d))``, is known from the factors, so the memory guard refuses an
oversized product before anything is allocated; the product is then written directly, row
block by row block, with sorted columns (canonical CSR), never through COO or a sort.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .algebra import OPERATOR_DTYPES, MatrixOperator
from .backend import array_namespace, csr_container, memory_limit
from .csr import check_bytes, csr_bytes, is_sparse

__all__ = ["KRON_BLOCK", "kron_bytes", "kron_canonical", "kron_matrix", "kron_operator",
           "operator_dtype"]

#: Entries of the product written per block (bounds the builder's temporaries).
KRON_BLOCK = 1 << 18
#: int64 temporaries per entry of a block (row, position, columns, per-axis positions).
_BLOCK_ARRAYS = 8


def _check_factors(factors: Any, dtype: Any) -> tuple[list[Any], np.dtype]:
    """Validate the factors (no copy yet); return them and the product's dtype."""
    if not isinstance(factors, Sequence) or isinstance(factors, str):
        raise TypeError(f"factors must be a sequence of 2-D matrices, got "
                        f"{type(factors).__name__}")
    if len(factors) == 0:
        raise ValueError("factors=[] is empty; give one 2-D matrix per spatial axis")
    checked = []
    for d, f in enumerate(factors):
        if array_namespace(f) is not np:
            raise TypeError(f"factors[{d}] is a CuPy array; build on the CPU and move the "
                            "operator with .to_gpu()")
        if not is_sparse(f):
            f = np.asarray(f)
            if f.dtype.kind not in "biufc":
                raise TypeError(f"factors[{d}] must be numeric, got dtype {f.dtype}")
        if len(f.shape) != 2:
            raise ValueError(f"factors[{d}] must be 2-D, got shape {tuple(f.shape)}")
        checked.append(f)
    if dtype is None:
        found = np.result_type(*[f.dtype for f in checked])
        dtype = np.dtype(np.float64) if found.kind in "biu" else found
    out = operator_dtype(dtype)
    for d, f in enumerate(checked):
        if np.dtype(f.dtype).kind == "c" and out.kind != "c":
            raise TypeError(f"factors[{d}] is complex ({f.dtype}) but dtype={out.name} is "
                            "real; pass a complex dtype")
    return checked, out


def operator_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype an operator's matrix may have, else ``TypeError``.

    Examples
    --------
    >>> operator_dtype("complex64")
    dtype('complex64')
    """
    try:
        out = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype={dtype!r} is not a dtype; use one of "
                        f"{', '.join(OPERATOR_DTYPES)}") from exc
    if out.name not in OPERATOR_DTYPES:
        raise TypeError(f"dtype={out.name} is not supported; use one of "
                        f"{', '.join(OPERATOR_DTYPES)}")
    return out


def _as_factor(f: Any, dtype: np.dtype) -> Any:
    """A canonical CSR copy of one factor (sorted columns, duplicates summed)."""
    import scipy.sparse as sp

    m = sp.csr_array(f, dtype=dtype, copy=True)
    m.sum_duplicates()
    return m


def _index_dtype(rows: int, cols: int, nnz: int) -> np.dtype:
    """int32 when ``max(rows, cols, nnz) < 2**31``, else int64 (as :func:`csr_bytes`)."""
    return np.dtype(np.int32 if max(rows, cols, nnz) < 2**31 else np.int64)


def kron_bytes(shapes: Sequence[tuple[int, int]], nnzs: Sequence[int], channels: int,
               dtype: Any) -> int:
    """Peak bytes of :func:`kron_matrix`: the finished CSR, the factors and the workspace.

    The workspace is one block of :data:`KRON_BLOCK` entries (row, position, column and
    per-axis int64 tables) and the row pointers of one channel.

    Examples
    --------
    >>> kron_bytes([(2, 3)], [4], 1, "float64") > 0
    True
    """
    rows = channels * math.prod(s[0] for s in shapes)
    cols = channels * math.prod(s[1] for s in shapes)
    nnz = channels * math.prod(nnzs)
    item = np.dtype(dtype).itemsize
    factors = sum(csr_bytes(r, c, z, dtype) for (r, c), z in zip(shapes, nnzs, strict=True))
    per_channel_rows = rows // channels if channels else 0
    block = min(KRON_BLOCK, max(nnz // max(channels, 1), 1))
    workspace = (block * (_BLOCK_ARRAYS + len(shapes)) * 8 + block * item
                 + 2 * (per_channel_rows + 1) * 8)
    return csr_bytes(rows, cols, nnz, dtype) + factors + workspace


def kron_matrix(factors: Sequence[Any], channels: int = 1, *, dtype: Any = None,
                max_bytes: int | None = None) -> Any:
    """Canonical CSR of ``I_channels (x) factors[0] (x) ... (x) factors[-1]``.

    Parameters
    ----------
    factors : sequence of sparse matrices or 2-D arrays
        One matrix per spatial axis, ``A_d`` of shape ``(out_d, in_d)`` (SciPy sparse or
        dense, on the CPU). Explicitly stored zeros are kept (the pattern is the factors').
    channels : int
        ``C >= 1``: the identity on channels in front of the product.
    dtype : dtype, optional
        The product's dtype (float32, float64, complex64 or complex128); default the
        factors' common dtype (float64 for integer factors).
    max_bytes : int, optional
        Refuse (:class:`~convmat.ConvMatrixTooLarge`) when the product would need more than
        this many bytes at its peak (default: half of the available memory).

    Returns
    -------
    scipy.sparse.csr_array
        Shape ``(C * prod(out_d), C * prod(in_d))``, rows and columns raveled in C order
        ``(c, i_1, ..., i_d)``, sorted columns without duplicates, ``C * prod(nnz(A_d))``
        entries; int32 indices when every size is below ``2**31``, else int64.

    Raises
    ------
    TypeError
        ``factors`` not a sequence of numeric 2-D matrices (or on the GPU), ``channels`` not
        an int, an unsupported ``dtype``, or complex factors for a real ``dtype``.
    ValueError
        No factor, a factor that is not 2-D, or ``channels < 1``.
    ConvMatrixTooLarge
        The product needs more than ``max_bytes`` (checked before anything is allocated).

    Notes
    -----
    Row ``(c, i_1, ..., i_d)`` holds the entries ``prod_d A_d[i_d, j_d]`` at columns
    ``(c, j_1, ..., j_d)`` for every choice of a stored entry ``j_d`` in row ``i_d`` of each
    ``A_d``, the last axis varying fastest, so its columns are ascending.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    >>> K = kron_matrix([A, np.eye(2)], channels=1)
    >>> K.shape, K.nnz
    ((4, 6), 8)
    >>> bool(np.array_equal(K.toarray(), np.kron(A, np.eye(2))))
    True
    """
    checked, out_dtype = _check_factors(factors, dtype)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):
        raise TypeError(f"channels must be an int, got {channels!r} "
                        f"({type(channels).__name__})")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got channels={channels}")
    memory_limit(max_bytes)  # validates max_bytes
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in checked]
    # nnz of a sparse factor may count duplicates: an upper bound, exact once summed.
    bound = [int(f.nnz) if is_sparse(f) else int(np.count_nonzero(f)) for f in checked]
    check_bytes(kron_bytes(shapes, bound, int(channels), out_dtype), max_bytes, np,
                f"the Kronecker product of shape "
                f"({int(channels) * math.prod(s[0] for s in shapes):,}, "
                f"{int(channels) * math.prod(s[1] for s in shapes):,}) with at most "
                f"{int(channels) * math.prod(bound):,} entries")
    return kron_canonical([_as_factor(f, out_dtype) for f in checked], int(channels),
                          out_dtype)


def kron_canonical(factors: Sequence[Any], channels: int, dtype: np.dtype) -> Any:
    """The product of canonical CSR factors of ``dtype`` (trusted: no validation, no guard).

    The memory guard is the caller's (:func:`kron_bytes`); the finished arrays and one block
    of temporaries are all that is allocated.
    """
    out_sizes = [int(f.shape[0]) for f in factors]
    in_sizes = [int(f.shape[1]) for f in factors]
    counts = [np.diff(f.indptr).astype(np.int64) for f in factors]
    rows0, cols0 = math.prod(out_sizes), math.prod(in_sizes)
    nnz0 = math.prod(int(f.nnz) for f in factors)
    rows, cols, nnz = channels * rows0, channels * cols0, channels * nnz0
    idx = _index_dtype(rows, cols, nnz)

    # Row pointers of one channel: outer product of the per-axis row lengths, cumulated.
    lengths = counts[0]
    for c in counts[1:]:
        lengths = np.multiply.outer(lengths, c).ravel()
    ptr0 = np.zeros(rows0 + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr0[1:])
    del lengths

    data = np.empty(nnz, dtype=dtype)
    indices = np.empty(nnz, dtype=idx)
    indptr = np.empty(rows + 1, dtype=idx)
    col_strides = [math.prod(in_sizes[d + 1:]) for d in range(len(factors))]
    r0 = 0
    while r0 < rows0:  # channel 0, block by block of rows
        r1 = int(np.searchsorted(ptr0, ptr0[r0] + KRON_BLOCK, side="right")) - 1
        r1 = min(max(r1, r0 + 1), rows0, r0 + KRON_BLOCK)
        e0, e1 = int(ptr0[r0]), int(ptr0[r1])
        if e1 > e0:
            row = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(ptr0[r0:r1 + 1]))
            q = np.arange(e0, e1, dtype=np.int64) - ptr0[row]
            val = np.ones(e1 - e0, dtype=dtype)
            col = np.zeros(e1 - e0, dtype=np.int64)
            for d in range(len(factors) - 1, -1, -1):  # last axis varies fastest
                f = factors[d]
                i_d = row % out_sizes[d]
                row //= out_sizes[d]
                length = counts[d][i_d]
                pos = f.indptr[i_d].astype(np.int64) + q % length
                q //= length
                val *= f.data[pos]
                col += f.indices[pos].astype(np.int64) * col_strides[d]
            data[e0:e1] = val
            indices[e0:e1] = col
        r0 = r1
    indptr[:rows0 + 1] = ptr0
    if channels > 1:  # the other channels: channel 0 shifted (ufunc buffers, no temporaries)
        shift = np.arange(1, channels, dtype=np.int64)[:, None]
        data.reshape(channels, nnz0)[1:] = data[:nnz0]
        np.add(indices[:nnz0], shift * cols0, out=indices.reshape(channels, nnz0)[1:],
               casting="unsafe")
        np.add(ptr0[1:], shift * nnz0, out=indptr[rows0 + 1:].reshape(channels - 1, rows0),
               casting="unsafe")
    m = csr_container(np)((data, indices, indptr), shape=(rows, cols), copy=False)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m


def kron_operator(factors: Sequence[Any], channels: int = 1, *, dtype: Any = None,
                  offset: Any = None, name: str = "kron",
                  max_bytes: int | None = None) -> MatrixOperator:
    """:func:`kron_matrix` as an operator from ``(C, *in)`` to ``(C, *out)`` arrays.

    Parameters
    ----------
    factors, channels, dtype, max_bytes
        As in :func:`kron_matrix`.
    offset : array, optional
        An affine offset shaped like the output (``op(x) = K x + offset``).
    name : str
        What the operator is, for its ``repr``.

    Returns
    -------
    MatrixOperator
        ``input_shape = (C, *[A.shape[1] for A in factors])``, ``output_shape = (C, *[A.shape[0]
        for A in factors])``.

    Raises
    ------
    TypeError, ValueError, ConvMatrixTooLarge
        As :func:`kron_matrix`; also an offset that does not fit the output.

    Examples
    --------
    Average pairs along the one axis of a two-channel signal:

    >>> import numpy as np
    >>> A = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    >>> op = kron_operator([A], channels=2, name="pairs")
    >>> op
    <pairs: (2, 4) -> (2, 2); shape=(4, 8), dtype=float64>
    >>> op @ np.arange(8.0).reshape(2, 4)
    array([[0.5, 2.5],
           [4.5, 6.5]])
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} ({type(name).__name__})")
    m = kron_matrix(factors, channels, dtype=dtype, max_bytes=max_bytes)
    ins = (int(channels), *(int(f.shape[1]) for f in factors))
    outs = (int(channels), *(int(f.shape[0]) for f in factors))
    return MatrixOperator(m, ins, outs, offset=offset, name=name)
