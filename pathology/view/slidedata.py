"""Everything the viewer shows of one slide, gathered when the slide is first viewed.

The slide file is the one its records name (a bag's ``slide_path``, an IHC result's
``slide_path``), or a file of that name in ``--slides DIR``, and must be the very file the
records were made from (its fingerprint). When it is not there, the bag's thumbnail stands
in for it, so a run folder copied without its slides still shows every overlay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..errors import UserError
from ..fingerprint import slide_changed
from ..heatmap import attention_file, read_bag
from ..heatmap.geojson import tissue_features
from ..heatmap.slides import locate_slide, open_bag_slide
from ..heatmap.sources import BagView
from ..slide import Slide, SlideError, open_slide
from . import ihc
from .catalog import Catalog, Entry
from .deepzoom import DeepZoom
from .layers import Layer, attention_scales

log = logging.getLogger(__name__)


class NotViewableError(LookupError):
    """A slide of the folder with nothing to show (a failed slide: no bag, no result)."""


class PictureSlide(Slide):
    """A picture in memory (the bag's thumbnail) as a one-level slide."""

    backend = "picture"

    def __init__(self, path: Path, pixels: np.ndarray):
        self._pixels = pixels
        super().__init__(path, [(pixels.shape[1], pixels.shape[0])], (None, "a thumbnail"))

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        return self._pixels[y:y + h, x:x + w]


@dataclass
class SlideData:
    """One slide as the viewer shows it."""

    slide_id: str
    entry: Entry
    dimensions: tuple[int, int]            # level-0 width, height of the slide
    mpp: float | None                      # level-0 µm/px
    zoom: DeepZoom | None                  # the slide's tiles (or its thumbnail's); None: nothing to show
    layers: list[Layer] = field(default_factory=list)
    tissue: list[list[list[float]]] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    record: dict | None = None             # the IHC result
    notes: list[str] = field(default_factory=list)
    cells: Path | None = None              # the IHC cells table, drawn as the nuclei overlay on the slide
    roi: dict | None = None                # the scored ROI's outline (IHC)

    def info(self, base: str) -> dict:
        """The JSON the viewer page is built from; URLs start with ``base`` (``/api/slides/<id>``)."""
        return {
            "slide_id": self.slide_id, "status": self.entry.status, "message": self.entry.message,
            "calls": [{"name": c.name, "text": c.text, "tone": c.tone} for c in self.entry.calls],
            "dimensions": list(self.dimensions), "mpp": self.mpp,
            "layers": [layer.describe(self.dimensions, f"{base}/layers/{i}")
                       for i, layer in enumerate(self.layers)],
            "tissue": self.tissue,
            "shapes": [{"name": key, "url": f"{base}/shapes/{i}.geojson"} for i, key in enumerate(self.shapes)],
            "ihc": _ihc_summary(self.record), "notes": self.notes,
            "nuclei": {"dzi": f"{base}/nuclei.dzi", "classes": ihc.legend(self.record)}
            if self.cells is not None and self.record is not None else None,
            "roi": self.roi,
        }


def load_slide(catalog: Catalog, slide_id: str, slides_dir: Path | None = None) -> SlideData:
    """Gather slide ``slide_id`` of ``catalog``; :class:`KeyError` for a slide the folder does not
    have, :class:`NotViewableError` for one with no bag and no IHC result."""
    entry = catalog.entries[slide_id]
    notes: list[str] = []
    bag = _bag(catalog.path("bags", f"{slide_id}.h5"), notes)
    record = ihc.read_record(catalog.path(f"{slide_id}.json")) if catalog.kind == "ihc" else None
    if bag is None and record is None:
        why = f"{entry.status}: {entry.message}" if entry.message else entry.status
        raise NotViewableError(f"{slide_id}: nothing to show ({why})")
    slide = _open(bag, record, slides_dir, notes)
    if slide is not None:
        base, dimensions = slide, slide.dimensions
    elif bag is not None:
        base, dimensions = PictureSlide(bag.path, bag.thumbnail), bag.dimensions
        notes.append(f"showing the bag's thumbnail ({bag.thumbnail.shape[1]}×{bag.thumbnail.shape[0]} px) "
                     "instead of the slide; pass --slides DIR with the slide files to zoom in")
    else:
        base, dimensions = None, (0, 0)
    mpp = bag.mpp if bag is not None else record.get("mpp_level0") if record else None
    if mpp is None and slide is not None and slide.mpp is not None:
        mpp = slide.mpp.x
    data = SlideData(slide_id, entry, dimensions, mpp, DeepZoom(base) if base is not None else None,
                     record=record, notes=notes)
    if bag is not None:
        data.layers = _attention(bag, catalog.path("attention", f"{slide_id}.h5"), notes)
        data.tissue = [ring for f in tissue_features(bag.tissue_mask, bag.thumb_downsample)
                       for ring in f["geometry"]["coordinates"]]
    if record is not None:
        data.layers += ihc.tile_layers(catalog.root, record)
        data.shapes = ihc.shape_outputs(catalog.root, record)
        if slide is not None and mpp:            # the nuclei are drawn on the slide's own tile grid
            data.cells = ihc.cells_file(catalog.root, record)
        try:
            data.roi = ihc.roi_outline(catalog.root, record, slides_dir)
        except (UserError, OSError) as exc:      # gone, changed, or unreadable: the rest still shows
            notes.append(f"no ROI outline: {exc}")
        if slide is not None and not data.tissue:
            try:
                data.tissue = ihc.tissue_rings(slide, record)
            except UserError as exc:
                notes.append(f"no tissue outline: {exc}")
    return data


def _bag(path: Path, notes: list[str]) -> BagView | None:
    if not path.is_file():
        return None
    try:
        return read_bag(path)
    except UserError as exc:
        notes.append(str(exc))
        return None


def _open(bag: BagView | None, record: dict | None, slides_dir: Path | None, notes: list[str]) -> Slide | None:
    """The slide file the records were made from, or None (with the reason in ``notes``)."""
    try:
        if bag is not None:
            return open_bag_slide(bag, locate_slide(bag, slides_dir), "zooming in")
        recorded = Path(str(record.get("slide_path", "")))
        path = slides_dir / recorded.name if slides_dir is not None else recorded
        if not recorded.name or not path.is_file():
            raise SlideError(path, "the slide is not there; pass --slides DIR with the slide files")
        changed = slide_changed(record["slide_fingerprint"], path, copy=True) if record.get("slide_fingerprint") \
            else None
        if changed:
            raise SlideError(path, f"not the file this result was made from ({changed})")
        params = record.get("params") or {}
        return open_slide(path, backend=params.get("backend", "auto"), mpp=params.get("mpp"))
    except UserError as exc:
        notes.append(str(exc))
        return None


def _attention(bag: BagView, path: Path, notes: list[str]) -> list[Layer]:
    """One layer per task of the slide's attention file (``mil predict``'s), if there is one."""
    if not path.is_file():
        return []
    try:
        scores = attention_file(path)(bag)
    except UserError as exc:
        notes.append(str(exc))
        return []
    return [Layer(task, "attention", bag.coords, (float(bag.patch_size0[0]), float(bag.patch_size0[1])), raw,
                  attention_scales(raw)) for task, raw in scores.items() if len(raw)]


def _ihc_summary(record: dict | None) -> dict | None:
    if record is None:
        return None
    call = record.get("call") or {}
    pictures = [{"name": key, "url": "/" + quote(name)} for key, name in (record.get("outputs") or {}).items()
                if isinstance(name, str) and name.lower().endswith(".png")]
    return {"marker": (record.get("marker") or {}).get("title", ""), "cells": record.get("cells"),
            "class_counts": record.get("class_counts"), "call": call.get("result"), "rule": call.get("rule"),
            "warnings": record.get("warnings") or [], "pictures": pictures, "hotspot": ihc.hotspot(record)}
