"""Where patches go: a grid at a target µm/px over the slide, kept where there is tissue.

All geometry is in level-0 pixels, per axis, in floating point, so non-square pixels
and non-integer pyramid downsamples need no special cases. Only the stored
coordinates are rounded to integers (the bag's contract).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridSpec:
    """The user's tiling request."""

    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: int = 0          # pixels at the target resolution shared by neighbouring patches
    min_tissue: float = 0.5   # minimum tissue share of a patch to keep it

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise InputError(f"target µm/px must be positive, got {self.target_mpp}")
        if self.patch_size < 8:
            raise InputError(f"patch size must be at least 8 px, got {self.patch_size}")
        if not 0 <= self.overlap < self.patch_size:
            raise InputError(f"overlap must be in [0, patch size), got {self.overlap}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InputError(f"minimum tissue fraction must be in [0, 1], got {self.min_tissue}")


@dataclass
class Grid:
    """Kept patches of one slide and how to read them."""

    coords: np.ndarray            # int64 (N, 2): level-0 x, y of each top-left corner
    tissue_fraction: np.ndarray   # float32 (N,)
    patch_size_level0: tuple[float, float]  # exact level-0 extent of a patch (w, h)
    stride_level0: tuple[float, float]
    read_level: int
    candidates: int               # grid positions before the tissue filter

    def __len__(self) -> int:
        return len(self.coords)


def positions(extent: int, size: float, stride: float) -> np.ndarray:
    """Start positions along one axis. A slide smaller than one patch gets one
    (padded) patch at 0; otherwise patches that fit entirely."""
    if extent <= size:
        return np.zeros(1)
    return np.arange(int(math.floor((extent - size) / stride + 1e-9)) + 1) * stride


def tissue_fractions(mask: np.ndarray, scale: tuple[float, float], x: np.ndarray, y: np.ndarray,
                     size: tuple[float, float]) -> np.ndarray:
    """Share of each box (level-0 x, y, size) covered by ``mask``, whose pixel (i, j)
    covers level-0 [j·sx, (j+1)·sx) × [i·sy, (i+1)·sy). Exact up to mask pixels,
    via a summed-area table so it costs O(1) per box."""
    sx, sy = scale
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)

    def bounds(start: np.ndarray, extent: float, step: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.round(start / step).astype(np.int64), 0, limit)
        hi = np.clip(np.round((start + extent) / step).astype(np.int64), 0, limit)
        return lo, np.maximum(hi, np.minimum(lo + 1, limit))

    x0, x1 = bounds(x, size[0], sx, w)
    y0, y1 = bounds(y, size[1], sy, h)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    # Denominator is the whole patch (in mask pixels), so padding outside the slide counts as glass.
    area = (size[0] / sx) * (size[1] / sy)
    return np.clip(inside / max(area, 1e-9), 0.0, 1.0).astype(np.float32)


# A level may be this much coarser than the target: pyramids round level sizes, so a
# "4x" level is often 4.01x, and upsampling by 1% loses nothing.
LEVEL_TOLERANCE = 0.01


def choose_read_level(level_downsamples_xy: list[tuple[float, float]], factor: tuple[float, float]) -> int:
    """The coarsest level still (about) as fine as the target: least decoding, no real upsampling."""
    best, best_ds = 0, 0.0
    tol = 1 + LEVEL_TOLERANCE
    for i, (dx, dy) in enumerate(level_downsamples_xy):
        if dx <= factor[0] * tol and dy <= factor[1] * tol and dx * dy > best_ds:
            best, best_ds = i, dx * dy
    return best


def make_grid(dimensions: tuple[int, int], mpp_xy: tuple[float, float],
              level_downsamples_xy: list[tuple[float, float]], spec: GridSpec,
              mask: np.ndarray, mask_scale: tuple[float, float], region: np.ndarray | None = None) -> Grid:
    """Lay the grid over a slide of level-0 ``dimensions`` and keep tissue patches.

    ``mask`` is the tissue mask with level-0 pixels per mask pixel ``mask_scale``. With a
    ``region`` (an ROI rasterized on the same pixels), a patch's tissue share counts only the
    tissue inside the region, and a kept patch must overlap the region (also at
    ``min_tissue`` 0).
    """
    factor = (spec.target_mpp / mpp_xy[0], spec.target_mpp / mpp_xy[1])  # level-0 px per target px
    if min(factor) < 1 - 1e-3:
        log.warning("target %.3g µm/px is finer than the slide's %.3g µm/px: patches are upsampled",
                    spec.target_mpp, min(mpp_xy))
    size = (spec.patch_size * factor[0], spec.patch_size * factor[1])
    stride = ((spec.patch_size - spec.overlap) * factor[0], (spec.patch_size - spec.overlap) * factor[1])
    xs = positions(dimensions[0], size[0], stride[0])
    ys = positions(dimensions[1], size[1], stride[1])
    gy, gx = np.meshgrid(ys, xs, indexing="ij")  # row-major: sorted by y, then x
    gx, gy = gx.ravel(), gy.ravel()
    frac = tissue_fractions(mask if region is None else mask & region, mask_scale, gx, gy, size)
    keep = frac >= spec.min_tissue if spec.min_tissue > 0 else np.ones_like(frac, bool)
    if region is not None:
        keep &= tissue_fractions(region, mask_scale, gx, gy, size) > 0
    coords = np.stack([np.round(gx[keep]), np.round(gy[keep])], axis=1).astype(np.int64)
    return Grid(coords=coords.reshape(-1, 2), tissue_fraction=frac[keep], patch_size_level0=size,
                stride_level0=stride, read_level=choose_read_level(level_downsamples_xy, factor),
                candidates=len(gx))
