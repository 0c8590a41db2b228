"""Built-in test data: images made from formulas, so nothing is downloaded or shipped."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["phantom"]

# The modified Shepp-Logan phantom (Toft, 1996): intensity, semi-axes a, b, centre x0, y0,
# rotation in degrees. Public formula; intensities add where ellipses overlap.
_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def phantom(n: int = 128) -> np.ndarray:
    """The modified Shepp-Logan phantom, ``n x n`` float64 in ``[0, 1]``.

    Parameters
    ----------
    n : int
        Rows and columns, an int (Python or NumPy) >= 2; the image spans ``[-1, 1]`` on
        both axes.

    Returns
    -------
    numpy.ndarray
        The ``(n, n)`` image, intensities added where ellipses overlap, then clipped to
        ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``n`` is not an int >= 2 (a bool is not an int here).

    Examples
    --------
    >>> img = phantom(64)
    >>> img.shape, float(img.min()), float(img.max())
    ((64, 64), 0.0, 1.0)
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"phantom size n must be an int >= 2, got n={n!r}")
    n = int(n)
    y, x = np.mgrid[1:-1:n * 1j, -1:1:n * 1j]
    img = np.zeros((n, n))
    for value, a, b, x0, y0, deg in _SHEPP_LOGAN:
        t = np.deg2rad(deg)
        xr = (x - x0) * np.cos(t) + (y - y0) * np.sin(t)
        yr = -(x - x0) * np.sin(t) + (y - y0) * np.cos(t)
        img[(xr / a) ** 2 + (yr / b) ** 2 <= 1.0] += value
    return np.clip(img, 0.0, 1.0)
