"""Gaussian blur of a float32 image as ``scipy.ndimage.gaussian_filter(img, (σ, σ, 0),
mode="nearest")`` computes it, through OpenCV's separable filter.

The kernel is scipy's (``exp(-x²/2σ²)`` normalized, radius ``int(4σ + 0.5)``) and edges extend
the nearest pixel, as scipy's do; OpenCV sums the taps in float32 with SIMD, where scipy sums
in float64, so values differ from scipy's by a few units in the last place (float32 rounding,
``tests/pathology/test_tile_exact.py``), at a tenth of the time of a float64 pass in numpy and
without importing scipy (~0.15 s of start-up).

A band of rows blurred with ``rows`` (and the ``radius`` rows of context around it) is
bit for bit the same band of the whole image: each output pixel is computed from the same
inputs, in the same order, so the tissue detector's threads may each blur a band.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_CHANNELS = 4  # OpenCV filters images of up to 4 channels at once


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> tuple[np.ndarray, int]:
    """scipy's normalized Gaussian weights (float64, length 2r+1) and the radius r."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    return phi / phi.sum(), radius


def gaussian_blur(img: np.ndarray, sigma: float, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Blur a float32 (h, w, c) image by ``sigma`` pixels along y and x (not across channels).

    ``rows`` (start, stop) returns only those rows of the result (computed from the rows
    around them), so a band of an image can be blurred on its own, e.g. on another thread.
    """
    if img.dtype != np.float32 or img.ndim != 3 or img.shape[2] > MAX_CHANNELS:
        raise ValueError(f"expected a float32 (h, w, c ≤ {MAX_CHANNELS}) image, got {img.dtype} {img.shape}")
    weights, r = gaussian_kernel(sigma)
    h, w, c = img.shape
    start, stop = rows if rows is not None else (0, h)
    if r == 0:
        return img[start:stop].copy()
    lo, hi = max(0, start - r), min(h, stop + r)  # the rows the kernel reaches; beyond them, the edge repeats
    kernel = weights.astype(np.float32)
    blurred = cv2.sepFilter2D(img[lo:hi], cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    return blurred.reshape(hi - lo, w, c)[start - lo:stop - lo]
