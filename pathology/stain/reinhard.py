"""Reinhard colour transfer (Reinhard et al., 2001), as in staintools.

Each CIELAB channel (OpenCV 8-bit LAB, over all pixels, as staintools) is shifted and
scaled to the target's mean and standard deviation. Because 8-bit LAB has 256 values per
channel, the per-channel affine map (with staintools' float32/float64 steps, clipping and
truncation) is a 256-entry table: the direct transform is RGB→LAB, a table lookup,
LAB→RGB, identical to staintools' output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .base import PixelMap, PixelNormalizer, require_tissue
from .errors import StainFitError

_LEVELS = np.arange(256, dtype=np.float32)
# staintools' lab_split: L /= 2.55 and A, B -= 128, in float32
_CHANNEL_VALUES = np.stack([_LEVELS / 2.55, _LEVELS - 128.0, _LEVELS - 128.0]).astype(np.float64)
_CHANNELS = ("L", "A", "B")


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of each scaled LAB channel (L in [0, 100], A and B centred)."""

    means: np.ndarray
    stds: np.ndarray
    pixels: int


def _lab(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels.reshape(1, -1, 3), cv2.COLOR_RGB2LAB)


class ReinhardNormalizer(PixelNormalizer):
    """LAB mean/std transfer (staintools' ReinhardColorNormalizer)."""

    method = "reinhard"

    def _fit(self, pixels: np.ndarray) -> LabStats:
        require_tissue(pixels)
        lab = _lab(pixels)[0]
        means, stds = np.empty(3), np.empty(3)
        for ch in range(3):
            weights = np.bincount(lab[:, ch], minlength=256) / len(lab)
            means[ch] = weights @ _CHANNEL_VALUES[ch]
            stds[ch] = np.sqrt(weights @ (_CHANNEL_VALUES[ch] - means[ch]) ** 2)
        flat = [name for name, sd in zip(_CHANNELS, stds) if not sd > 0]
        if flat:
            raise StainFitError(f"LAB channel {', '.join(flat)} is constant: nothing to rescale")
        return LabStats(means, stds, len(pixels))

    def _describe(self, fit: LabStats) -> dict[str, Any]:
        return {"lab_means": fit.means.tolist(), "lab_stds": fit.stds.tolist(), "pixels": fit.pixels}

    def _restore(self, described: dict[str, Any]) -> LabStats:
        return LabStats(np.asarray(described["lab_means"], np.float64), np.asarray(described["lab_stds"], np.float64),
                        int(described["pixels"]))

    def _pixel_map(self, slide: LabStats, target: LabStats) -> PixelMap:
        scaled = (_CHANNEL_VALUES - slide.means[:, None]) * (target.stds / slide.stds)[:, None] \
            + target.means[:, None]
        scaled[0] *= 2.55
        scaled[1:] += 128.0
        table = np.clip(scaled, 0, 255).astype(np.uint8).T.reshape(256, 1, 3).copy()

        def pixel_map(pixels: np.ndarray) -> np.ndarray:
            lab = cv2.LUT(_lab(pixels), table)
            return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).reshape(-1, 3)

        return pixel_map
