"""The reduced levels of a pyramid, built strip by strip through raw temporary files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

THUMBNAIL_SIZE = 1024


class Spool:
    """An RGB image kept row by row in a raw temporary file, so a large level never sits in memory."""

    def __init__(self, path: Path, width: int):
        self.width, self.rows = width, 0
        self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()

    def append(self, rows: np.ndarray) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(rows[:, :self.width]).tobytes())
        self.rows += rows.shape[0]

    def read(self, r0: int, r1: int) -> np.ndarray:
        self._file.seek(r0 * self.width * 3)
        data = self._file.read((r1 - r0) * self.width * 3)
        return np.frombuffer(data, np.uint8).reshape(r1 - r0, self.width, 3)

    def close(self) -> None:
        self._file.close()


def shrink4(rgb: np.ndarray) -> np.ndarray:
    """4×4 block means (rounded) of an RGB image; a partial last block row/column is dropped."""
    h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    rows = rgb[0:h:4, :w].astype(np.uint16)
    for k in range(1, 4):
        rows += rgb[k:h:4, :w]
    quads = rows.reshape(h // 4, w // 4, 4, 3)  # strided adds: far faster than sum(axis=...)
    out = quads[:, :, 0] + quads[:, :, 1]
    out += quads[:, :, 2]
    out += quads[:, :, 3]
    out += 8
    out >>= 4
    return out.astype(np.uint8)


def shrink_spool(src: Spool, dst: Spool, rows: int = 1024) -> None:
    for r0 in range(0, src.rows, rows):
        dst.append(shrink4(src.read(r0, min(r0 + rows, src.rows))))


def level_tiles(spool: Spool, tile: int) -> Iterator[np.ndarray]:
    """Tiles of a spooled level, row by row, edges padded by repetition (no JPEG ringing)."""
    cols = math.ceil(spool.width / tile) * tile
    for r0 in range(0, spool.rows, tile):
        strip = spool.read(r0, min(r0 + tile, spool.rows))
        strip = np.pad(strip, ((0, tile - strip.shape[0]), (0, cols - spool.width), (0, 0)), mode="edge")
        for c0 in range(0, cols, tile):
            yield strip[:, c0:c0 + tile]


def thumbnail(spools: dict[int, Spool]) -> np.ndarray:
    """Whole slide with its long side at most :data:`THUMBNAIL_SIZE`, from the coarsest level that suffices."""
    ds = next((d for d in sorted(spools, reverse=True)
               if max(spools[d].width, spools[d].rows) >= THUMBNAIL_SIZE), min(spools))
    img = Image.fromarray(spools[ds].read(0, spools[ds].rows).copy())
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(img)
