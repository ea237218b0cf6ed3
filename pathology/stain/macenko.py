"""Macenko stain estimation (Macenko et al., ISBI 2009), as in staintools.

The two stains are the extreme angles (1st and 99th percentile) of tissue OD projected on
the plane of its two principal eigenvectors.
"""

from __future__ import annotations

import numpy as np

from .deconvolution import StainMatrixNormalizer

ANGULAR_PERCENTILE = 99


def macenko_stains(od: np.ndarray, angular_percentile: float = ANGULAR_PERCENTILE) -> np.ndarray:
    """Two unit stain vectors (2, 3), unordered, from tissue OD (T, 3)."""
    _, vectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vectors[:, [2, 1]]
    plane *= np.where(plane[0] < 0, -1.0, 1.0)  # staintools' sign rule: positive red component
    projected = od @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, [100 - angular_percentile, angular_percentile])
    return np.stack([plane @ [np.cos(lo), np.sin(lo)], plane @ [np.cos(hi), np.sin(hi)]])


class MacenkoNormalizer(StainMatrixNormalizer):
    """Macenko stain vectors, exact-lasso concentrations (staintools' StainNormalizer('macenko'))."""

    method = "macenko"
    estimate = staticmethod(macenko_stains)
