"""convmat.metrics: scikit-image's PSNR and SSIM with the truth's range as the peak."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from convmat import metrics

skm = pytest.importorskip("skimage.metrics")


def test_psnr_and_ssim_are_scikit_images_with_the_truths_range():
    rng = np.random.default_rng(0)
    truth = 2.0 + 3.0 * rng.random((40, 50))  # range about 3, not 1
    image = truth + 0.1 * rng.standard_normal(truth.shape)
    peak = truth.max() - truth.min()
    mse = np.mean((truth - image) ** 2)
    assert metrics.psnr(truth, image) == pytest.approx(10 * np.log10(peak ** 2 / mse), rel=1e-12)
    assert metrics.psnr(truth, image, data_range=1.0) == pytest.approx(
        10 * np.log10(1 / mse), rel=1e-12)
    assert metrics.ssim(truth, image) == pytest.approx(
        skm.structural_similarity(truth, image, data_range=peak), rel=1e-12)
    assert metrics.psnr(truth, truth) == np.inf and metrics.ssim(truth, truth) == 1.0


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"truth has shape \(2, 3\) but image has shape \(3, 2\)"):
        metrics.psnr(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"truth is constant: its range \(the PSNR's peak\) is "
                                         r"0; pass data_range="):
        metrics.psnr(np.ones((4, 4)), np.zeros((4, 4)))
    monkeypatch.setitem(sys.modules, "skimage.metrics", None)
    with pytest.raises(ImportError, match=r"convmat.metrics needs scikit-image: pip install "
                                          r"scikit-image \(or convmat\[viz\]\)"):
        metrics.ssim(np.eye(8), np.zeros((8, 8)))
