"""Plain images (PNG, JPEG, TIFF strips) as single-level slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Slide, SlideError, resolve_mpp, rgba_to_rgb

EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def can_open(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def _dpi_mpp(info: dict) -> tuple[float, float] | None:
    dpi = info.get("dpi")
    if not dpi or not all(float(d) > 0 for d in dpi):
        return None
    return 25400.0 / float(dpi[0]), 25400.0 / float(dpi[1])


class ImageSlide(Slide):
    backend = "image"

    def __init__(self, path: str | Path, mpp: float | None = None):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # a plain-image "slide" is large on purpose
        try:
            with Image.open(path) as img:
                info = dict(img.info)
                img = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P", "PA") else img.convert("RGB")
                self._pixels = rgba_to_rgb(np.asarray(img))
        except Exception as exc:
            raise SlideError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
        h, w = self._pixels.shape[:2]
        super().__init__(path, [(w, h)], resolve_mpp(path, _dpi_mpp(info), "image dpi", mpp))

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        return self._pixels[y:y + h, x:x + w]

    def close(self) -> None:
        self._pixels = np.empty((0, 0, 3), np.uint8)
