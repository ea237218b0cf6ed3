"""Finding and opening a bag's slide, only when a heatmap needs pixels the bag lacks.

Only pyramid levels are ever read (``read_region``, ``read_scaled``): the label and
macro images are never touched.
"""

from __future__ import annotations

from pathlib import Path

from ..fingerprint import slide_changed
from ..slide import Slide, open_slide
from .sources import BagView, HeatmapError


def locate_slide(bag: BagView, slide: Path | None) -> Path | None:
    """The slide file of ``bag``: ``slide`` (a file, or a folder holding a file of the
    recorded name), else the path recorded in the bag; None when none exists."""
    recorded = Path(str(bag.attrs.get("slide_path", "")))
    if slide is not None:
        candidate = slide / recorded.name if slide.is_dir() else slide
        return candidate if candidate.is_file() else None
    return recorded if recorded.name and recorded.is_file() else None


def open_bag_slide(bag: BagView, path: Path | None, why: str) -> Slide:
    """Open ``path`` as ``bag``'s slide (checking it is the file the bag was tiled from);
    ``why`` says what the pixels are for, in the error when there is no slide."""
    if path is None:
        raise HeatmapError(f"{bag.path}: {why} needs the slide, but {bag.attrs.get('slide_path')!r} is not "
                           "there; pass --slide FILE_OR_DIR")
    expected = bag.attrs.get("slide_fingerprint")
    changed = slide_changed(expected, path, copy=True) if expected else None  # a copy elsewhere is fine
    if changed:
        raise HeatmapError(f"{bag.path}: slide {path} is not the file this bag was tiled from ({changed})")
    tiling = bag.attrs.get("tiling") or {}
    return open_slide(path, backend=tiling.get("backend", "auto"), mpp=(tiling.get("params") or {}).get("mpp"))
