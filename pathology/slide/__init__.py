"""Open whole-slide images through one protocol, whatever the backend.

``open_slide(path, backend="auto")`` tries the backends in registry order and
returns the first that can open the file; naming a backend forces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import image_backend, ometiff_backend, openslide_backend, tiffslide_backend
from .base import Mpp, Slide, SlideError, resolve_mpp, rgba_to_rgb

__all__ = [
    "BACKENDS",
    "FOLDER_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "Mpp",
    "Slide",
    "SlideError",
    "open_slide",
    "resolve_mpp",
    "rgba_to_rgb",
]

# Extensions a folder scan picks up as slides; the folder ones are slides too (OME-Zarr).
FOLDER_EXTENSIONS = {".zarr"}
SLIDE_EXTENSIONS = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".dcm", ".vms", ".vmu",
                    ".bif", ".svslide", ".png", ".jpg", ".jpeg", *FOLDER_EXTENSIONS}


@dataclass(frozen=True)
class Backend:
    name: str
    can_open: Callable[[Path], bool]
    factory: Callable[..., Slide]


# Order matters for "auto": OME-TIFF first (OpenSlide opens it as a generic TIFF with one
# level and no µm/px; only files with OME-XML are claimed), then OpenSlide, which knows the
# most vendor formats, tiffslide, which reads any TIFF (also plain strip TIFFs OpenSlide
# refuses), and PIL for plain images.
BACKENDS: dict[str, Backend] = {
    "ometiff": Backend("ometiff", ometiff_backend.can_open, ometiff_backend.OmeTiffSlide),
    "openslide": Backend("openslide", openslide_backend.can_open, openslide_backend.OpenSlideSlide),
    "tiffslide": Backend("tiffslide", tiffslide_backend.can_open, tiffslide_backend.TiffSlideSlide),
    "image": Backend("image", image_backend.can_open, image_backend.ImageSlide),
}


def open_slide(path: str | Path, backend: str = "auto", mpp: float | None = None,
               probe: bool = True) -> Slide:
    """Open ``path`` with ``backend`` (``auto`` picks the first that can open it).

    ``mpp`` overrides the metadata's µm/px. With ``probe`` a corner of the smallest
    level is decoded at once, so a corrupt file fails here with a clear message.
    Raises :class:`SlideError` (one line, naming the file) on any failure.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_dir():
        raise SlideError(path, "is a folder, not a slide")
    if backend != "auto" and backend not in BACKENDS:
        raise SlideError(path, f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    candidates = [BACKENDS[backend]] if backend != "auto" else [b for b in BACKENDS.values() if b.can_open(path)]
    if not candidates:
        raise SlideError(path, "not a slide or image format any backend can open "
                               f"(tried {', '.join(BACKENDS)})")
    # The first capable backend's error is the most specific one; report it.
    slide = candidates[0].factory(path, mpp=mpp)
    if probe:
        try:
            level = slide.level_count - 1
            slide.read_region((0, 0), level, (1, 1))
        except SlideError:
            slide.close()
            raise
    return slide
