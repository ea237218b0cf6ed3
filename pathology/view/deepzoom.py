"""DeepZoom tiles of a slide, in OpenSlide's deepzoom-server layout, for every backend.

OpenSlide's :class:`openslide.deepzoom.DeepZoomGenerator` decides the geometry (levels, tile
grid, 1-px overlap, which slide level each tile is read from); it is given the slide through
:mod:`pathology.slide`'s protocol, so an OpenSlide, tiffslide or plain-image slide is tiled the
same way. Pixels come from :meth:`Slide.read_region` (pyramid levels only: the label and macro
images are never read) and are shrunk to the tile's size with a box filter (area averaging),
then encoded as JPEG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from ..slide import Slide

TILE_SIZE = 254      # + 2 px overlap = 256, as OpenSlide's deepzoom server serves them
OVERLAP = 1
FORMAT = "jpeg"
QUALITY = 75


class TileNotFoundError(LookupError):
    """A DeepZoom level or tile address outside the slide."""


@dataclass(frozen=True)
class TileRegion:
    """A DeepZoom tile on the slide: its top-left pixel's level-0 corner, level-0 pixels per tile
    pixel, and its size in pixels (overlap included). Tile pixel (i, j) covers level-0
    ``[x0 + i * downsample, x0 + (i + 1) * downsample)`` and likewise in y."""

    x0: float
    y0: float
    downsample: float
    size: tuple[int, int]


class _Pyramid:
    """What :class:`DeepZoomGenerator` reads of an OpenSlide object, from a :class:`Slide`."""

    def __init__(self, slide: Slide):
        self.level_dimensions = tuple(slide.level_dimensions)
        self.dimensions = slide.dimensions
        self.level_downsamples = tuple(slide.level_downsamples)
        self.level_count = slide.level_count
        self.properties: dict[str, str] = {}      # white background
        self.get_best_level_for_downsample = slide.best_level_for


class DeepZoom:
    """The DeepZoom pyramid of one open slide."""

    def __init__(self, slide: Slide, quality: int = QUALITY):
        self.slide, self.quality = slide, quality
        self.generator = DeepZoomGenerator(_Pyramid(slide), tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)

    def dzi(self, format: str = FORMAT) -> str:
        """The ``.dzi`` XML descriptor (``format``: the tiles' file suffix; overlays use ``png``)."""
        return self.generator.get_dzi(format)

    def region(self, level: int, col: int, row: int) -> TileRegion:
        """Where tile ``(col, row)`` of DeepZoom ``level`` lies on the slide, for overlays drawn on the
        slide's own grid; :class:`TileNotFoundError` outside the pyramid."""
        try:
            size = self.generator.get_tile_dimensions(level, (col, row))
        except ValueError as exc:
            raise TileNotFoundError(f"level {level}, tile {col}_{row}: {exc}") from None
        # DeepZoom level z is level 0 shrunk 2^(levels - 1 - z) times (limit_bounds=False: no offset);
        # a tile starts OVERLAP px before its cell, except in the first row and column
        downsample = float(2 ** (self.generator.level_count - 1 - level))
        x, y = (t * TILE_SIZE - (OVERLAP if t else 0) for t in (col, row))
        return TileRegion(x * downsample, y * downsample, downsample, size)

    def tile(self, level: int, col: int, row: int) -> Image.Image:
        """The RGB tile at ``(col, row)`` of DeepZoom ``level``; :class:`TileNotFoundError` outside the pyramid."""
        try:
            location, slide_level, size = self.generator.get_tile_coordinates(level, (col, row))
            tile_size = self.generator.get_tile_dimensions(level, (col, row))
        except ValueError as exc:   # DeepZoomGenerator: "Invalid level" / "Invalid address"
            raise TileNotFoundError(f"level {level}, tile {col}_{row}: {exc}") from None
        image = Image.fromarray(self.slide.read_region(location, slide_level, size))
        return image if image.size == tile_size else image.resize(tile_size, Image.Resampling.BOX)

    def jpeg(self, level: int, col: int, row: int) -> bytes:
        """The tile as JPEG bytes."""
        buffer = io.BytesIO()
        self.tile(level, col, row).save(buffer, format="JPEG", quality=self.quality)
        return buffer.getvalue()
