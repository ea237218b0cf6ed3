"""tiffslide backend: pure-Python TIFF-family reader (SVS, generic TIFF, NDPI, SCN, also fsspec URLs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Slide, SlideError, level0_location, resolve_mpp, rgba_to_rgb
from .qupath import openslide_origin


def can_open(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class TiffSlideSlide(Slide):
    backend = "tiffslide"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tiffslide

        try:
            self._ts = tiffslide.TiffSlide(str(path))
            props = self._ts.properties
            dims = list(self._ts.level_dimensions)
        except Exception as exc:
            raise SlideError(path, f"tiffslide cannot open it ({type(exc).__name__}: {exc})") from exc
        mx, my = props.get(tiffslide.PROPERTY_NAME_MPP_X), props.get(tiffslide.PROPERTY_NAME_MPP_Y)
        found = (float(mx), float(my)) if mx and my else None
        vendor = props.get(tiffslide.PROPERTY_NAME_VENDOR) or "tiff"
        self.qupath_origin = openslide_origin(path)  # the same file's frame in QuPath, whoever reads it here
        try:
            super().__init__(path, dims, resolve_mpp(path, found, f"tiffslide {vendor} metadata", mpp))
        except SlideError:
            self._ts.close()
            raise

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        loc = level0_location(x, y, self._ts.level_downsamples[level])
        arr = self._ts.read_region(loc, level, (w, h), as_array=True)
        return rgba_to_rgb(np.asarray(arr))

    def close(self) -> None:
        self._ts.close()
