"""The memory guard: refuse a build before it allocates more than allowed."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import ConvMatrixTooLarge, check_index_dtype, format_bytes, memory_limit

__all__ = ["check_memory"]


def check_memory(geometry: Any, max_bytes: int | None, *, what: str = "W",
                 xp: Any = np, peak: int | None = None) -> None:
    """Refuse (``ConvMatrixTooLarge``) a build whose peak would exceed ``max_bytes``.

    ``peak`` is the bytes the operation allocates (default ``geometry.peak_bytes``, a
    whole build); ``max_bytes=None`` allows half of the available memory, see
    :func:`memory_limit`. On CuPy, int64 indices also need CuPy >= 14.1 (``ValueError``).
    """
    check_index_dtype(geometry.index_dtype, xp, what=what)
    rows, cols = geometry.shape
    if max(rows, cols, geometry.nnz) >= 2**63:
        raise ConvMatrixTooLarge(
            f"{what} of shape {geometry.shape} with nnz={geometry.nnz:,} needs "
            f"{geometry.peak_bytes:,} bytes at peak ({format_bytes(geometry.peak_bytes)}) and "
            "indices beyond int64 (2**63 or more rows, columns or entries)")
    limit, source = memory_limit(max_bytes, xp)
    if limit is None:
        return
    peak = geometry.peak_bytes if peak is None else peak
    if peak > limit:
        raise ConvMatrixTooLarge(
            f"{what} of shape {geometry.shape} with nnz={geometry.nnz:,} needs "
            f"{peak:,} bytes at peak ({format_bytes(peak)}; the CSR alone is "
            f"{geometry.nbytes:,} bytes), over the limit of {limit:,} bytes ({source})"
        )
