"""Image quality, in one place: PSNR and SSIM from ``skimage.metrics``.

The CLI, the demo, the notebooks and the benchmarks all score restorations with these two
functions, which hand the work to scikit-image (``pip install convmat[viz]`` installs it)
with one convention: the peak (``data_range``) is the range of the *truth*,
``truth.max() - truth.min()``, unless given, so a restored image that overshoots is not
scored against its own range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["psnr", "ssim"]


def _metrics() -> Any:
    try:
        import skimage.metrics
    except ImportError as exc:
        raise ImportError("convmat.metrics needs scikit-image: pip install scikit-image "
                          "(or convmat[viz])") from exc
    return skimage.metrics


def _pair(truth: Any, image: Any, data_range: float | None) -> tuple[np.ndarray, np.ndarray,
                                                                     float]:
    truth = np.asarray(truth.get() if hasattr(truth, "get") else truth, dtype=np.float64)
    image = np.asarray(image.get() if hasattr(image, "get") else image, dtype=np.float64)
    if truth.shape != image.shape:
        raise ValueError(f"truth has shape {truth.shape} but image has shape {image.shape}")
    if data_range is None:
        data_range = float(truth.max() - truth.min()) if truth.size else 0.0
        if data_range == 0:
            raise ValueError("truth is constant: its range (the PSNR's peak) is 0; pass "
                             "data_range=")
    return truth, image, float(data_range)


def psnr(truth: Any, image: Any, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    ``skimage.metrics.peak_signal_noise_ratio`` with ``data_range`` the truth's range
    unless given (``inf`` for a perfect restoration).

    Examples
    --------
    >>> truth = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> round(psnr(truth, truth + 0.1), 6)  # MSE 0.01, peak 1
    20.0
    """
    truth, image, peak = _pair(truth, image, data_range)
    if np.array_equal(truth, image):
        return float("inf")
    return float(_metrics().peak_signal_noise_ratio(truth, image, data_range=peak))


def ssim(truth: Any, image: Any, *, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004) of two images (2-D, or N-d), in ``[-1, 1]``.

    ``skimage.metrics.structural_similarity`` with its default 7-pixel window and
    ``data_range`` the truth's range unless given.

    Examples
    --------
    >>> truth = np.outer(np.hanning(32), np.hanning(32))
    >>> ssim(truth, truth)
    1.0
    """
    truth, image, peak = _pair(truth, image, data_range)
    return float(_metrics().structural_similarity(truth, image, data_range=peak))
