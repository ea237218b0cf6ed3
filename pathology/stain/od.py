"""Optical density (Beer–Lambert, OD = -ln(I/255)) and the tissue pixels stain models are fitted on.

Replicates staintools exactly so fits agree with it: intensity 0 counts as 1, OD is
floored at 1e-6, and tissue is OpenCV 8-bit CIELAB luminosity L/255 < 0.8.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

OD_FLOOR = 1e-6
LUMINOSITY_THRESHOLD = 0.8

OD_TABLE: np.ndarray = np.maximum(-np.log(np.maximum(np.arange(256), 1) / 255), OD_FLOOR)
"""OD of each 8-bit intensity (float64, 256 entries): the conversion is a lookup."""
OD_TABLE.flags.writeable = False


def as_pixels(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """All pixels of an image, a stack (N, H, W, 3) or a list of patches as uint8 (M, 3)."""
    arrays = [images] if isinstance(images, np.ndarray) else list(images)
    for a in arrays:
        if a.dtype != np.uint8 or a.shape[-1:] != (3,):
            raise ValueError(f"stain normalization needs uint8 RGB pixels (..., 3), got {a.dtype} {a.shape}")
    if len(arrays) == 1:
        return np.ascontiguousarray(arrays[0].reshape(-1, 3))
    return np.concatenate([a.reshape(-1, 3) for a in arrays]) if arrays else np.empty((0, 3), np.uint8)


def rgb_to_od(pixels: np.ndarray) -> np.ndarray:
    """Optical density (float64, same shape) of uint8 RGB values."""
    return OD_TABLE[pixels]


def tissue_mask(pixels: np.ndarray, threshold: float = LUMINOSITY_THRESHOLD) -> np.ndarray:
    """True where a uint8 (M, 3) pixel is darker than ``threshold`` in CIELAB luminosity."""
    lightness = cv2.cvtColor(pixels.reshape(1, -1, 3), cv2.COLOR_RGB2LAB)[0, :, 0]
    return lightness / 255.0 < threshold
