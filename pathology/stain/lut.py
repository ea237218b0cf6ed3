"""The whole per-slide pixel map as one 256³ RGB → RGB lookup table.

Once a slide is fitted, every method here is a pure function of each pixel's 8-bit RGB
value, so evaluating it once for all 2²⁴ colours (in chunks, with the same code as the
direct path, hence bit-identical results) turns each later patch into one gather. The
table holds RGBA words (64 MiB) so a pixel is one 4-byte load, about 3× faster than the
direct path (benchmarks/bench_stain.py).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from ..cores import available_cores

ENTRIES = 1 << 24
BUILD_COST_PIXELS = 20_000_000
"""Pixels mapped directly in the time the table takes to build (~300 patches of 256²)."""
BREAK_EVEN_PIXELS = 30_000_000
"""Pixels (~460 patches of 256²) past which building the table saves time overall."""

_INDEX_MASK = np.uint32(0xFFFFFF)
_PLANE = 1 << 16


def _rgba_words(pixels: np.ndarray) -> np.ndarray:
    """uint8 (M, 3) → uint32 (M,) words r | g<<8 | b<<16 | 255<<24 (little-endian RGBA)."""
    return cv2.cvtColor(pixels.reshape(1, -1, 3), cv2.COLOR_RGB2RGBA).view(np.uint32).ravel()


def build_lut(pixel_map: Callable[[np.ndarray], np.ndarray], threads: int | None = None) -> np.ndarray:
    """Table of ``pixel_map`` over every colour, indexed by r | g<<8 | b<<16; the blue
    planes are shared among ``threads`` (default: every core; NumPy releases the GIL)."""
    lut = np.empty(ENTRIES, np.uint32)

    def planes(blues: range) -> None:
        plane = np.empty((_PLANE, 3), np.uint8)
        plane[:, 0] = np.tile(np.arange(256, dtype=np.uint8), 256)
        plane[:, 1] = np.repeat(np.arange(256, dtype=np.uint8), 256)
        for blue in blues:
            plane[:, 2] = blue
            lut[blue * _PLANE:(blue + 1) * _PLANE] = _rgba_words(pixel_map(plane))

    threads = threads or available_cores()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(planes, [range(i, 256, threads) for i in range(threads)]))
    lut.flags.writeable = False
    return lut


def apply_lut(lut: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Map uint8 pixels (M, 3) through a table from :func:`build_lut` (in cache-sized chunks)."""
    out = np.empty_like(pixels)
    for start in range(0, len(pixels), _PLANE):
        index = _rgba_words(pixels[start:start + _PLANE])
        index &= _INDEX_MASK
        words = np.take(lut, index)
        out[start:start + _PLANE] = cv2.cvtColor(words.view(np.uint8).reshape(1, -1, 4), cv2.COLOR_RGBA2RGB)[0]
    return out
