"""IHC overlays from what ``pathology ihc`` writes: ``<slide_id>.json`` and the files its
``outputs`` name.

- ``tiles`` (``tiles/<slide_id>.csv``, one row per working tile: its level-0 core box, class
  counts, % positive, H-score) becomes two layers, % positive and H-score, coloured on the
  fixed scales of ``maps/`` (0-100 %, 0-300);
- ``cells`` (``cells/<slide_id>.csv``, every counted nucleus) becomes the nuclei-by-class
  overlay, tiled on the slide's DeepZoom grid (:mod:`.nuclei`), with a legend of the record's
  class counts;
- the Ki-67 ``hotspot`` is a circle in level-0 pixels with its index and counts;
- the ``roi`` is read again from the GeoJSON file the record names, and outlined only if it is
  still the very file that was scored (its SHA-256);
- any other ``.geojson`` output (QuPath's format) is drawn as shapes in its classification
  colours;
- the tissue outline is the IHC tissue mask made again with the record's parameters (none for a
  field of view, which is scored whole).

Kept small on purpose: the IHC output format is still growing, and this module is the one
place the viewer reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from ..heatmap.geojson import tissue_features
from ..heatmap.scores import Normalized
from ..ihc.markers import MARKERS
from ..ihc.report.marks import HOTSPOT_COLOUR, ROI_COLOUR
from ..ihc.report.qc import CLASS_COLOURS, class_names
from ..ihc.results import CLASS_NAMES
from ..ihc.tissue import IHCTissueParams, tissue_map
from ..roi import ROIError, read_roi
from ..slide import Slide
from ..table import read_table
from .layers import Layer

SCHEMA_PREFIX = "pathology-ihc/"
SCALES = {  # layer name: (tiles CSV column, top of the scale, colour bar label)
    "% positive": ("percent_positive", 100.0, "% cells 1+ or stronger per tile"),
    "H-score": ("h_score", 300.0, "H-score per tile"),
}


def read_record(path: Path) -> dict | None:
    """The slide's IHC result, or None when ``path`` is not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and str(record.get("schema", "")).startswith(SCHEMA_PREFIX)
    return record if ok else None


def output_file(root: Path, record: dict, key: str) -> Path | None:
    """The output ``key`` of the record, if it is a file inside ``root``."""
    name = (record.get("outputs") or {}).get(key)
    if not isinstance(name, str):
        return None
    path = (root / name).resolve()
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


def tile_layers(root: Path, record: dict) -> list[Layer]:
    """% positive and H-score per tile (tiles with counted cells only)."""
    path = output_file(root, record, "tiles")
    if path is None:
        return []
    rows = [r for r in read_table(path, []).rows if float(r["cells"]) > 0]
    if not rows:
        return []
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    size0 = (float(rows[0]["width"]), float(rows[0]["height"]))
    layers = []
    for name, (column, top, label) in SCALES.items():
        raw = np.array([float(r[column]) for r in rows])
        ticks = [(f, f"{f * top:g}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
        scale = Normalized(np.clip(raw / top, 0, 1), ticks, label)
        layers.append(Layer(name, "ihc", coords, size0, raw, {"fixed": scale},
                            ends=(f"highest {name}", f"lowest {name}")))
    return layers


NUCLEI_OUTPUTS = ("cells", "cells_geojson")   # drawn as the tiled nuclei layer, never as shapes (too many)


def shape_outputs(root: Path, record: dict) -> list[str]:
    """The record's GeoJSON outputs other than its nuclei, by output key."""
    return [key for key, name in (record.get("outputs") or {}).items()
            if key not in NUCLEI_OUTPUTS and isinstance(name, str) and name.lower().endswith(".geojson")
            and output_file(root, record, key)]


def cells_file(root: Path, record: dict) -> Path | None:
    """The record's cells table (every counted nucleus), if it is a file inside ``root``."""
    path = output_file(root, record, "cells")
    return path if path is not None and path.suffix.lower() == ".csv" else None


def _hex(colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))


def legend(record: dict) -> list[dict]:
    """The nucleus classes as the QC picture names and colours them, with the record's counts."""
    marker = MARKERS.get(str((record.get("marker") or {}).get("name", "")))
    names = class_names(marker) if marker is not None else ("negative", "1+ weak", "2+ moderate", "3+ strong")
    counts = record.get("class_counts") or {}
    return [{"name": name, "colour": _hex(colour), "count": counts.get(key)}
            for name, colour, key in zip(names, CLASS_COLOURS.tolist(), CLASS_NAMES, strict=True)]


def hotspot(record: dict) -> dict | None:
    """The Ki-67 hotspot circle in level-0 pixels, with its index and counts (None: no hotspot)."""
    spot, mpp = record.get("hotspot"), record.get("mpp_level0")
    if not isinstance(spot, dict) or not mpp:
        return None
    x, y = spot["centre_level0"]
    return {"x": x, "y": y, "r": spot["radius_um"] / mpp, "index": spot["index"], "cells": spot["cells"],
            "positive": spot["positive"], "area_mm2": spot["area_mm2"], "equals_global": spot["equals_global"],
            "colour": _hex(HOTSPOT_COLOUR)}


def roi_outline(root: Path, record: dict, slides_dir: Path | None) -> dict | None:
    """The ROI that was scored: its rings (level-0 pixels; outlines and holes) read from the file
    the record names (as recorded, or by name in ``slides_dir`` or the output folder), which must
    be the very file scored (SHA-256). None when the record has no ROI; :class:`ROIError` when its
    file is gone or has changed. Only the polygons are served, never the file."""
    roi = record.get("roi")
    if not isinstance(roi, dict) or not roi.get("path"):
        return None
    recorded = Path(str(roi["path"]))
    places = [recorded, *(folder / recorded.name for folder in (slides_dir, root) if folder is not None)]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise ROIError(f"{recorded}: the ROI file is not there; put it in --slide DIR or the output folder")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if digest != roi.get("sha256"):
        raise ROIError(f"{found}: not the ROI file this result was scored with (its SHA-256 differs)")
    shape = read_roi(found)
    if len(shape.polygons) != roi.get("polygons") and roi.get("classes"):
        shape = read_roi(found, roi["classes"])      # scored with --roi-class: the polygons of those classes
    rings = [ring for p in shape.polygons for ring in (p.exterior, *p.holes)]
    return {"name": found.name, "colour": _hex(ROI_COLOUR),
            "rings": [[[round(float(x), 1), round(float(y), 1)] for x, y in ring] for ring in rings]}


def tissue_rings(slide: Slide, record: dict) -> list[list[list[float]]]:
    """The outline (level-0 rings) of the tissue that was scored: the IHC tissue mask made again
    with the record's parameters; none for a field of view, which is scored whole."""
    recorded = (record.get("params") or {}).get("tissue") or {}
    names = {f.name for f in dataclasses.fields(IHCTissueParams)}
    tissue = tissue_map(slide, IHCTissueParams(**{k: v for k, v in recorded.items() if k in names}))
    if tissue.field:
        return []
    return [ring for f in tissue_features(tissue.mask, np.asarray(tissue.scale))
            for ring in f["geometry"]["coordinates"]]
