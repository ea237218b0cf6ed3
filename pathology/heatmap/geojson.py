"""GeoJSON for QuPath (>= 0.4: File ▸ Import objects from file): one detection per patch
with its attention as measurements, and the tissue outline as annotations.

Coordinates are level-0 pixels in QuPath's frame: relative to the pixel QuPath shows as
(0, 0), which for slides with OpenSlide bounds (MIRAX and other cropped scans) is the bounds'
corner, not the file's (:mod:`pathology.slide.qupath`); ``origin`` is that pixel. Properties
follow QuPath's own export: ``objectType``, ``classification`` ``{"name", "color"}`` and
``measurements`` as a name → number object.
"""

from __future__ import annotations

import numpy as np
from skimage import measure

TISSUE_CLASS = {"name": "Tissue", "color": [0, 215, 80]}
SIMPLIFY_PX = 0.75   # contour simplification tolerance, in tissue-mask pixels
ORIGIN = np.zeros(2)  # QuPath's (0, 0) at the file's: slides without OpenSlide bounds


def patch_features(coords: np.ndarray, size0: np.ndarray, task: str, measurements: dict[str, np.ndarray],
                   colour: tuple[int, int, int], origin: np.ndarray = ORIGIN) -> list[dict]:
    """One detection Feature per patch: its level-0 square (relative to ``origin``) as a closed
    Polygon ring and ``measurements`` (name → (N,) values) at its row."""
    w, h = (float(v) for v in size0)
    names = list(measurements)
    columns = [np.asarray(measurements[n], np.float64) for n in names]
    features = []
    for i, (x, y) in enumerate(np.asarray(coords, np.float64) - np.asarray(origin, np.float64)):
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[_num(a), _num(b)] for a, b in ring]]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": task, "color": [int(c) for c in colour]},
                "measurements": {n: float(col[i]) for n, col in zip(names, columns, strict=True)},
            },
        })
    return features


def tissue_features(mask: np.ndarray, downsample: np.ndarray, origin: np.ndarray = ORIGIN) -> list[dict]:
    """One annotation Feature per connected tissue region of ``mask``: its outline and its
    holes as Polygon rings (closed, level-0 pixels relative to ``origin``; ``downsample`` is
    level-0 px per mask px)."""
    labels = measure.label(np.asarray(mask, bool), connectivity=2)
    features = []
    for region in measure.regionprops(labels):
        r0, c0, r1, c1 = region.bbox
        crop = np.pad(labels[r0:r1, c0:c1] == region.label, 1)
        rings = []
        for contour in measure.find_contours(crop.astype(np.float32), 0.5):
            contour = measure.approximate_polygon(contour, SIMPLIFY_PX)
            if len(contour) < 4:
                continue
            # mask pixel i spans level-0 [i, i+1) * downsample; its centre is at (i + 0.5) * downsample
            xs = (contour[:, 1] - 1 + c0 + 0.5) * downsample[0] - origin[0]
            ys = (contour[:, 0] - 1 + r0 + 0.5) * downsample[1] - origin[1]
            ring = [[round(float(x), 1), round(float(y), 1)] for x, y in zip(xs, ys)]
            ring[-1] = ring[0]
            rings.append(ring)
        if not rings:
            continue
        rings.sort(key=lambda r: -abs(_area(r)))  # the outline first, then its holes
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": dict(TISSUE_CLASS)},
        })
    return features


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def _area(ring: list[list[float]]) -> float:
    """Signed shoelace area of a closed ring."""
    a = np.asarray(ring)
    return 0.5 * float(np.dot(a[:-1, 0], a[1:, 1]) - np.dot(a[1:, 0], a[:-1, 1]))


def _num(v: float) -> int | float:
    """Integers stay integers in the JSON."""
    return int(v) if float(v).is_integer() else float(v)
