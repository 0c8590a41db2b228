"""Sparse arithmetic under the memory guard: products, sums, scalings and stacks of matrices.

The operator algebra (:mod:`convmat.algebra`) forms an explicit matrix only when asked
(``op.matrix``). Each step goes through here: it bounds the bytes the step allocates
*before* SciPy (or CuPy) allocates them, refuses with :class:`ConvMatrixTooLarge` over the
limit (``max_bytes``, default half of the available memory, see
:func:`convmat.backend.memory_limit`), and returns a canonical CSR (sorted indices, no
duplicates).

The bound of a product ``B @ A`` is its multiply count ``sum_k nnz(B[:, k]) * nnz(A[k, :])``,
an upper bound of ``nnz(B @ A)`` found in O(nnz). Where that bound is over the limit the
exact ``nnz`` is counted by blocks of rows (each block's product bounded in memory) before
the whole product is refused or formed, so overlapping windows (whose products repeat
entries) are not refused on a bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .backend import (
    ConvMatrixTooLarge,
    array_namespace,
    csr_container,
    format_bytes,
    memory_limit,
    sparse_module,
)

__all__ = [
    "COUNT_BLOCK",
    "as_csr",
    "canonical",
    "check_bytes",
    "csr_bytes",
    "guarded_product",
    "guarded_scale",
    "guarded_stack",
    "guarded_sum",
    "is_sparse",
]

#: Multiplies per block when the exact nnz of a product is counted block by block.
COUNT_BLOCK = 1 << 22


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a SciPy or CuPy sparse matrix (CuPy is never imported)."""
    import scipy.sparse

    if scipy.sparse.issparse(x):
        return True
    module = type(x).__module__
    return module.startswith("cupyx.scipy.sparse")


def _index_bytes(*sizes: int) -> int:
    return 4 if max(sizes) < 2**31 else 8


def csr_bytes(rows: int, cols: int, nnz: int, dtype: Any) -> int:
    """Bytes of a CSR with ``nnz`` entries: ``data``, ``indices`` and ``indptr``."""
    idx = _index_bytes(rows, cols, nnz)
    return nnz * (np.dtype(dtype).itemsize + idx) + (rows + 1) * idx


def check_bytes(need: int, max_bytes: int | None, xp: ModuleType, what: str) -> None:
    """Refuse (``ConvMatrixTooLarge``) an allocation of ``need`` bytes over the limit."""
    limit, source = memory_limit(max_bytes, xp)
    if limit is not None and need > limit:
        raise ConvMatrixTooLarge(
            f"{what} needs {need:,} bytes at peak ({format_bytes(need)}), over the limit of "
            f"{limit:,} bytes ({source})")


def canonical(m: Any) -> Any:
    """``m`` as a CSR array with sorted indices and no duplicates (in place when CSR)."""
    xp = array_namespace(m)
    if m.format != "csr":
        m = m.tocsr()
    if not isinstance(m, csr_container(xp)):
        m = csr_container(xp)(m)
    m.sum_duplicates()  # sorts the indices too
    return m


def as_csr(m: Any, max_bytes: int | None = None, what: str = "the matrix") -> Any:
    """A canonical CSR of ``m`` (itself when it already is one); a conversion is guarded."""
    if m.format == "csr" and m.has_canonical_format:
        return m
    xp = array_namespace(m)
    rows, cols = m.shape
    if m.format != "csr":
        check_bytes(csr_bytes(rows, cols, m.nnz, m.dtype) + (max(rows, cols) + 1) * 8,
                    max_bytes, xp, f"converting {what} to CSR")
    return canonical(m.copy() if m.format == "csr" else m)


def _row_counts(m: Any, xp: ModuleType) -> Any:
    if m.format == "csr":
        return xp.diff(m.indptr)
    if m.format == "csc":
        return xp.bincount(m.indices, minlength=m.shape[0])
    return _row_counts(m.tocsr(), xp)


def _col_counts(m: Any, xp: ModuleType) -> Any:
    if m.format == "csc":
        return xp.diff(m.indptr)
    if m.format == "csr":
        return xp.bincount(m.indices, minlength=m.shape[1])
    return _col_counts(m.tocsr(), xp)


def guarded_product(b: Any, a: Any, max_bytes: int | None = None,
                    what: str = "the product") -> Any:
    """``b @ a`` as a canonical CSR, refused before allocating when over the limit.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> a = sp.csr_array([[1., 2.], [0., 3.]])
    >>> guarded_product(a, a).toarray()
    array([[1., 8.],
           [0., 9.]])
    >>> guarded_product(a, a, max_bytes=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    convmat.backend.ConvMatrixTooLarge: the product of shape (2, 2) with 3 entries needs ...
    """
    xp = array_namespace(a)
    rows, cols = b.shape[0], a.shape[1]
    dtype = np.result_type(a.dtype, b.dtype)
    flops = int((_col_counts(b, xp).astype(xp.int64) * _row_counts(a, xp)).sum())
    # SciPy's csr_matmat: the result, a row's column table and accumulator.
    work = cols * (8 + dtype.itemsize) + 2 * (rows + 1) * 8
    limit, _ = memory_limit(max_bytes, xp)
    bound = min(flops, rows * cols)
    need = csr_bytes(rows, cols, bound, dtype) + work
    if limit is not None and need > limit:
        nnz = _exact_product_nnz(b, a, xp)
        need = csr_bytes(rows, cols, nnz, dtype) + work
        check_bytes(need, max_bytes, xp,
                    f"{what} of shape {(rows, cols)} with {nnz:,} entries")
    return canonical(b @ a)


def _exact_product_nnz(b: Any, a: Any, xp: ModuleType) -> int:
    """``nnz(b @ a)`` counted by blocks of rows of ``b`` of at most ``COUNT_BLOCK`` multiplies."""
    b = b.tocsr() if b.format != "csr" else b
    lengths = _row_counts(a, xp).astype(xp.int64)
    flops = xp.zeros(b.nnz + 1, dtype=xp.int64)
    xp.cumsum(lengths[b.indices], out=flops[1:])
    per_row = flops[b.indptr]  # cumulative multiplies at each row start
    total, r0, rows = 0, 0, b.shape[0]
    while r0 < rows:
        r1 = int(xp.searchsorted(per_row, per_row[r0] + COUNT_BLOCK, side="right")) - 1
        r1 = min(max(r1, r0 + 1), rows)
        total += int((b[r0:r1] @ a).nnz)
        r0 = r1
    return total


def guarded_sum(terms: Sequence[Any], max_bytes: int | None = None,
                what: str = "the sum") -> Any:
    """``sum(terms)`` of equally shaped sparse matrices, as a canonical CSR."""
    first = terms[0]
    xp = array_namespace(first)
    rows, cols = first.shape
    dtype = np.result_type(*[t.dtype for t in terms])
    bound = min(sum(int(t.nnz) for t in terms), rows * cols)
    check_bytes(2 * csr_bytes(rows, cols, bound, dtype), max_bytes, xp,
                f"{what} of shape {(rows, cols)} with at most {bound:,} entries")
    out = first
    for t in terms[1:]:
        out = out + t
    return canonical(out if out is not first else first.copy())


def guarded_scale(alpha: Any, m: Any, max_bytes: int | None = None,
                  what: str = "the scaled matrix") -> Any:
    """``alpha * m`` as a canonical CSR (a copy)."""
    xp = array_namespace(m)
    rows, cols = m.shape
    dtype = np.result_type(m.dtype, alpha)
    check_bytes(2 * csr_bytes(rows, cols, int(m.nnz), dtype), max_bytes, xp,
                f"{what} of shape {(rows, cols)} with {int(m.nnz):,} entries")
    return canonical(m * alpha)


def guarded_stack(blocks: Sequence[Any], axis: int, max_bytes: int | None = None,
                  what: str = "the stacked matrix") -> Any:
    """Blocks stacked vertically (``axis=0``) or side by side (``axis=1``), as a CSR."""
    xp = array_namespace(blocks[0])
    sparse = sparse_module(xp)
    rows = sum(int(b.shape[0]) for b in blocks) if axis == 0 else int(blocks[0].shape[0])
    cols = int(blocks[0].shape[1]) if axis == 0 else sum(int(b.shape[1]) for b in blocks)
    nnz = sum(int(b.nnz) for b in blocks)
    dtype = np.result_type(*[b.dtype for b in blocks])
    check_bytes(2 * csr_bytes(rows, cols, nnz, dtype), max_bytes, xp,
                f"{what} of shape {(rows, cols)} with {nnz:,} entries")
    stack = sparse.vstack if axis == 0 else sparse.hstack
    return canonical(stack(list(blocks), format="csr"))
