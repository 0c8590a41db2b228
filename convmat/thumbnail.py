"""A sparsity-pattern thumbnail as an inline PNG, with NumPy and zlib only (no matplotlib).

Used by ``ConvOperator._repr_html_`` so that an operator shows itself in Jupyter without
importing a plotting library.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np

__all__ = ["pattern_density", "png_data_uri"]


def pattern_density(matrix: Any, bins: tuple[int, int]) -> np.ndarray:
    """Stored entries of a SciPy sparse ``matrix`` counted in ``bins`` (rows, cols) cells."""
    coo = matrix.tocoo()
    rows, cols = matrix.shape
    br, bc = min(bins[0], rows), min(bins[1], cols)
    r = (coo.row.astype(np.int64) * br) // rows
    c = (coo.col.astype(np.int64) * bc) // cols
    counts = np.zeros((br, bc), dtype=np.int64)
    np.add.at(counts, (r, c), 1)
    return counts


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_data_uri(gray: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an 8-bit grayscale image (0 black, 255 white)."""
    img = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))  # filter 0 per row
    png = (b"\x89PNG\r\n\x1a\n"
           + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(raw, 9))
           + _chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(matrix: Any, size: int = 120) -> str:
    """PNG data URI of the pattern: dark where a cell holds entries, shade by density."""
    rows, cols = matrix.shape
    scale = size / max(rows, cols)
    bins = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    counts = pattern_density(matrix, bins)
    shade = np.where(counts > 0, 160 - 160 * np.log1p(counts) / np.log1p(counts.max()), 255)
    # upscale tiny matrices so each entry is a visible square
    rep = max(1, size // max(counts.shape))
    img = np.kron(shade, np.ones((rep, rep)))
    return png_data_uri(img.astype(np.uint8))
