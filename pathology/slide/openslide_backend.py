"""OpenSlide backend: SVS, NDPI, MRXS, SCN, DICOM, generic tiled TIFF and more."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Slide, SlideError, level0_location, resolve_mpp, rgba_to_rgb
from .qupath import origin_from_properties


def can_open(path: Path) -> bool:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:  # noqa: BLE001 - detect_format raises anything on unreadable files in some versions
        return False


def _metadata_mpp(props) -> tuple[tuple[float, float] | None, str]:
    import openslide

    try:
        mx, my = float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        return None, ""
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "slide")
    return (mx, my), f"openslide {vendor} metadata"


class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
            found, source = _metadata_mpp(self._osr.properties)
            dims = list(self._osr.level_dimensions)
            self.qupath_origin = origin_from_properties(self._osr.properties)
        except Exception as exc:
            raise SlideError(path, f"OpenSlide cannot open it ({type(exc).__name__}: {exc})") from exc
        try:
            super().__init__(path, dims, resolve_mpp(path, found, source, mpp))
        except SlideError:
            self._osr.close()
            raise

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        # OpenSlide divides level-0 locations by the level's mean downsample; where that
        # is not an integer it shifts the level by a sub-pixel (interpolating). The
        # tiler's TIFF tile source reads such levels exactly.
        loc = level0_location(x, y, self._osr.level_downsamples[level])
        return rgba_to_rgb(np.asarray(self._osr.read_region(loc, level, (w, h))))

    def close(self) -> None:
        self._osr.close()
