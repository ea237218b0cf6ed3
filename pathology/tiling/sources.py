"""Where patch pixels come from: the compressed tiles of a TIFF pyramid, or a slide's
``read_region`` for every other format.

A source plans, for each level box a patch needs, the *pieces* that cover it:
rectangles in level pixels with a function that loads their pixels. The reader caches pieces, so a
tile shared by neighbouring patches is decoded once. ``region`` reads one box outright (the
tiler's thumbnail strips).

Tiles are decoded strictly, at least as strictly as OpenSlide: a tile the decoder finds
corrupt raises :class:`CorruptTileError`, naming the level, the tile's column and row and its
offset in the file. JPEG tiles go through libjpeg-turbo in strict mode (simplejpeg), where
libjpeg's warnings ("Corrupt JPEG data: premature end of data segment", "bad Huffman code",
"extraneous bytes before marker") are errors, as OpenSlide makes them; libjpeg would otherwise
fill the damaged blocks with garbage and carry on. Every other codec's errors are raised, and
a tile that decodes to another size than the TIFF's is corrupt too. A JPEG level the strict
decoder cannot reproduce exactly is read through the slide's backend instead.

A JPEG level can also be read *shrunk* by 2, 4 or 8 (:meth:`TiffTileSource.open` with
``shrink``): libjpeg-turbo decodes each tile straight to that scale from its low-frequency DCT
coefficients, in 0.75x the time of a full decode (the entropy decoding is the same) and with no
resampling after it. Each shrunk pixel is the low-pass of its k×k block: on real H&E (CMU-1) it
differs from the exact k×k box average by 0.1 grey levels on average and 99% of values by at
most 2 (sharp edges by up to ~20, as a band-limited filter differs from a box), less than the
bag's JPEG q90 storage changes (``tests/pathology/test_tiling_grid_reader.py``).
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
import simplejpeg

from ..errors import storage_errors
from ..slide import Slide, SlideError

log = logging.getLogger(__name__)

SOI = b"\xff\xd8"
# APP14 "Adobe" with transform 0: tells libjpeg the three components are R, G, B, not YCbCr
# (what tifffile tells it for TIFFs with photometric RGB, as Aperio writes them).
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
JCS_RGB, JCS_YCBCR = 2, 3
JPEG_COMPRESSIONS = (6, 7)  # old-style and new-style JPEG in TIFF
CHECK_TILES = 8  # tiles tried when checking that the strict decoder gives tifffile's pixels
SHRINKS = (2, 4, 8)  # the scales libjpeg decodes to exactly, from the DCT coefficients alone


class CorruptTileError(SlideError):
    """A tile of the slide that cannot be decoded cleanly; ``tile`` says which (for the bag's
    record of bad tiles)."""

    def __init__(self, path: str, level: int, column: int, row: int, offset: int, nbytes: int, detail: str):
        self.tile = {"level": level, "column": column, "row": row, "offset": offset, "bytes": nbytes,
                     "error": " ".join(str(detail).split())}
        super().__init__(path, f"corrupt tile at level {level}, column {column}, row {row} "
                               f"(file offset {offset}, {nbytes} bytes): {self.tile['error']}")

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

    def __init__(self, tif, page, level_shape: tuple[int, int], level: int, path: str, shrink: int = 1):
        self._tif, self._page = tif, page
        self._lock = threading.Lock()
        self._local = threading.local()
        self.level, self.path, self.shrink = level, path, shrink
        # in the pixels this source gives: the level's, or the level shrunk by ``shrink``
        self.height, self.width = level_shape[0] // shrink, level_shape[1] // shrink
        self.tw, self.th = page.tilewidth // shrink, page.tilelength // shrink
        self.tiles_across = math.ceil(page.imagewidth / page.tilewidth)
        self.tiles_down = math.ceil(page.imagelength / page.tilelength)
        self.name = f"tifffile ({page.compression.name.lower()} tiles {page.tilewidth}x{page.tilelength}" \
                    + (f", decoded at 1/{shrink})" if shrink > 1 else ")")
        self._jpeg = StrictJpeg.for_page(page)

    @classmethod
    def open(cls, slide: Slide, level: int, shrink: int = 1) -> TiffTileSource | None:
        """The tile source for ``level`` of ``slide`` (shrunk by ``shrink``, one of
        :data:`SHRINKS`, when given), or None when the file is not a plain tiled RGB TIFF pyramid
        whose levels line up with the slide's (then fall back), or its tiles cannot be shrunk
        while decoding (JPEG tiles whose sides ``shrink`` divides)."""
        import tifffile

        try:
            tif = tifffile.TiffFile(slide.path)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the backend's read_region serves
            return None
        try:
            w, h = slide.level_dimensions[level]
            if slide.tiff_levels:  # the backend knows where each level is (OME-TIFF)
                series, index = slide.tiff_levels[level]
                page = tif.series[series].levels[index].pages[0]
            else:
                levels = tif.series[0].levels
                page = levels[level].pages[0] if len(levels) == slide.level_count else None
            if (page is None or not page.is_tiled or page.shape[:2] != (h, w) or page.dtype != np.uint8
                    or page.samplesperpixel not in (3, 4) or page.planarconfig != 1 or page.tiledepth != 1):
                tif.close()
                return None
            _ = page.decode  # resolves the codec now: an unknown compression falls back here
        except Exception:  # noqa: BLE001 - any layout tifffile cannot decode falls back
            tif.close()
            return None
        source = cls(tif, page, (h, w), level, str(slide.path), shrink)
        if page.compression in JPEG_COMPRESSIONS and (source._jpeg is None or not source._same_as_tifffile()):
            log.debug("%s: level %d's JPEG tiles are not decoded strictly here: read through %s", slide.path.name,
                      level, slide.backend)
            source.close()
            return None
        if shrink > 1 and not source._shrinks():
            source.close()
            return None
        return source

    def plan(self, boxes: np.ndarray) -> list[list[Piece]]:
        """For each level box (x0, y0, x1, y1), the tiles it intersects."""
        return [[self._piece(ty, tx) for ty, tx in tiles] for tiles in self._tiles(boxes)]

    def single_use(self, boxes: np.ndarray) -> set[tuple]:
        """Keys of the tiles that exactly one of ``boxes`` needs."""
        uses = Counter(("tile", ty, tx) for tiles in self._tiles(boxes) for ty, tx in tiles)
        return {key for key, n in uses.items() if n == 1}

    def _tiles(self, boxes: np.ndarray) -> Iterator[list[tuple[int, int]]]:
        return grid_cells(boxes, (self.tw, self.th), (self.tiles_across - 1, self.tiles_down - 1))

    def region(self, x: int, y: int, w: int, h: int, bad: list[dict] | None = None) -> np.ndarray:
        """The level's pixels in the box (x, y, w, h), decoded tile by tile (white where a tile
        holds nothing). With a list ``bad``, a corrupt tile is left white and recorded there
        instead of raising."""
        out = np.full((h, w, 3), 255, np.uint8)
        for piece in self.plan(np.array([[x, y, x + w, y + h]]))[0]:
            try:
                pixels = piece.borrowed()
            except CorruptTileError as exc:
                if bad is None:
                    raise
                bad.append(exc.tile)
                continue
            paste(out, (x, y), piece.box, pixels, (self.width, self.height))
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
        """Tile ``index`` as RGB (into ``out``, a tile-sized buffer, where the codec can);
        :class:`CorruptTileError` if the decoder finds it corrupt."""
        data = self._read(index)
        if data is None:  # sparse TIFF: a tile never written is background
            return np.full((self.th, self.tw, 3), 255, np.uint8)
        try:
            tile = self._jpeg(data, out, self.shrink) if self._jpeg is not None \
                else self._through_tifffile(data, index)
        except Exception as exc:  # every codec raises its own types: all mean "corrupt"
            raise self._corrupt(index, str(exc) or type(exc).__name__) from exc
        if tile.shape[:2] != (self.th, self.tw):
            raise self._corrupt(index, f"decodes to {tile.shape[1]}x{tile.shape[0]} px, the TIFF says "
                                       f"{self.tw}x{self.th}")
        return tile

    def _corrupt(self, index: int, detail: str) -> CorruptTileError:
        row, column = divmod(index, self.tiles_across)
        return CorruptTileError(self.path, self.level, column, row, int(self._page.dataoffsets[index]),
                                int(self._page.databytecounts[index]), detail)

    def _read(self, index: int) -> bytes | None:
        offset, count = self._page.dataoffsets[index], self._page.databytecounts[index]
        if count == 0:
            return None
        with self._lock, storage_errors(self.path, "read"):
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        if len(data) != count:
            raise self._corrupt(index, f"the file ends {count - len(data)} bytes before the tile does")
        return data

    def _through_tifffile(self, data: bytes, index: int) -> np.ndarray:
        page = self._page
        return page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0][0, :, :, :3]

    def _shrinks(self) -> bool:
        """Whether this source's tiles decode at 1/``shrink`` to exactly its tile size (JPEG
        tiles whose sides ``shrink`` divides), on the first stored tile that decodes."""
        page = self._page
        if (self.shrink not in SHRINKS or self._jpeg is None or page.tilewidth % self.shrink
                or page.tilelength % self.shrink):
            return False
        for index in [i for i, n in enumerate(page.databytecounts) if n][:CHECK_TILES]:
            try:
                return self._jpeg(self._read(index), shrink=self.shrink).shape[:2] == (self.th, self.tw)
            except Exception:  # noqa: BLE001 - a corrupt tile: another decides
                continue
        return False

    def _same_as_tifffile(self) -> bool:
        """Whether the strict JPEG decoder gives exactly tifffile's pixels, on the first stored
        tile it decodes (a corrupt one is passed over, up to :data:`CHECK_TILES`)."""
        stored = [i for i, n in enumerate(self._page.databytecounts) if n][:CHECK_TILES]
        if not stored:
            return True
        for index in stored:
            data = self._read(index)
            try:
                direct = self._jpeg(data)
            except Exception:  # noqa: BLE001 - a corrupt tile, or a stream the strict decoder refuses: try another
                continue
            try:
                reference = self._through_tifffile(data, index)
            except Exception:  # noqa: BLE001 - tifffile cannot decode it either: another tile decides
                continue
            return direct.shape == reference.shape and bool(np.array_equal(direct, reference))
        return False

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

    def region(self, x: int, y: int, w: int, h: int, bad: list[dict] | None = None) -> np.ndarray:
        """The level's pixels in the box (x, y, w, h), white outside the level. With a list
        ``bad``, a box the backend cannot read is left white and recorded there."""
        try:
            return self.slide.read_level_region(self.level, x, y, w, h)
        except SlideError as exc:
            if bad is None:
                raise
            bad.append(self.unreadable(x, y, w, h, exc))
            return np.full((h, w, 3), 255, np.uint8)

    def unreadable(self, x: int, y: int, w: int, h: int, exc: SlideError) -> dict:
        """The record of a box the backend could not read (it names no tile)."""
        return {"level": self.level, "box": [x, y, w, h], "error": getattr(exc, "message", str(exc))}

    def single_use(self, boxes: np.ndarray) -> set[tuple]:
        """None: a chunk's patches share its band."""
        return set()

    def close(self) -> None:
        """The slide belongs to the caller."""


class ChunkSource(RegionSource):
    """A slide stored in chunks (OME-Zarr): one piece per chunk a patch touches, read whole.

    Each chunk is decoded once, by the reader's worker threads in parallel, and shared by the
    patches over it, as the tiles of a TIFF are; reads of a whole chunk are the ones the store
    serves without assembling or cutting."""

    def __init__(self, slide: Slide, level: int, chunk: tuple[int, int]):
        super().__init__(slide, level)
        self.cw, self.ch = chunk
        self.width, self.height = slide.level_dimensions[level]
        self.name = f"{slide.backend} chunks {self.cw}x{self.ch}"

    @classmethod
    def open(cls, slide: Slide, level: int) -> ChunkSource | None:
        chunk = slide.chunk_shape(level)
        return cls(slide, level, chunk) if chunk else None

    def plan(self, boxes: np.ndarray) -> list[list[Piece]]:
        """For each level box (x0, y0, x1, y1), the chunks it intersects."""
        return [[self._chunk(cy, cx) for cy, cx in chunks] for chunks in self._chunks(boxes)]

    def single_use(self, boxes: np.ndarray) -> set[tuple]:
        """Keys of the chunks that exactly one of ``boxes`` needs."""
        uses = Counter(("chunk", cy, cx) for chunks in self._chunks(boxes) for cy, cx in chunks)
        return {key for key, n in uses.items() if n == 1}

    def region(self, x: int, y: int, w: int, h: int, bad: list[dict] | None = None) -> np.ndarray:
        """The level's pixels in the box (x, y, w, h), assembled chunk by chunk (white outside the
        level). With a list ``bad``, a chunk that cannot be read is left white and recorded there."""
        out = np.full((h, w, 3), 255, np.uint8)
        for piece in self.plan(np.array([[x, y, x + w, y + h]]))[0]:
            try:
                pixels = piece.load()
            except SlideError as exc:
                if bad is None:
                    raise
                bx0, by0, bx1, by1 = piece.box
                bad.append(self.unreadable(bx0, by0, bx1 - bx0, by1 - by0, exc))
                continue
            paste(out, (x, y), piece.box, pixels, (self.width, self.height))
        return out

    def _chunks(self, boxes: np.ndarray) -> Iterator[list[tuple[int, int]]]:
        return grid_cells(boxes, (self.cw, self.ch), ((self.width - 1) // self.cw, (self.height - 1) // self.ch))

    def _chunk(self, cy: int, cx: int) -> Piece:
        x0, y0 = cx * self.cw, cy * self.ch
        x1, y1 = min(x0 + self.cw, self.width), min(y0 + self.ch, self.height)
        return Piece(("chunk", cy, cx), (x0, y0, x1, y1), partial(self.slide.read_chunk, self.level, cx, cy))


def grid_cells(boxes: np.ndarray, cell: tuple[int, int], last: tuple[int, int]) -> Iterator[list[tuple[int, int]]]:
    """For each box (x0, y0, x1, y1), the (row, column) of every cell of a ``cell``-sized grid
    (tiles, chunks) it intersects, clamped to the last column and row ``last``."""
    (cw, ch), (last_x, last_y) = cell, last
    for x0, y0, x1, y1 in boxes.tolist():
        cx0, cx1 = min(max(x0 // cw, 0), last_x), min(max((x1 - 1) // cw, 0), last_x)
        cy0, cy1 = min(max(y0 // ch, 0), last_y), min(max((y1 - 1) // ch, 0), last_y)
        yield [(cy, cx) for cy in range(cy0, cy1 + 1) for cx in range(cx0, cx1 + 1)]


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


class StrictJpeg:
    """Decodes a page's 8-bit, 3-sample JPEG tiles with libjpeg-turbo in strict mode (any
    warning is an error), into a buffer of ours. A TIFF tile is an abbreviated JPEG stream:
    the page's shared tables (and, for RGB photometry, an Adobe marker saying so) are put in
    front of it to make a complete one."""

    def __init__(self, prefix: bytes):
        self.prefix = prefix

    @classmethod
    def for_page(cls, page) -> StrictJpeg | None:
        """The decoder for ``page``'s tiles, or None when they are not tiles it can decode."""
        if page.compression != 7 or page.bitspersample != 8 or page.samplesperpixel != 3 or page.extrasamples:
            return None
        try:
            from tifffile.tifffile import jpeg_decode_colorspace
        except ImportError:  # a tifffile that moved it: the backend reads the level
            return None
        colorspace, _ = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples,
                                               page.is_jfif)
        if colorspace not in (None, JCS_RGB, JCS_YCBCR) or page.jpegheader:
            return None
        tables = page.jpegtables or b""
        if tables and not (tables.startswith(SOI) and tables.endswith(b"\xff\xd9")):
            return None
        return cls(SOI + (ADOBE_RGB if colorspace == JCS_RGB else b"") + tables[2:-2])

    def __call__(self, data: bytes, out: np.ndarray | None = None, shrink: int = 1) -> np.ndarray:
        """The tile's pixels (into ``out`` if given), decoded at 1/``shrink`` of its size."""
        if not data.startswith(SOI):
            raise ValueError("the tile does not start with a JPEG start-of-image marker")
        stream = self.prefix + data[2:] if len(self.prefix) > 2 else data
        if shrink == 1:
            return simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=out, strict=True)
        # libjpeg picks the smallest of its scales at least this size: exactly 1/shrink
        width, height, _, _ = simplejpeg.decode_jpeg_header(stream)
        return simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=out, strict=True,
                                      min_width=-(-width // shrink), min_height=-(-height // shrink))


def open_source(slide: Slide, level: int, shrink: int = 1) -> TiffTileSource | RegionSource | None:
    """The fastest source that can read ``level`` of ``slide``: its TIFF tiles, its chunks, or
    its backend's ``read_region``. With ``shrink`` > 1: its JPEG tiles decoded at that scale,
    or None when they cannot be."""
    if shrink > 1:
        return TiffTileSource.open(slide, level, shrink)
    source = TiffTileSource.open(slide, level) or ChunkSource.open(slide, level) or RegionSource(slide, level)
    log.debug("%s: reading level %d through %s", slide.path.name, level, source.name)
    return source
