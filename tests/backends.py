"""The backends the suite runs on: NumPy always, CuPy when CuPy and a GPU are both there.

``@on_backends`` parametrises a test over ``xp`` (the array module); the CuPy parameter is
skipped, with the reason, on a machine without CuPy or without a GPU (CI has neither).
Tests make their data with NumPy, move it with :func:`device` and compare on the host
(:func:`host`).
"""

import numpy as np
import pytest

import convmat


def _find_cupy():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library missing at import
        return None, f"CuPy is not installed ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        return None, f"CuPy {cupy.__version__} finds no GPU ({exc})"
    if count == 0:
        return None, f"CuPy {cupy.__version__} finds no GPU"
    return cupy, None


cp, CUPY_MISSING = _find_cupy()

requires_gpu = pytest.mark.skipif(cp is None, reason=CUPY_MISSING or "")

BACKENDS = [
    pytest.param(np, id="numpy"),
    pytest.param(cp, id="cupy", marks=requires_gpu),
]

on_backends = pytest.mark.parametrize("xp", BACKENDS)


def device(xp, a):
    """``a`` (NumPy) on backend ``xp``."""
    return a if xp is np else xp.asarray(a)


def host(a):
    """``a`` (array, sparse matrix or operator) on the host."""
    return convmat.to_cpu(a)


def eps(dtype):
    return float(np.finfo(np.dtype(dtype)).eps)
