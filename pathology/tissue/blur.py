"""Gaussian blur of a float32 image, bit for bit ``scipy.ndimage.gaussian_filter(img, (σ, σ, 0),
mode="nearest")``, in numpy alone.

Importing ``scipy.ndimage`` costs ~0.15 s of start-up (it pulls in ``scipy.special``), more than
the blur itself on a slide thumbnail. This repeats scipy's arithmetic operation for operation: the
same kernel (``exp(-x²/2σ²)`` normalized, radius ``int(4σ + 0.5)``), rows then columns, each pass
accumulated in float64 as ``c·w₀ + Σ_{j=r…1} (left_j + right_j)·w_j`` (farthest pair first) and
rounded to float32 between passes, edges extended with the nearest pixel. IEEE arithmetic does
the rest, so the result is identical (``tests/pathology/test_tissue_fast.py`` checks it against
scipy). Rows are processed in blocks that stay in cache.

Each tap is a pass over the block, so beyond a radius of ~16 px scipy's C loop wins and is
used instead (the tiler's thumbnails at 8 µm/px blur by 2 px; a tile at 0.5 µm/px by 32 px).
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 16        # output rows per block (at least): the float64 working set stays in L2
NUMPY_MAX_RADIUS = 16  # larger kernels go to scipy.ndimage (same result, faster there)


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
    if img.dtype != np.float32 or img.ndim != 3:
        raise ValueError(f"expected a float32 (h, w, c) image, got {img.dtype} {img.shape}")
    weights, r = gaussian_kernel(sigma)
    h, w, c = img.shape
    start, stop = rows if rows is not None else (0, h)
    if r == 0:
        return img[start:stop].copy()
    if r > NUMPY_MAX_RADIUS:
        from scipy import ndimage  # ~0.15 s to import: only for large kernels

        lo, hi = max(0, start - r), min(h, stop + r)
        out = ndimage.gaussian_filter(img[lo:hi], (sigma, sigma, 0), mode="nearest")
        return out[start - lo:stop - lo]
    flat = img.reshape(h, w * c)
    out = np.empty((stop - start, w * c), np.float32)
    block = max(BLOCK_ROWS, 2 * r)  # the 2r rows of context cost at most as much as the block
    for i0 in range(start, stop, block):
        i1 = min(stop, i0 + block)
        context = flat[np.clip(np.arange(i0 - r, i1 + r), 0, h - 1)].astype(np.float64)
        down = _correlate(context, weights, r, 0, i1 - i0).astype(np.float32).reshape(i1 - i0, w, c)
        padded = np.concatenate([np.repeat(down[:, :1], r, 1), down, np.repeat(down[:, -1:], r, 1)], axis=1)
        out[i0 - start:i1 - start] = _correlate(padded.reshape(i1 - i0, -1).astype(np.float64), weights, r, 1,
                                                w * c, step=c)
    return out.reshape(stop - start, w, c)


def _correlate(src: np.ndarray, weights: np.ndarray, r: int, axis: int, n: int, step: int = 1) -> np.ndarray:
    """scipy's symmetric correlation along ``axis`` of a float64 array padded by ``r`` samples
    (``step`` elements apart) on each side: ``n`` outputs along that axis."""
    def shifted(k: int) -> np.ndarray:  # the samples k positions right of the left pad's start
        return src[k:k + n] if axis == 0 else src[:, k * step:k * step + n]

    acc = shifted(r) * weights[r]
    tmp = np.empty_like(acc)
    for j in range(r, 0, -1):
        np.add(shifted(r - j), shifted(r + j), out=tmp)
        tmp *= weights[r - j]
        acc += tmp
    return acc
