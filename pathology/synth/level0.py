"""Level 0 of a synthetic slide as a stream of JPEG tiles, rendered ahead by workers.

A worker renders a block of a few tiles, JPEG-encodes each tile (exactly as
tifffile would, so the writer stores the bytes as they are) and shrinks the block
4× for the next pyramid level. By default two threads do this, which overlaps
rendering with encoding and writing; rendering is many short numpy calls that
threads cannot run in parallel under the GIL, so large slides are faster with
worker processes (``processes`` > 0; the caller's main module must then be
import-safe, as for any ``spawn`` pool).
"""

from __future__ import annotations

import math
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from itertools import islice

import imagecodecs
import numpy as np

from .config import SynthConfig
from .fields import SlideFields
from .pyramid import Spool, shrink4
from .render import SlideRenderer

BLOCK_PIXELS = 1024  # width of a render block: a few tiles, small enough to stay in cache
THREADS = 2

Box = tuple[int, int, int, int]
Progress = Callable[[int, int], None]


def jpeg_options(quality: int) -> dict:
    """What tifffile passes to the JPEG encoder for an RGB page with ``compression="jpeg"``:
    YCbCr with 2×2 chroma subsampling, as Aperio scanners write."""
    return dict(level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))


class BlockWorker:
    """Renders a box, returns its JPEG-encoded tiles (left to right) and its 4× reduction."""

    def __init__(self, renderer: SlideRenderer):
        self.renderer = renderer
        self.tile = renderer.config.tile_size
        self.options = jpeg_options(renderer.config.quality)

    def __call__(self, box: Box) -> tuple[list[bytes], np.ndarray]:
        pixels = self.renderer.render(*box)
        tiles = [imagecodecs.jpeg_encode(np.ascontiguousarray(pixels[:, c:c + self.tile]), **self.options)
                 for c in range(0, box[2], self.tile)]
        return tiles, shrink4(pixels)


_WORKER: BlockWorker | None = None


def _start_process(config: SynthConfig, fields: SlideFields) -> None:
    global _WORKER
    _WORKER = BlockWorker(SlideRenderer(config, fields))


def _in_process(box: Box) -> tuple[list[bytes], np.ndarray]:
    assert _WORKER is not None, "worker process was not initialised"
    return _WORKER(box)


def _pool(renderer: SlideRenderer, processes: int) -> tuple[Executor, Callable]:
    if processes > 0:
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_process, initargs=(renderer.config, renderer.fields))
        return pool, _in_process
    return ThreadPoolExecutor(THREADS), BlockWorker(renderer)


def level0_tiles(renderer: SlideRenderer, spool: Spool, progress: Progress | None,
                 processes: int = 0) -> Iterator[bytes]:
    """JPEG tiles of level 0 in row-major order; appends the 4× reduction of each tile row
    to ``spool`` before that row's last tile is handed out (the TIFF writer stops pulling
    after the last tile)."""
    cfg = renderer.config
    t, width, height = cfg.tile_size, cfg.width, cfg.height
    step = max(t, BLOCK_PIXELS // t * t)
    boxes = [(x0, y0, min(step, math.ceil((width - x0) / t) * t), t)
             for y0 in range(0, height, t) for x0 in range(0, width, step)]
    todo = iter(boxes)
    pool, work = _pool(renderer, processes)
    with pool:
        ahead = deque(pool.submit(work, box) for box in islice(todo, 4 * max(processes, THREADS)))
        shrunk: list[np.ndarray] = []
        for x0, y0, bw, _ in boxes:
            tiles, small = ahead.popleft().result()
            if (box := next(todo, None)) is not None:
                ahead.append(pool.submit(work, box))
            shrunk.append(small)
            if x0 + bw >= width:
                spool.append(np.concatenate(shrunk, axis=1)[:min(t, height - y0) // 4])
                shrunk = []
                if progress:
                    progress(min(y0 + t, height), height)
            yield from tiles
