"""The per-iteration machinery of the solvers: products, BLAS threads, a progress bar.

:class:`RowBlocks` applies a CSR matrix with its rows split over convmat's thread pool (the
products ``W @ x`` and ``W^H @ u`` are most of an iteration's cost), :func:`one_blas_thread`
holds BLAS to one thread around the vector work (multi-threaded BLAS on short vectors costs
more than it saves), :func:`blas_threads` gives the threads back to the GEMMs of structured
products inside a solve, and :func:`progress_bar` makes the optional tqdm bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .indices import thread_pool

__all__ = ["PARALLEL_MIN_NNZ", "RowBlocks", "blas_threads", "one_blas_thread", "progress_bar"]

#: Below this many stored entries a product runs on the calling thread only.
PARALLEL_MIN_NNZ = 1 << 20


class RowBlocks:
    """``A @ x`` with the rows of a CSR matrix split over threads.

    Each block is a CSR view of a slice of the rows (``data`` and ``indices`` are shared;
    only ``indptr`` is shifted), cut so the blocks hold equal numbers of entries. SciPy's
    sparse product releases the GIL, so the blocks run concurrently.
    """

    def __init__(self, a: Any, parts: int) -> None:
        import scipy.sparse as sp

        self.a = a
        self.shape = a.shape
        self.blocks = []
        if parts > 1 and a.nnz >= PARALLEL_MIN_NNZ:
            cuts = np.searchsorted(a.indptr, np.linspace(0, a.nnz, parts + 1)[1:-1])
            rows = [0, *sorted({int(c) for c in cuts}), a.shape[0]]
            for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
                s, e = int(a.indptr[r0]), int(a.indptr[r1])
                block = sp.csr_array((a.data[s:e], a.indices[s:e], a.indptr[r0:r1 + 1] - s),
                                     shape=(r1 - r0, a.shape[1]), copy=False)
                self.blocks.append((r0, r1, block))

    def __matmul__(self, x: Any) -> Any:
        """``A @ x`` for a vector ``(n,)`` or a block of columns ``(n, k)``."""
        if not self.blocks:
            return self.a @ x
        out = np.empty((self.shape[0], *x.shape[1:]), dtype=np.result_type(self.a.dtype, x.dtype))

        def part(k: int) -> None:
            r0, r1, block = self.blocks[k]
            out[r0:r1] = block @ x

        self._run(part)
        return out

    def rmatmul(self, y: Any, *, conjugate: bool = False) -> Any:
        """``A^T @ y`` (``A^H @ y`` with ``conjugate``) for ``y`` ``(m,)`` or ``(m, k)``.

        Each block adds ``block^T @ y[rows]``: the blocks' partial sums (one output per
        thread) are added at the end. ``A^H y = conj(A^T conj(y))`` conjugates vectors, never
        the matrix.
        """
        complex_ = conjugate and np.result_type(self.a.dtype, y.dtype).kind == "c"
        if complex_:
            y = np.conjugate(y)
        if not self.blocks:
            out = self.a.T @ y
        else:
            partial: list[Any] = [None] * len(self.blocks)

            def part(k: int) -> None:
                r0, r1, block = self.blocks[k]
                partial[k] = block.T @ y[r0:r1]

            self._run(part)
            out = partial[0]
            for p in partial[1:]:
                out += p
        return np.conjugate(out, out=out) if complex_ else out

    def _run(self, part: Any) -> None:
        """``part(k)`` for every block, block 0 on the calling thread."""
        pending = [thread_pool().submit(part, k) for k in range(1, len(self.blocks))]
        part(0)
        for f in pending:
            f.result()


_BLAS: list[Any] = []


def _blas_controller() -> Any:
    """The ``threadpoolctl`` controller (None without it), made once per process.

    Making it scans the loaded libraries (~2 ms).
    """
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController())
    return _BLAS[0]


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Hold BLAS to ``n`` threads (``threadpoolctl``, if installed) inside the block."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=n, user_api="blas"):
        yield


def one_blas_thread() -> contextlib.AbstractContextManager[None]:
    """Hold BLAS to one thread during a solve's vector work (:func:`blas_threads`)."""
    return blas_threads(1)


def progress_bar(progress: bool, total: int | None, desc: str) -> Any:
    """A tqdm bar of ``total`` steps (None unless ``progress``); needs ``tqdm``.

    ``total=None`` gives a counter, for steps whose number is not known ahead.
    """
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm: pip install tqdm (or convmat[solvers])"
        ) from exc
    return tqdm(total=total, desc=desc, unit="it", leave=False)

