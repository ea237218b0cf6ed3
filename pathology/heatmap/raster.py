"""Per-patch scores → a per-pixel map at the output resolution.

Each patch paints its level-0 square; where patches overlap (stride < patch size) a
pixel gets the mean of the scores covering it. An optional Gaussian (σ in µm) smooths
the map by normalized convolution, so uncovered pixels never pull the edges to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class OutputGrid:
    """The output picture: ``width`` × ``height`` pixels over the whole slide."""

    width: int
    height: int
    scale: tuple[float, float]   # level-0 px per output px, x and y
    mpp: float                   # µm per output px

    @classmethod
    def for_slide(cls, dimensions: tuple[int, int], mpp0: float, downsample: float) -> OutputGrid:
        """The grid at ``downsample`` level-0 px per output px (sizes rounded as
        :meth:`pathology.slide.Slide.read_scaled` rounds them)."""
        w0, h0 = dimensions
        w, h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        return cls(w, h, (w0 / w, h0 / h), mpp0 * downsample)


def paint_mean(grid: OutputGrid, coords: np.ndarray, size0: np.ndarray,
               values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over the patches covering each output pixel, and the coverage mask.

    A patch covers the output pixels whose centres fall inside its level-0 square (at
    least one pixel, so tiny patches on a coarse picture still show).
    """
    sx, sy = grid.scale
    x0 = np.floor(coords[:, 0] / sx + 0.5).astype(np.int64)
    y0 = np.floor(coords[:, 1] / sy + 0.5).astype(np.int64)
    x1 = np.maximum(np.floor((coords[:, 0] + size0[0]) / sx + 0.5).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.floor((coords[:, 1] + size0[1]) / sy + 0.5).astype(np.int64), y0 + 1)
    x0, x1 = np.clip(x0, 0, grid.width), np.clip(x1, 0, grid.width)
    y0, y1 = np.clip(y0, 0, grid.height), np.clip(y1, 0, grid.height)
    total = _box_sum(grid, x0, y0, x1, y1, np.asarray(values, np.float64))
    count = _box_sum(grid, x0, y0, x1, y1, np.ones(len(values)))
    covered = count > 0.5
    mean = np.zeros_like(total)
    np.divide(total, count, out=mean, where=covered)
    return mean.astype(np.float32), covered


def _box_sum(grid: OutputGrid, x0, y0, x1, y1, weights: np.ndarray) -> np.ndarray:
    """Sum of ``weights`` over boxes [x0, x1) × [y0, y1), by a 2-D difference array:
    O(N + pixels) however many patches overlap."""
    diff = np.zeros((grid.height + 1, grid.width + 1), np.float64)
    np.add.at(diff, (y0, x0), weights)
    np.add.at(diff, (y0, x1), -weights)
    np.add.at(diff, (y1, x0), -weights)
    np.add.at(diff, (y1, x1), weights)
    return diff.cumsum(axis=0).cumsum(axis=1)[:grid.height, :grid.width]


def smooth(mean: np.ndarray, covered: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-smoothed ``mean`` over the covered pixels (normalized convolution)."""
    if sigma_px <= 0:
        return mean
    weight = covered.astype(np.float64)
    num = ndimage.gaussian_filter(mean * weight, sigma_px, mode="constant")
    den = ndimage.gaussian_filter(weight, sigma_px, mode="constant")
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 1e-6)
    return np.where(covered, out, 0.0).astype(np.float32)
