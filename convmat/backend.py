"""The backend follows the data: NumPy arrays run on SciPy, CuPy arrays on ``cupyx``.

CuPy is detected through ``sys.modules`` and never imported here: if nobody imported
CuPy, no array can be a CuPy array.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["array_namespace", "is_cupy_array", "is_cupy_sparse", "same_backend", "sparse_module"]


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_cupy_sparse(x: Any) -> bool:
    """True for a ``cupyx.scipy.sparse`` matrix (without importing CuPy)."""
    csp = sys.modules.get("cupyx.scipy.sparse")
    return csp is not None and isinstance(x, csp.spmatrix)


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


def _backend_name(xp: ModuleType) -> str:
    return "CuPy (GPU)" if xp is not np else "NumPy/SciPy (CPU)"


def same_backend(name: str, x: Any, xp: ModuleType, what: str) -> None:
    """Raise ``TypeError`` when ``x`` lives on another backend than ``xp``."""
    other = array_namespace(x)
    if other is not xp:
        raise TypeError(
            f"{name} is a {_backend_name(other)} array but {what} is on {_backend_name(xp)}; "
            "mixing backends is not supported: move one of them (cupy.asarray / .get())"
        )
