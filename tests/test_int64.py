"""The int64 index path, exercised by lowering the int32 limit (no 2**31 allocation)."""

import numpy as np
import pytest

import convmat
import convmat.geometry

from backends import device, host, on_backends
from reference import conv_matrix_reference


@on_backends
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_int64_indices_when_limit_exceeded(monkeypatch, xp, transposed, mode):
    rng = np.random.default_rng(0)
    w = rng.integers(-3, 4, size=(2, 3, 3, 2)).astype(float)
    build = convmat.conv_transpose_matrix if transposed else convmat.conv_matrix
    shape = (2, 5, 6) if transposed else (3, 5, 6)
    small = host(build(device(xp, w), shape, padding=1, padding_mode=mode))
    assert small.indices.dtype == np.int32 and small.indptr.dtype == np.int32
    # max(rows, cols, nnz) is >= 50 here: with the limit at 50 it must switch to int64
    monkeypatch.setattr(convmat.geometry, "INDEX_LIMIT", 50)
    big = host(build(device(xp, w), shape, padding=1, padding_mode=mode))
    assert big.indices.dtype == np.int64 and big.indptr.dtype == np.int64
    big.check_format(full_check=True)
    np.testing.assert_array_equal(big.toarray(), small.toarray())
    if not transposed:
        ref, _ = conv_matrix_reference(w, shape, (1, 1), [(1, 1), (1, 1)], (1, 1), 1, mode)
        np.testing.assert_array_equal(big.toarray(), ref)


def test_index_arithmetic_does_not_wrap(monkeypatch):
    """Columns near 2**31 would wrap in int32 arithmetic; the geometry picks int64 first."""
    g = convmat.conv_geometry((1, 1, 1), (1, 2**31 + 5))
    assert g.index_dtype == np.int64
    assert convmat.conv_geometry((1, 1, 1), (1, 2**31 - 1)).index_dtype == np.int32
