"""Where patch pixels come from: the compressed tiles of a TIFF pyramid, or a slide's
``read_region`` for every other format.

A source plans, for each level box a patch needs, the *pieces* that cover it:
rectangles in level pixels with a function that loads their pixels. The reader caches pieces, so a
tile shared by neighbouring patches is decoded once. ``region`` reads one box outright (the
tiler's thumbnail strips).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..slide import Slide

log = logging.getLogger(__name__)

# A band read by the region source stays below this many pixels; beyond it, each
# patch is read on its own (a thin band across a huge slide would waste memory).
MAX_BAND_PIXELS = 48_000_000


@dataclass(frozen=True)
class Piece:
    """A rectangle of level pixels (x0, y0, x1, y1) and how to load it as RGB uint8."""

    key: tuple
    box: tuple[int, int, int, int]
    load: Callable[[], np.ndarray]


class TiffTileSource:
    """Reads a level's compressed tiles straight from the TIFF (SVS, generic tiled TIFF).

    File reads happen on the calling thread (cheap, sequential); decoding happens in
    ``load``, which the reader runs on worker threads (the codecs release the GIL).
    """

    def __init__(self, tif, page, level_shape: tuple[int, int]):
        self._tif, self._page = tif, page
        self._lock = threading.Lock()
        self.height, self.width = level_shape
        self.tw, self.th = page.tilewidth, page.tilelength
        self.tiles_across = math.ceil(self.width / self.tw)
        self.tiles_down = math.ceil(self.height / self.th)
        self.name = f"tifffile ({page.compression.name.lower()} tiles {self.tw}x{self.th})"

    @classmethod
    def open(cls, slide: Slide, level: int) -> TiffTileSource | None:
        """The tile source for ``level`` of ``slide``, or None when the file is not a plain
        tiled RGB TIFF pyramid whose levels line up with the slide's (then fall back)."""
        import tifffile

        try:
            tif = tifffile.TiffFile(slide.path)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the backend's read_region serves
            return None
        try:
            levels = tif.series[0].levels
            w, h = slide.level_dimensions[level]
            page = levels[level].pages[0] if len(levels) == slide.level_count else None
            if (page is None or not page.is_tiled or page.shape[:2] != (h, w) or page.dtype != np.uint8
                    or page.samplesperpixel not in (3, 4) or page.planarconfig != 1 or page.tiledepth != 1):
                tif.close()
                return None
            _ = page.decode  # resolves the codec now: an unknown compression falls back here
        except Exception:  # noqa: BLE001 - any layout tifffile cannot decode falls back
            tif.close()
            return None
        return cls(tif, page, (h, w))

    def plan(self, boxes: np.ndarray) -> list[list[Piece]]:
        """For each level box (x0, y0, x1, y1), the tiles it intersects."""
        return [[self._piece(ty, tx) for ty, tx in tiles] for tiles in self._tiles(boxes)]

    def single_use(self, boxes: np.ndarray) -> set[tuple]:
        """Keys of the tiles that exactly one of ``boxes`` needs."""
        uses = Counter(("tile", ty, tx) for tiles in self._tiles(boxes) for ty, tx in tiles)
        return {key for key, n in uses.items() if n == 1}

    def _tiles(self, boxes: np.ndarray) -> Iterator[list[tuple[int, int]]]:
        last_x, last_y = self.tiles_across - 1, self.tiles_down - 1
        for x0, y0, x1, y1 in boxes.tolist():
            tx0, tx1 = min(max(x0 // self.tw, 0), last_x), min(max((x1 - 1) // self.tw, 0), last_x)
            ty0, ty1 = min(max(y0 // self.th, 0), last_y), min(max((y1 - 1) // self.th, 0), last_y)
            yield [(ty, tx) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The level's pixels in the box (x, y, w, h), decoded tile by tile (white where a tile
        holds nothing)."""
        out = np.full((h, w, 3), 255, np.uint8)
        for piece in self.plan(np.array([[x, y, x + w, y + h]]))[0]:
            paste(out, (x, y), piece.box, piece.load())
        return out

    def _piece(self, ty: int, tx: int) -> Piece:
        index = ty * self.tiles_across + tx
        return Piece(("tile", ty, tx), (tx * self.tw, ty * self.th, (tx + 1) * self.tw, (ty + 1) * self.th),
                     partial(self._decode, index))

    def _decode(self, index: int) -> np.ndarray:
        page = self._page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # sparse TIFF: a tile never written is background
            return np.full((self.th, self.tw, 3), 255, np.uint8)
        with self._lock:
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        tile = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
        return tile[0, :, :, :3]

    def close(self) -> None:
        self._tif.close()


class RegionSource:
    """Any slide: one ``read_region`` per chunk band (each backend tile decoded about once)."""

    def __init__(self, slide: Slide, level: int):
        self.slide, self.level = slide, level
        self.name = f"{slide.backend} read_region"
        self._serial = 0

    def plan(self, boxes: np.ndarray) -> list[list[Piece]]:
        """One band covering all boxes, or one piece per box when the band would be huge."""
        bx0, by0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
        bx1, by1 = int(boxes[:, 2].max()), int(boxes[:, 3].max())
        self._serial += 1
        if (bx1 - bx0) * (by1 - by0) <= MAX_BAND_PIXELS:
            band = self._piece((bx0, by0, bx1, by1))
            return [[band] for _ in range(len(boxes))]
        return [[self._piece(tuple(int(v) for v in b))] for b in boxes]

    def _piece(self, box: tuple[int, int, int, int]) -> Piece:
        x0, y0, x1, y1 = box
        return Piece(("region", self._serial, box), box,
                     partial(self.slide.read_level_region, self.level, x0, y0, x1 - x0, y1 - y0))

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The level's pixels in the box (x, y, w, h), white outside the level."""
        return self.slide.read_level_region(self.level, x, y, w, h)

    def single_use(self, boxes: np.ndarray) -> set[tuple]:
        """None: a chunk's patches share its band."""
        return set()

    def close(self) -> None:
        """The slide belongs to the caller."""


def paste(out: np.ndarray, origin: tuple[int, int], box: tuple[int, int, int, int], data: np.ndarray,
          limit: tuple[int, int] | None = None) -> None:
    """Copy the part of ``data`` (the pixels of level ``box``) that falls inside ``out`` (whose
    top-left is level pixel ``origin``). A decoded edge tile may be padded beyond the level
    (``limit``: its width and height) or hold less than its box: only what it holds is copied."""
    x, y = origin
    px0, py0 = box[:2]
    ix0, iy0 = max(x, px0), max(y, py0)
    ix1, iy1 = min(x + out.shape[1], box[2], px0 + data.shape[1]), min(y + out.shape[0], box[3], py0 + data.shape[0])
    if limit is not None:
        ix1, iy1 = min(ix1, limit[0]), min(iy1, limit[1])
    if ix0 < ix1 and iy0 < iy1:
        out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = data[iy0 - py0:iy1 - py0, ix0 - px0:ix1 - px0]


def open_source(slide: Slide, level: int) -> TiffTileSource | RegionSource:
    """The fastest source that can read ``level`` of ``slide``."""
    source = TiffTileSource.open(slide, level) or RegionSource(slide, level)
    log.debug("%s: reading level %d through %s", slide.path.name, level, source.name)
    return source
