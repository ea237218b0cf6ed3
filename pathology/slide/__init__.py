"""Open whole-slide images through one protocol, whatever the backend.

``open_slide(path, backend="auto")`` tries the backends in registry order and
returns the first that can open the file; naming a backend forces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import image_backend, ometiff_backend, omezarr_backend, openslide_backend, tiffslide_backend
from .base import Mpp, Slide, SlideError, resolve_mpp, rgba_to_rgb

__all__ = [
    "BACKENDS",
    "FOLDER_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "Mpp",
    "Slide",
    "SlideError",
    "is_folder_slide",
    "open_slide",
    "resolve_mpp",
    "rgba_to_rgb",
    "slide_exists",
]

# Extensions a folder scan picks up as slides; the folder ones are slides too (OME-Zarr).
FOLDER_EXTENSIONS = {".zarr"}
SLIDE_EXTENSIONS = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".dcm", ".vms", ".vmu",
                    ".bif", ".svslide", ".png", ".jpg", ".jpeg", *FOLDER_EXTENSIONS}


def is_folder_slide(path: Path) -> bool:
    """A folder that is one slide (an OME-Zarr ``*.zarr``), not a folder of slides."""
    return path.suffix.lower() in FOLDER_EXTENSIONS and path.is_dir()


def slide_exists(path: Path) -> bool:
    """A slide file, or a folder slide, is at ``path``."""
    return path.is_file() or is_folder_slide(path)


@dataclass(frozen=True)
class Backend:
    name: str
    can_open: Callable[[Path], bool]
    factory: Callable[..., Slide]
    urls: bool = False  # opens URLs (``s3://``, ``file://``...) as well as local paths


# Order matters for "auto": OME-TIFF first (OpenSlide opens it as a generic TIFF with one
# level and no µm/px; only files with OME-XML are claimed), then OpenSlide, which knows the
# most vendor formats, tiffslide, which reads any TIFF (also plain strip TIFFs OpenSlide
# refuses), and PIL for plain images.
BACKENDS: dict[str, Backend] = {
    "ometiff": Backend("ometiff", ometiff_backend.can_open, ometiff_backend.OmeTiffSlide),
    "omezarr": Backend("omezarr", omezarr_backend.can_open, omezarr_backend.OmeZarrSlide, urls=True),
    "openslide": Backend("openslide", openslide_backend.can_open, openslide_backend.OpenSlideSlide),
    "tiffslide": Backend("tiffslide", tiffslide_backend.can_open, tiffslide_backend.TiffSlideSlide),
    "image": Backend("image", image_backend.can_open, image_backend.ImageSlide),
}


def open_slide(path: str | Path, backend: str = "auto", mpp: float | None = None,
               probe: bool = True) -> Slide:
    """Open ``path`` with ``backend`` (``auto`` picks the first that can open it); a URL
    string (``file://``, ``s3://``...) goes to the backends that read URLs (OME-Zarr).

    ``mpp`` overrides the metadata's µm/px. With ``probe`` a corner of the smallest
    level is decoded at once, so a corrupt file fails here with a clear message.
    Raises :class:`SlideError` (one line, naming the file) on any failure.
    """
    url = isinstance(path, str) and "://" in path
    if not url:
        path = Path(path)
        if not path.exists():
            raise SlideError(path, "no such file")
    if backend != "auto" and backend not in BACKENDS:
        raise SlideError(path, f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    usable = [b for b in BACKENDS.values() if b.urls or not url]
    candidates = [BACKENDS[backend]] if backend != "auto" else [b for b in usable if b.can_open(path)]
    if not candidates:
        if not url and path.is_dir():
            raise SlideError(path, "is a folder, not a slide (an OME-Zarr slide is a folder whose zarr.json or "
                                   ".zattrs holds multiscales)")
        raise SlideError(path, "not a slide or image format any backend can open "
                               f"(tried {', '.join(b.name for b in usable)})")
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
