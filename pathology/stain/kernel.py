"""The per-pixel stain transfer, fast: uint8 RGB → OD → exact concentrations on the
slide's stains → rescaled → rebuilt with the target's stains → uint8 RGB.

After the per-slide fit this is a pure function of each pixel's RGB value, evaluated in
float32 on planar chunks that stay in cache: OD by table lookup, the closed-form lasso
(:mod:`.lasso`) as four linear maps and a min/max, and ``255·exp(−C·S)`` truncated to
uint8 as staintools does. One deliberate difference: the exponent is clipped at 0, so a
target stain vector with a negative component cannot push a value past 255 (where
staintools' uint8 cast wraps around). Immutable once built, so safe to call from several
threads.
"""

from __future__ import annotations

import cv2
import numpy as np

from .lasso import LAMBDA, combine, lasso_coefficients
from .od import OD_TABLE

CHUNK = 1 << 16
"""Pixels per chunk (one 256² patch): keeps the float32 temporaries in L2 cache."""

_OD32 = OD_TABLE.astype(np.float32)


class StainTransfer:
    """Maps pixels stained like ``source`` to the stain appearance of ``target``."""

    def __init__(self, source_stains: np.ndarray, source_max: np.ndarray, target_stains: np.ndarray,
                 target_max: np.ndarray, lam: float = LAMBDA):
        weights, offsets, g = lasso_coefficients(source_stains, lam)
        self._weights = weights.astype(np.float32)
        self._offsets = offsets.astype(np.float32)
        self._positive_overlap = g >= 0
        scale = np.asarray(target_max, np.float64) / np.asarray(source_max, np.float64)
        self._rebuild = (-scale[:, None] * np.asarray(target_stains, np.float64)).astype(np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Transformed copy of uint8 pixels (M, 3)."""
        out = np.empty_like(pixels)
        for start in range(0, len(pixels), CHUNK):
            self._chunk(pixels[start:start + CHUNK], out[start:start + CHUNK])
        return out

    def _chunk(self, pixels: np.ndarray, out: np.ndarray) -> None:
        planes = [cv2.LUT(p, _OD32).ravel() for p in cv2.split(pixels.reshape(1, -1, 3))]
        tmp = np.empty_like(planes[0])
        u1, u2, a, b = (self._linear(planes, k, tmp) for k in range(4))
        c1, c2 = combine(u1, u2, a, b, self._positive_overlap)
        y = u1  # reuse buffers: u1, u2 are no longer needed
        for ch in range(3):
            np.multiply(c1, self._rebuild[0, ch], out=y)
            np.multiply(c2, self._rebuild[1, ch], out=tmp)
            y += tmp
            np.minimum(y, 0, out=y)
            cv2.exp(y, dst=y)
            y *= 255
            np.copyto(out[:, ch], y, casting="unsafe")  # truncates, like astype(uint8)

    def _linear(self, planes: list[np.ndarray], k: int, tmp: np.ndarray) -> np.ndarray:
        w = self._weights[k]
        acc = planes[0] * w[0]
        acc += self._offsets[k]
        for ch in (1, 2):
            np.multiply(planes[ch], w[ch], out=tmp)
            acc += tmp
        return acc
