"""The backend follows the data: NumPy arrays run on SciPy, CuPy arrays on ``cupyx``.

CuPy is detected through ``sys.modules`` and never imported here unless asked to move
data to the GPU (:func:`to_gpu`): if nobody imported CuPy, no array can be a CuPy array.

Moving between devices is explicit. :func:`to_gpu` and :func:`to_cpu` take arrays,
SciPy / CuPy sparse matrices and :class:`~convmat.ConvOperator` objects; index arrays keep
their dtype, and a CSC view (``W.T``) stays a CSC view.
"""

from __future__ import annotations

import numbers
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MEMORY_SHARE",
    "ConvMatrixTooLarge",
    "available_memory",
    "format_bytes",
    "memory_limit",
    "refuse_masked",
    "CUPY_INT64_INDICES",
    "array_namespace",
    "check_index_dtype",
    "csr_container",
    "device_memory_budget",
    "is_cupy_array",
    "is_cupy_sparse",
    "linear_operator_class",
    "same_backend",
    "sparse_module",
    "to_cpu",
    "to_gpu",
]

#: First CuPy release whose sparse matrices keep int64 indices (older ones cast to int32
#: without checking).
CUPY_INT64_INDICES = (14, 1)


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_cupy_sparse(x: Any) -> bool:
    """True for a ``cupyx.scipy.sparse`` matrix or array (without importing CuPy)."""
    csp = sys.modules.get("cupyx.scipy.sparse")
    return csp is not None and csp.issparse(x)


def array_namespace(x: Any) -> ModuleType:
    """``cupy`` for CuPy arrays and matrices, ``numpy`` for everything else."""
    if is_cupy_array(x) or is_cupy_sparse(x):
        return sys.modules["cupy"]
    return np


def sparse_module(xp: ModuleType) -> ModuleType:
    """``scipy.sparse`` for NumPy, ``cupyx.scipy.sparse`` for CuPy."""
    if xp is np:
        import scipy.sparse

        return scipy.sparse
    import cupyx.scipy.sparse  # only reached with CuPy data, so CuPy is already imported

    return cupyx.scipy.sparse


def csr_container(xp: ModuleType, fmt: str = "csr") -> Any:
    """The sparse-array class of format ``fmt`` (``'csr'`` or ``'csc'``) of backend ``xp``.

    ``csr_array`` where the backend has it (SciPy, CuPy >= 14), else ``csr_matrix``.
    """
    sparse = sparse_module(xp)
    array_cls = getattr(sparse, f"{fmt}_array", None)
    return array_cls if array_cls is not None else getattr(sparse, f"{fmt}_matrix")


def linear_operator_class(xp: ModuleType) -> Any:
    """``scipy.sparse.linalg.LinearOperator`` or ``cupyx.scipy.sparse.linalg.LinearOperator``."""
    if xp is np:
        from scipy.sparse.linalg import LinearOperator
    else:
        from cupyx.scipy.sparse.linalg import LinearOperator
    return LinearOperator


def _backend_name(xp: ModuleType) -> str:
    return "CuPy (GPU)" if xp is not np else "NumPy/SciPy (CPU)"


def same_backend(name: str, x: Any, xp: ModuleType, what: str) -> None:
    """Raise ``TypeError`` when ``x`` lives on another backend than ``xp``."""
    other = array_namespace(x)
    if other is not xp:
        raise TypeError(
            f"{name} is a {_backend_name(other)} array but {what} is on {_backend_name(xp)}; "
            "mixing backends is not supported: move one of them (convmat.to_gpu / "
            "convmat.to_cpu)"
        )


def refuse_masked(name: str, x: Any, use: str) -> None:
    """Raise ``TypeError`` for a NumPy masked array: ``use`` would read under its mask."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; {use} would use the values under its mask. Pass "
            f"{name}.filled(0) (masked entries as zeros) or {name}.data explicitly")


# --------------------------------------------------------------------------- CuPy limits
def _version_tuple(version: str) -> tuple[int, ...]:
    """``'14.1.0rc1'`` -> ``(14, 1, 0)``: the leading integers of a version string."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_index_dtype(index_dtype: Any, xp: ModuleType, what: str = "W") -> None:
    """Refuse (``ValueError``) int64 indices on a CuPy too old to keep them.

    CuPy before 14.1 casts sparse indices to int32 without checking, which would wrap
    the column indices of a matrix with 2**31 or more rows, columns or entries.
    """
    if xp is np or np.dtype(index_dtype) != np.int64:
        return
    version = str(xp.__version__)
    if _version_tuple(version) < CUPY_INT64_INDICES:
        need = ".".join(map(str, CUPY_INT64_INDICES))
        raise ValueError(
            f"{what} needs int64 indices (2**31 or more rows, columns or entries), which "
            f"CuPy {version} does not support: it casts sparse indices to int32 without "
            f"checking. Install CuPy >= {need}, or build on the CPU"
        )


def _device_budget(device_free: int, pool_free: int, pool_total: int, pool_limit: int) -> int:
    """Bytes a new allocation can get: ``pool_free + min(device_free, limit - pool_total)``.

    The memory pool reuses its ``pool_free`` cached bytes first; beyond them it asks the
    device, bounded by the pool's limit (``pool_limit == 0``: no limit) less what the pool
    already holds (``pool_total``).
    """
    fresh = device_free if pool_limit == 0 else min(device_free, max(0, pool_limit - pool_total))
    return pool_free + fresh


def device_memory_budget(xp: ModuleType) -> tuple[int, str]:
    """``(bytes, description)`` available to a new allocation on ``xp``'s current device.

    The device's free memory plus the bytes CuPy's default memory pool has cached, within
    the pool's limit (``cupy.get_default_memory_pool().set_limit``).
    """
    pool = xp.get_default_memory_pool()
    device_free, _ = xp.cuda.runtime.memGetInfo()
    limit = int(pool.get_limit())
    budget = _device_budget(int(device_free), int(pool.free_bytes()), int(pool.total_bytes()),
                            limit)
    where = "free on the GPU (device free + memory-pool free"
    where += f", pool limit {limit:,} bytes)" if limit else ")"
    return budget, where


# --------------------------------------------------------------------------- memory guard
class ConvMatrixTooLarge(MemoryError):
    """The requested matrix would need more memory than allowed (``max_bytes``)."""


def format_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB.

    Examples
    --------
    >>> format_bytes(1536), format_bytes(3 * 2**30), format_bytes(2**70)
    ('1.5 KiB', '3.0 GiB', '1024.0 EiB')
    """
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if n < 1024 or unit == "EiB":
            break
    return f"{n:.1f} {unit}"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


#: Share of available memory a build may take when ``max_bytes`` is not given.
DEFAULT_MEMORY_SHARE = 0.5


def memory_limit(max_bytes: int | None, xp: Any = np, *, share: float = DEFAULT_MEMORY_SHARE,
                 sharers: int = 1) -> tuple[int | None, str]:
    """``(limit, source)``: the bytes an allocation may take, and where the limit comes from.

    ``max_bytes=None`` allows ``share`` of the memory currently available, divided among
    ``sharers`` processes that allocate at once (MPI ranks on one node): host memory for
    NumPy, and for CuPy the device's free memory plus the memory pool's free bytes (within
    the pool's limit). ``None`` when that memory cannot be known.
    """
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
            raise TypeError(f"max_bytes must be an int or None, got {max_bytes!r} "
                            f"({type(max_bytes).__name__})")
        limit = int(max_bytes)
        if limit < 0:
            raise ValueError(f"max_bytes must be >= 0, got max_bytes={limit}")
        return limit, "max_bytes"
    if xp is np:
        avail, where = available_memory(), "available"
    else:
        avail, where = device_memory_budget(xp)
    if avail is None:
        return None, "unknown"
    per = f" / {sharers} processes on this node" if sharers > 1 else ""
    return int(avail * share) // max(1, sharers), (
        f"default: {share:.0%} of {format_bytes(avail)} {where}{per}")



# --------------------------------------------------------------------------- moving data
def _cupy() -> ModuleType:
    """Import CuPy for an explicit move to the GPU, with a readable error if it cannot."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "moving to the GPU needs CuPy: pip install 'convmat[gpu]' (CuPy for CUDA 13) "
            "or the cupy-cudaXXx wheel matching your CUDA"
        ) from exc
    if not cupy.cuda.is_available():
        raise RuntimeError("CuPy is installed but finds no usable CUDA GPU (driver or device)")
    return cupy


def _sparse_format(m: Any) -> str:
    fmt = m.format
    if fmt not in ("csr", "csc"):
        raise TypeError(f"only CSR and CSC matrices move between devices, got format {fmt!r}")
    return fmt


def _nbytes(obj: Any) -> int:
    if hasattr(obj, "indptr"):
        return int(obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes)
    return int(np.asarray(obj).nbytes)


def to_gpu(obj: Any, *, max_bytes: int | None = None, nbytes: int | None = None) -> Any:
    """Move ``obj`` to the GPU: arrays, SciPy sparse matrices, :class:`ConvOperator`.

    A ``numpy.ndarray`` becomes a ``cupy.ndarray``; a SciPy CSR (CSC) matrix a
    ``cupyx.scipy.sparse`` CSR (CSC) array with the same index dtype; an object with a
    ``to_gpu`` method (``ConvOperator``) moves itself. Data already on the GPU is
    returned as is. Needs CuPy (``pip install 'convmat[gpu]'``).

    Raises
    ------
    ImportError
        CuPy is not installed.
    RuntimeError
        CuPy finds no GPU.
    TypeError
        A sparse format other than CSR/CSC.
    ValueError
        int64 indices on a CuPy older than 14.1 (see :func:`check_index_dtype`).
    ConvMatrixTooLarge
        The copy needs more than ``max_bytes`` (default: half of the GPU's free memory,
        see :func:`memory_limit`); ``nbytes`` overrides the bytes counted.
    """
    if hasattr(obj, "to_gpu"):
        return obj.to_gpu(max_bytes=max_bytes)
    if is_cupy_array(obj) or is_cupy_sparse(obj):
        return obj
    import scipy.sparse

    sparse = scipy.sparse.issparse(obj)
    fmt = _sparse_format(obj) if sparse else ""
    cp = _cupy()
    need = _nbytes(obj) if nbytes is None else nbytes
    limit, source = memory_limit(max_bytes, cp)
    if limit is not None and need > limit:
        raise ConvMatrixTooLarge(
            f"moving {type(obj).__name__} of {need:,} bytes ({format_bytes(need)}) to the GPU "
            f"needs more than the limit of {limit:,} bytes ({source})")
    if sparse:
        check_index_dtype(obj.indices.dtype, cp, what="the matrix")
        return csr_container(cp, fmt)(
            (cp.asarray(obj.data), cp.asarray(obj.indices), cp.asarray(obj.indptr)),
            shape=obj.shape, copy=False,
        )
    return cp.asarray(obj)


def to_cpu(obj: Any) -> Any:
    """Move ``obj`` to the host: the inverse of :func:`to_gpu`.

    A ``cupy.ndarray`` becomes a ``numpy.ndarray``; a ``cupyx.scipy.sparse`` CSR (CSC)
    matrix a ``scipy.sparse`` CSR (CSC) array with the same index dtype; an object with
    a ``to_cpu`` method moves itself. Anything else is returned as is (NumPy arrays and
    SciPy matrices are already on the host); CuPy is never imported.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones(3)
    >>> to_cpu(x) is x
    True
    """
    if hasattr(obj, "to_cpu"):
        return obj.to_cpu()
    if is_cupy_array(obj):
        return obj.get()
    if is_cupy_sparse(obj):
        fmt = _sparse_format(obj)
        return csr_container(np, fmt)(
            (obj.data.get(), obj.indices.get(), obj.indptr.get()), shape=obj.shape, copy=False
        )
    return obj
