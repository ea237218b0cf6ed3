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

from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from ..slide import Slide

TILE_SIZE = 254      # + 2 px overlap = 256, as OpenSlide's deepzoom server serves them
OVERLAP = 1
FORMAT = "jpeg"
QUALITY = 75


class TileNotFoundError(LookupError):
    """A DeepZoom level or tile address outside the slide."""


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

    def dzi(self) -> str:
        """The ``.dzi`` XML descriptor."""
        return self.generator.get_dzi(FORMAT)

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
