"""The picture a heatmap is painted on, and its tissue mask, at the chosen resolution:
the bag's thumbnail when it is fine enough, else the slide's pyramid."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..slide import Slide
from .raster import OutputGrid
from .sources import BagView, HeatmapError

MAX_SIDE = 16384   # px: larger pictures take gigabytes and no viewer shows them whole


def output_grid(bag: BagView, resolution: float | None = None, max_size: int | None = None) -> OutputGrid:
    """The output grid at ``resolution`` µm/px, or with its longer side ``max_size`` px,
    or (neither given) at the bag thumbnail's resolution (:class:`HeatmapOptions` checks them)."""
    dims = bag.dimensions
    if resolution is not None:
        downsample = resolution / bag.mpp
    elif max_size is not None:
        downsample = max(dims) / max_size
    else:
        h, w = bag.thumbnail.shape[:2]
        return OutputGrid(w, h, (dims[0] / w, dims[1] / h), bag.mpp * float(np.mean(bag.thumb_downsample)))
    grid = OutputGrid.for_slide(dims, bag.mpp, downsample)
    if max(grid.width, grid.height) > MAX_SIDE:
        raise HeatmapError(f"{bag.path}: a {grid.width}x{grid.height} picture ({grid.mpp:.3g} µm/px) is too large; "
                           f"at most {MAX_SIDE} px a side (use a coarser --resolution or a smaller --max-size)")
    return grid


def needs_slide(bag: BagView, grid: OutputGrid) -> bool:
    """Whether ``grid`` is finer than the bag's thumbnail (more than 0.1%)."""
    h, w = bag.thumbnail.shape[:2]
    return grid.width > w * 1.001 or grid.height > h * 1.001


def background(bag: BagView, grid: OutputGrid, open_slide: Callable[[str], Slide]) -> tuple[np.ndarray, np.ndarray]:
    """RGB picture (height, width, 3) and tissue mask (height, width) on ``grid``.

    ``open_slide(why)`` is called only when ``grid`` is finer than the bag's thumbnail.
    """
    size = (grid.width, grid.height)
    if needs_slide(bag, grid):
        with open_slide(f"a picture at {grid.mpp:.3g} µm/px (finer than the bag's thumbnail)") as slide:
            picture = slide.read_scaled(float(np.mean(grid.scale)))
        if picture.shape[:2] != (grid.height, grid.width):
            picture = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))
    else:
        picture = _resize(bag.thumbnail, size)
    mask = Image.fromarray(bag.tissue_mask.astype(np.uint8) * 255)
    if mask.size != size:
        upscale = size[0] > mask.width
        mask = mask.resize(size, Image.Resampling.BILINEAR if upscale else Image.Resampling.BOX)
    return picture, np.asarray(mask) >= 128


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(rgb)
    return rgb if img.size == size else np.asarray(img.resize(size, Image.Resampling.BOX))
