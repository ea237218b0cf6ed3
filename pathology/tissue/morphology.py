"""Binary morphology in pixels, fast at any radius (distance transforms, not structuring elements)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Closing with a disk of ``radius`` px; the image border is not treated as background,
    so tissue cut by the border is not eaten."""
    if radius < 1 or not mask.any():
        return mask
    grown = ndimage.distance_transform_edt(~mask) <= radius
    if grown.all():
        return grown
    return ndimage.distance_transform_edt(grown) > radius


def fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill holes (background not connected to the image border) smaller than ``max_area`` px."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    fill = sizes < max_area
    fill[0] = False
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill[edge] = False
    return mask | fill[labels]


def drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Remove connected pieces (8-connected) smaller than ``min_area`` px."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def touching_border(mask: np.ndarray) -> np.ndarray:
    """The connected pieces of ``mask`` that reach the image border."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = np.zeros(n + 1, bool)
    keep[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    keep[0] = False
    return keep[labels]
