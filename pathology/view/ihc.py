"""IHC overlays from what ``pathology ihc`` writes: ``<slide_id>.json`` and the files its
``outputs`` name.

- ``tiles`` (``tiles/<slide_id>.csv``, one row per working tile: its level-0 core box, class
  counts, % positive, H-score) becomes two layers, % positive and H-score, coloured on the
  fixed scales of ``maps/`` (0-100 %, 0-300);
- any ``.geojson`` output (QuPath's format: nuclei by class, a hotspot) is drawn as shapes in
  its classification colours;
- the tissue outline is the tissue detector's on the slide, with the record's parameters.

Kept small on purpose: the IHC output format is still growing, and this module is the one
place the viewer reads it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..heatmap.geojson import tissue_features
from ..heatmap.scores import Normalized
from ..slide import Slide
from ..table import read_table
from ..tissue import TissueParams, detect_tissue
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


def shape_outputs(root: Path, record: dict) -> list[str]:
    """The record's GeoJSON outputs (nuclei, hotspot, ...), by output key."""
    return [key for key, name in (record.get("outputs") or {}).items()
            if isinstance(name, str) and name.lower().endswith(".geojson") and output_file(root, record, key)]


def tissue_rings(slide: Slide, record: dict) -> list[list[list[float]]]:
    """The tissue outline (level-0 rings) found with the record's tissue parameters."""
    recorded = (record.get("params") or {}).get("tissue") or {}
    names = {f.name for f in dataclasses.fields(TissueParams)}
    params = TissueParams(**{k: v for k, v in recorded.items() if k in names})
    mpp = slide.require_mpp().x
    thumb = slide.read_scaled(max(1.0, params.mask_mpp / mpp))
    w0, h0 = slide.dimensions
    scale = np.array([w0 / thumb.shape[1], h0 / thumb.shape[0]])
    mask = detect_tissue(thumb, mpp * scale[0], params).mask
    return [ring for f in tissue_features(mask, scale) for ring in f["geometry"]["coordinates"]]
