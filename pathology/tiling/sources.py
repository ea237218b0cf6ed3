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
    borrow: Callable[[], np.ndarray] | None = None
    """Like ``load``, but into a buffer the calling thread reuses, valid until its next
    borrow: for pixels copied out at once (a tile decoded into a buffer that stays in the
    core's cache costs a fifth less than one decoded into fresh memory)."""

    def borrowed(self) -> np.ndarray:
        return self.borrow() if self.borrow else self.load()


class TiffTileSource:
    """Reads a level's compressed tiles straight from the TIFF (SVS, generic tiled TIFF).

    File reads happen on the calling thread (cheap, sequential); decoding happens in
    ``load``, which the reader runs on worker threads (the codecs release the GIL).
    """

    def __init__(self, tif, page, level_shape: tuple[int, int]):
        self._tif, self._page = tif, page
        self._lock = threading.Lock()
        self._local = threading.local()
        self.height, self.width = level_shape
        self.tw, self.th = page.tilewidth, page.tilelength
        self.tiles_across = math.ceil(self.width / self.tw)
        self.tiles_down = math.ceil(self.height / self.th)
        self.name = f"tifffile ({page.compression.name.lower()} tiles {self.tw}x{self.th})"
        self._jpeg = _jpeg_arguments(page)
        if self._jpeg is not None and not self._same_as_tifffile():
            self._jpeg = None

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
            paste(out, (x, y), piece.box, piece.borrowed(), (self.width, self.height))
        return out

    def _piece(self, ty: int, tx: int) -> Piece:
        index = ty * self.tiles_across + tx
        return Piece(("tile", ty, tx), (tx * self.tw, ty * self.th, (tx + 1) * self.tw, (ty + 1) * self.th),
                     partial(self._decode, index), partial(self._borrow, index))

    def _borrow(self, index: int) -> np.ndarray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = np.empty((self.th, self.tw, 3), np.uint8)
        return self._decode(index, buffer)

    def _decode(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tile ``index`` as RGB (into ``out``, a tile-sized buffer, where the codec can)."""
        data = self._read(index)
        if data is None:  # sparse TIFF: a tile never written is background
            return np.full((self.th, self.tw, 3), 255, np.uint8)
        return self._direct(data, out) if self._jpeg is not None else self._through_tifffile(data, index)

    def _read(self, index: int) -> bytes | None:
        offset, count = self._page.dataoffsets[index], self._page.databytecounts[index]
        if count == 0:
            return None
        with self._lock:
            fh = self._tif.filehandle
            fh.seek(offset)
            return fh.read(count)

    def _direct(self, data: bytes, out: np.ndarray | None = None) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpeg_decode(data, out=out, **self._jpeg)

    def _through_tifffile(self, data: bytes, index: int) -> np.ndarray:
        page = self._page
        return page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0][0, :, :, :3]

    def _same_as_tifffile(self) -> bool:
        """Whether the direct JPEG call decodes the level's first stored tile exactly as tifffile does."""
        first = next((i for i, n in enumerate(self._page.databytecounts) if n), None)
        if first is None:
            return True
        data = self._read(first)
        try:
            direct = self._direct(data)
        except Exception:  # noqa: BLE001 - a codec that refuses these arguments: tifffile's own path
            return False
        reference = self._through_tifffile(data, first)
        return direct.shape == reference.shape and bool(np.array_equal(direct, reference))

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
          limit: tuple[int, int]) -> None:
    """Copy the pixels of level ``box`` that ``data`` holds into ``out`` (whose top-left is level
    pixel ``origin``), within the level (``limit``: its width and height; a decoded edge tile
    may be padded beyond it). Where ``data`` holds less than its box, the rest is white."""
    x, y = origin
    bx0, by0 = box[:2]
    ix0, iy0 = max(x, bx0), max(y, by0)
    ix1, iy1 = min(x + out.shape[1], box[2], limit[0]), min(y + out.shape[0], box[3], limit[1])
    if ix0 >= ix1 or iy0 >= iy1:
        return
    hx1, hy1 = min(ix1, bx0 + data.shape[1]), min(iy1, by0 + data.shape[0])
    if hx1 < ix1 or hy1 < iy1:
        out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = 255
    if ix0 < hx1 and iy0 < hy1:
        out[iy0 - y:hy1 - y, ix0 - x:hx1 - x] = data[iy0 - by0:hy1 - by0, ix0 - bx0:hx1 - bx0]


def _jpeg_arguments(page) -> dict | None:
    """The arguments tifffile gives imagecodecs for this page's tiles when they are 8-bit,
    3-sample JPEG, so that a tile can be decoded into a buffer of ours; else None."""
    if page.compression != 7 or page.bitspersample != 8 or page.samplesperpixel != 3 or page.extrasamples:
        return None
    try:
        from tifffile.tifffile import jpeg_decode_colorspace
    except ImportError:  # a tifffile that moved it: its own decode path serves
        return None
    colorspace, outcolorspace = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples,
                                                       page.is_jfif)
    return {"tables": page.jpegtables, "header": page.jpegheader, "colorspace": colorspace,
            "outcolorspace": outcolorspace, "shape": (page.tilelength, page.tilewidth)}


def open_source(slide: Slide, level: int) -> TiffTileSource | RegionSource:
    """The fastest source that can read ``level`` of ``slide``."""
    source = TiffTileSource.open(slide, level) or RegionSource(slide, level)
    log.debug("%s: reading level %d through %s", slide.path.name, level, source.name)
    return source
