"""Binary morphology in pixels with OpenCV (exact, fast at any radius, releases the GIL).

Disk operations use the exact Euclidean disk ``{(dx, dy): sqrt(dx² + dy²) <= r}`` (distances
in float64, as scipy's exact distance transform gives them): small radii as a dilation or
erosion by that kernel, large ones, where a kernel of r² pixels gets slow, through OpenCV's
exact distance transform. Its float32 distances square back to the exact integer squared
distances below 2²² (float32's 24-bit mantissa), i.e. for every radius under 2,000 px.
Connected pieces come from OpenCV's labelling with explicit connectivity.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

KERNEL_MAX_RADIUS = 16  # beyond, the distance transform is faster than a disk kernel


@lru_cache(maxsize=16)
def disk(radius: float) -> np.ndarray:
    """uint8 kernel of the pixel offsets within ``radius`` (float64 distances, as a distance transform's)."""
    n = int(np.floor(radius))
    y, x = np.mgrid[-n:n + 1, -n:n + 1]
    return (np.sqrt((y * y + x * x).astype(np.float64)) <= radius).astype(np.uint8)


def grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the mask (a dilation by a disk; ``mask`` must not be empty)."""
    if radius <= KERNEL_MAX_RADIUS:
        return cv2.dilate(_u8(mask), disk(radius)) != 0
    return _distance(~mask) <= radius


def shrink(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels farther than ``radius`` from any background pixel inside the image (an erosion by
    a disk that does not treat the image border as background; ``mask`` must not be full)."""
    if radius <= KERNEL_MAX_RADIUS:
        return cv2.erode(_u8(mask), disk(radius)) != 0
    return _distance(mask) > radius


def _distance(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (float64) from each pixel to the nearest False pixel of ``mask``."""
    dist = cv2.distanceTransform(_u8(mask), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(dist, dtype=np.float64)))


def close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Closing with a disk of ``radius`` px; the image border is not treated as background,
    so tissue cut by the border is not eaten."""
    if radius < 1 or not mask.any():
        return mask
    grown = grow(mask, radius)
    if grown.all():
        return grown
    return shrink(grown, radius)


def fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill holes (background not connected to the image border) smaller than ``max_area`` px."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(_u8(~mask), connectivity=4)
    if n == 1:
        return mask
    fill = stats[:, cv2.CC_STAT_AREA] < max_area
    fill[0] = False
    fill[_border_labels(labels)] = False
    return mask | fill[labels]


def drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Remove connected pieces (8-connected) smaller than ``min_area`` px."""
    if not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(_u8(mask), connectivity=8)
    if n == 1:
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def touching_border(mask: np.ndarray) -> np.ndarray:
    """The connected pieces (8-connected) of ``mask`` that reach the image border."""
    if not mask.any():
        return mask
    n, labels = cv2.connectedComponents(_u8(mask), connectivity=8)
    if n == 1:
        return mask
    keep = np.zeros(n, bool)
    keep[_border_labels(labels)] = True
    keep[0] = False
    return keep[labels]


def _border_labels(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))


def _u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as the 0/1 uint8 image OpenCV takes (no copy when contiguous)."""
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
