"""Read the grid's patches fast: each needed tile decoded once, in parallel threads,
one chunk ahead of the consumer, never a whole level in memory.

Patches arrive in grid order (sorted by y, then x), so once a chunk starts at tile
row r no later patch needs a row above r: pieces above it are dropped from the cache.

A level whose JPEG tiles libjpeg can decode at 1/2, 1/4 or 1/8 of their size is read that way when
every patch is exactly that reduction of its level box, on the reduced pixel grid (:func:`shrink_for`;
e.g. 0.5 µm/px patches of a 0.25 µm/px slide): the reduced level then serves as a level of the
slide read 1:1, with decodes a quarter faster and no resampling. Other reductions are
resampled from full decodes, as before: interpolating a reduced level would blur them.

A corrupt tile (:class:`pathology.tiling.sources.CorruptTileError`) fails the read, or, with
``on_bad_tile="skip"``, leaves every patch that touches it white and listed in
:attr:`PatchReader.bad_patches`, for the caller to drop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError
from ..slide import Slide, SlideError
from .grid import Grid
from .sources import SHRINKS, CorruptTileError, Piece, RegionSource, open_source, paste

BAD_TILE_POLICIES = ("fail", "skip")

T = TypeVar("T")


def level_boxes(coords: np.ndarray, size_level0: tuple[float, float],
                downsample_xy: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Exact (float) and covering integer boxes (x0, y0, x1, y1) of patches at a level."""
    dx, dy = downsample_xy
    exact = np.stack([coords[:, 0] / dx, coords[:, 1] / dy,
                      (coords[:, 0] + size_level0[0]) / dx, (coords[:, 1] + size_level0[1]) / dy], axis=1)
    covering = np.concatenate([np.floor(exact[:, :2] + 1e-6), np.ceil(exact[:, 2:] - 1e-6)], axis=1)
    return exact, covering.astype(np.int64)


def resize_patch(pixels: np.ndarray, box: tuple[float, float, float, float], size: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Cut the sub-pixel ``box`` out of ``pixels`` and resample it to ``size``², into ``out``
    if given.

    A reduction whose box starts on a whole pixel (every read of level 0) averages the area
    each output pixel covers, fractional edges included, whatever the factor: a 0.2527 µm/px
    scan's 0.5 µm/px patches get the filter a 0.25 µm/px scan's exact 2x patches get (OpenCV's
    area filter, 3x faster than Lanczos). Other boxes (a level whose downsample is not an integer,
    enlargements) are resampled with Lanczos.
    """
    out = np.empty((size, size, 3), np.uint8) if out is None else out
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = box
    if (w, h) == (size, size) and max(abs(x0), abs(y0), abs(x1 - w), abs(y1 - h)) < 1e-6:
        out[...] = pixels
        return out
    fx, fy = (x1 - x0) / size, (y1 - y0) / size
    ix, iy = round(x0), round(y0)
    if fx > 1 + 1e-6 and fy > 1 + 1e-6 and max(abs(x0 - ix), abs(y0 - iy)) < 1e-6:
        # the scale is given, not the output size, so OpenCV keeps it exact: output pixel j covers
        # [j·fx, (j+1)·fx) of the box; its integer-factor path is ~5x faster than PIL's reduce
        src = pixels[iy:iy + math.ceil(y1 - iy - 1e-6), ix:ix + math.ceil(x1 - ix - 1e-6)]
        done = cv2.resize(src, None, fx=1 / fx, fy=1 / fy, interpolation=cv2.INTER_AREA)
        out[...] = done[:size, :size]  # (the rounded output size may hold one more pixel)
        return out
    out[...] = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS, box=box))
    return out


def shrink_for(coords: np.ndarray, size_level0: tuple[float, float], downsample_xy: tuple[float, float],
               patch_size: int) -> int:
    """The largest of :data:`pathology.tiling.sources.SHRINKS` by which every patch's level box
    (level-0 ``coords`` and ``size_level0``, at a level of ``downsample_xy``) is exactly a
    ``patch_size`` square of whole reduced pixels; 1 when none is."""
    dx, dy = downsample_xy
    for k in sorted(SHRINKS, reverse=True):
        exact, _ = level_boxes(coords, size_level0, (dx * k, dy * k))
        if (np.abs(exact - np.round(exact)).max(initial=0.0) < 1e-6
                and np.allclose(exact[:, 2:] - exact[:, :2], patch_size, rtol=0, atol=1e-6)):
            return k
    return 1


class PatchReader:
    """Iterates a slide's grid patches as uint8 batches (n, S, S, 3) at the target µm/px."""

    def __init__(self, slide: Slide, grid: Grid, patch_size: int, threads: int = 2, chunk: int = 64,
                 on_bad_tile: str = "fail"):
        if on_bad_tile not in BAD_TILE_POLICIES:
            raise InputError(f"--on-bad-tile must be one of {', '.join(BAD_TILE_POLICIES)}, got {on_bad_tile!r}")
        self.slide, self.grid, self.size = slide, grid, patch_size
        self.threads, self.chunk = max(1, threads), max(1, chunk)
        self.skip = on_bad_tile == "skip"
        self.bad_patches: dict[int, dict] = {}  # grid index -> the bad tile it touches (skip)
        self._bad_lock = threading.Lock()
        dx, dy = slide.level_downsample_xy(grid.read_level)
        lw, lh = slide.level_dimensions[grid.read_level]
        shrink = shrink_for(grid.coords, grid.patch_size_level0, (dx, dy), patch_size)
        self.source = open_source(slide, grid.read_level, shrink) if shrink > 1 else None
        if self.source is None:
            shrink, self.source = 1, open_source(slide, grid.read_level)
        self.shrink = shrink
        self.limit = (lw // shrink, lh // shrink)  # the read level's size in the source's pixels
        self.exact, self.covering = level_boxes(grid.coords, grid.patch_size_level0, (dx * shrink, dy * shrink))
        cv2.setNumThreads(1)  # the reader's own threads parallelize; nested OpenCV threads would thrash

    @property
    def source_name(self) -> str:
        return self.source.name

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index of the first patch, batch) for all patches in grid order."""
        yield from self.read(np.arange(len(self.grid.coords)))

    def read(self, indices: np.ndarray, transform: Callable[[np.ndarray], T] | None = None
             ) -> Iterator[tuple[int, np.ndarray | T]]:
        """Yield (position in ``indices`` of the first patch, batch) for the patches
        ``indices`` (ascending), in order. ``transform`` (batch → anything) runs on the
        worker threads, so per-patch work such as normalizing and compressing runs in
        parallel with decoding; its result is yielded instead of the batch.

        Work is handed to the threads in a few groups per chunk, not per tile: a task
        per 0.3-ms tile would spend a third of the time in the executor. A piece that only
        one patch needs is decoded by that patch's own task, right before it is copied and
        resampled, while its pixels are still in the core's cache (decoding a whole group of
        tiles first, to memory, costs a quarter more); shared pieces are decoded once, ahead,
        and kept until no later patch needs them.
        """
        cache: dict[tuple, _Slot] = {}
        single = self.source.single_use(self.covering[indices])
        with ThreadPoolExecutor(self.threads, thread_name_prefix="decode") as pool:
            pending: list[tuple[int, Future]] = []
            for start in range(0, len(indices), self.chunk):
                idx = indices[start:start + self.chunk]
                boxes = self.covering[idx]
                top = int(boxes[:, 1].min())
                for key in [k for k, slot in cache.items() if slot.piece.box[3] <= top]:
                    del cache[key]
                plans = self.source.plan(boxes)
                new = list({p.key: p for plan in plans for p in plan
                            if p.key not in cache and p.key not in single}.values())
                for group in _split(new, self.threads):
                    loaded = pool.submit(_load_all, group)
                    cache.update({p.key: _Slot(p, loaded, j) for j, p in enumerate(group)})
                work = [(int(i), [cache.get(p.key, p) for p in plan]) for i, plan in zip(idx, plans)]
                offset = start
                submitted = []
                for part in _split(work, self.threads):
                    submitted.append((offset, pool.submit(self._assemble_all, part, transform)))
                    offset += len(part)
                yield from ((o, f.result()) for o, f in pending)
                pending = submitted
            yield from ((o, f.result()) for o, f in pending)

    def _assemble_all(self, work: list[tuple[int, list[_Slot | Piece]]], transform):
        batch = np.empty((len(work), self.size, self.size, 3), np.uint8)
        for j, (i, slots) in enumerate(work):
            self._assemble(i, slots, batch[j])
        return transform(batch) if transform else batch

    def _assemble(self, i: int, sources: list[_Slot | Piece], out: np.ndarray) -> None:
        """Copy patch ``i``'s covering box out of its pieces (white outside the level) and
        resample it into ``out``. Runs on a worker thread: it decodes its own pieces one at a
        time, each copied out at once; the shared ones it waits for were submitted earlier,
        so they are already running. A piece that cannot be read fails the read, or (skip)
        leaves the patch white and listed in :attr:`bad_patches`."""
        x0, y0, x1, y1 = (int(v) for v in self.covering[i])
        limit = lw, lh = self.limit
        shape = (y1 - y0, x1 - x0, 3)
        ex = self.exact[i]
        # the box is the patch itself (a level read 1:1): its pieces are pasted straight into it
        direct = shape == out.shape and np.array_equal(ex, self.covering[i])
        # The pieces tile the box within the level (paste whitens what a short piece lacks).
        inside = x0 >= 0 and y0 >= 0 and x1 <= lw and y1 <= lh
        region = out if direct else np.empty(shape, np.uint8)
        if not inside:
            region[...] = 255
        for item in sources:
            piece = item.piece if isinstance(item, _Slot) else item
            try:
                pixels = item.pixels() if isinstance(item, _Slot) else item.borrowed()
            except SlideError as exc:
                if not self.skip:
                    raise
                if not self._readable_alone(i, piece, region, (x0, y0), limit, exc):
                    out[...] = 255
                    return
                continue
            paste(region, (x0, y0), piece.box, pixels, limit)
        if not direct:
            resize_patch(region, (ex[0] - x0, ex[1] - y0, ex[2] - x0, ex[3] - y0), self.size, out)

    def _readable_alone(self, i: int, piece: Piece, region: np.ndarray, origin: tuple[int, int],
                        limit: tuple[int, int], exc: SlideError) -> bool:
        """Skip mode, after ``piece`` failed for patch ``i``: a backend band that failed is
        read again as this patch's own box (one bad tile should not cost the band's other
        patches). False, with the patch recorded as bad, when the patch cannot be read."""
        if isinstance(exc, CorruptTileError):
            record = exc.tile
        else:
            x0, y0 = origin
            h, w = region.shape[:2]
            bad: list[dict] = []
            pixels = self.source.region(x0, y0, w, h, bad) if isinstance(self.source, RegionSource) else None
            if pixels is not None and not bad:
                region[...] = pixels
                return True
            record = bad[0] if bad else {"level": self.grid.read_level, "box": list(piece.box),
                                         "error": getattr(exc, "message", str(exc))}
        with self._bad_lock:
            self.bad_patches[i] = record
        return False

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class _Slot:
    """A cached piece: which group-load future holds its pixels, and where."""

    piece: Piece
    group: Future
    index: int

    def pixels(self) -> np.ndarray:
        """The piece's pixels; the error that loading it raised, if it did."""
        loaded = self.group.result()[self.index]
        if isinstance(loaded, SlideError):
            raise loaded
        return loaded


def _load_all(pieces: list[Piece]) -> list[np.ndarray | SlideError]:
    """Each piece's pixels, or the error reading it raised (for the patches that need it to raise)."""
    out: list[np.ndarray | SlideError] = []
    for p in pieces:
        try:
            out.append(p.load())
        except SlideError as exc:
            out.append(exc)
    return out


def _split(items: list, parts: int) -> list[list]:
    """``items`` in at most ``parts`` contiguous, near-equal, non-empty runs."""
    size = -(-len(items) // max(1, parts)) if items else 1
    return [items[k:k + size] for k in range(0, len(items), size)]
