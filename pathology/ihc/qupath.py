"""The counted nuclei as QuPath detections (GeoJSON, QuPath >= 0.4: File ▸ Import objects from file).

QuPath cannot import the cells table without a script; this file it opens as it is: one
detection per nucleus, a regular polygon of the nucleus's area around its centre (level-0
pixels, QuPath's frame), classified as QuPath's own positive cell detection names its classes
(Negative, 1+, 2+, 3+) in the colours of the QC picture, with the nucleus's own DAB and area as
measurements. QuPath then counts them inside its own annotations, and they can be compared
with its detections or corrected by hand.

About 400 bytes and 15 µs a nucleus (20 MB, under a second, for the 50 000 of :data:`MAX_NUCLEI`,
against some 90 s of scoring): written only up to that many (a scored ROI or a biopsy, not
a whole resection with millions of nuclei, which the viewer and the cells table serve).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..publish import publish_with
from .report.qc import CLASS_COLOURS

MAX_NUCLEI = 50_000
CLASSES = ("Negative", "1+", "2+", "3+")
SIDES = 8


def write_nuclei_geojson(path: str | Path, x: np.ndarray, y: np.ndarray, classes: np.ndarray, dab_od: np.ndarray,
                         area_um2: np.ndarray, mpp: float) -> Path:
    """A FeatureCollection of one QuPath detection per nucleus (level-0 centres ``x``, ``y`` of a
    slide of ``mpp`` µm/px), streamed to ``path`` and published whole."""
    angles = 2 * np.pi * np.arange(SIDES + 1) / SIDES                      # closed ring: the first vertex again
    # a regular polygon of SIDES vertices at radius R has area SIDES / 2 * R² * sin(2 pi / SIDES)
    radius = np.sqrt(2 * np.asarray(area_um2, np.float64) / (SIDES * math.sin(2 * math.pi / SIDES))) / mpp
    xs = np.round(np.asarray(x, np.float64)[:, None] + radius[:, None] * np.cos(angles), 1)
    ys = np.round(np.asarray(y, np.float64)[:, None] + radius[:, None] * np.sin(angles), 1)
    kinds = [f'"classification":{{"name":"{name}","color":[{r},{g},{b}]}}'
             for name, (r, g, b) in zip(CLASSES, CLASS_COLOURS.tolist(), strict=True)]

    def write(fh) -> None:
        fh.write('{"type":"FeatureCollection","features":[')
        for i, (ring_x, ring_y, k, od, area) in enumerate(zip(xs.tolist(), ys.tolist(), np.asarray(classes).tolist(),
                                                              np.asarray(dab_od, np.float64).round(4).tolist(),
                                                              np.asarray(area_um2, np.float64).round(1).tolist())):
            ring = ",".join(f"[{a},{b}]" for a, b in zip(ring_x, ring_y))
            fh.write(f'{"," if i else ""}\n{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":[[{ring}]]}},'
                     f'"properties":{{"objectType":"detection",{kinds[k]},'
                     f'"measurements":{{"Nucleus: DAB OD (own)":{od},"Nucleus: Area µm^2":{area}}}}}}}')
        fh.write("\n]}\n")

    return publish_with(path, write, mode="w")
