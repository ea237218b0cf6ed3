"""Regions of interest from GeoJSON annotations (QuPath's export), read in one place.

A pathologist outlines what is to be scored or tiled (the invasive tumour, not the whole
slide) and exports it from QuPath as GeoJSON: polygons and multipolygons in level-0 pixels,
holes (lumens, necrosis) as inner rings. :func:`read_roi` reads such a file into a
:class:`ROI`, which can

- rasterize itself to a mask at any downsample, over the whole slide or over one box
  (:meth:`ROI.mask`, :meth:`ROI.box_mask`),
- test points (:meth:`ROI.contains`) and boxes (:meth:`ROI.box_fractions`).

A batch finds each slide's file with :class:`RoiSource`: one file for one slide, a folder of
``<slide_id>.geojson``, or a manifest's ``roi_path`` column (relative to the manifest).

Accepted GeoJSON: a FeatureCollection, a single Feature, a bare list of Features (older QuPath
exports), or a bare Polygon / MultiPolygon / GeometryCollection. Points and lines hold no area
and are left out, as are QuPath objects that are not annotations (detections, cells, tiles).
Anything else wrong with the file is a :class:`ROIError`: one line naming the file and what is
wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

from .errors import InputError
from .table import read_table, where

log = logging.getLogger(__name__)

AREAL = ("Polygon", "MultiPolygon")
NO_AREA = ("Point", "MultiPoint", "LineString", "MultiLineString")
NOT_REGIONS = ("detection", "cell", "tile")
"""QuPath objectTypes that are measurements, not regions someone drew."""
MANIFEST_COLUMN = "roi_path"
SUFFIXES = (".geojson", ".json")


class ROIError(InputError):
    """A GeoJSON annotation that cannot be used: the message names the file and the problem."""


Ring = np.ndarray  # float64 (n, 2): x, y in level-0 pixels, first point not repeated at the end


@dataclass(frozen=True)
class Polygon:
    """One polygon: its outer ring and its holes."""

    exterior: Ring
    holes: tuple[Ring, ...] = ()

    def area(self) -> float:
        return _ring_area(self.exterior) - sum(_ring_area(h) for h in self.holes)


@dataclass(frozen=True)
class ROI:
    """The union of some polygons (with holes), in level-0 pixels of one slide."""

    polygons: tuple[Polygon, ...]
    source: str = ""
    sha256: str = ""
    names: tuple[str, ...] = field(default_factory=tuple)   # classification of each polygon ("" if none)

    def __post_init__(self) -> None:
        if not self.polygons:
            raise ROIError(f"{self.source or 'ROI'}: holds no polygon")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in level-0 pixels."""
        pts = np.concatenate([p.exterior for p in self.polygons])
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def area_px(self) -> float:
        """Area in level-0 pixels² (polygons assumed not to overlap one another)."""
        return float(sum(p.area() for p in self.polygons))

    def describe(self) -> dict:
        x0, y0, x1, y1 = self.bounds
        return {"path": self.source, "sha256": self.sha256, "polygons": len(self.polygons),
                "holes": sum(len(p.holes) for p in self.polygons), "bounds_level0": [round(v, 1) for v in
                                                                                    (x0, y0, x1, y1)],
                "classes": sorted({n for n in self.names if n})}

    def check_within(self, dimensions: tuple[int, int]) -> None:
        """Raise :class:`ROIError` if the ROI misses a slide of these level-0 dimensions entirely."""
        x0, y0, x1, y1 = self.bounds
        w, h = dimensions
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise ROIError(f"{self.source}: the ROI (x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}) lies outside the "
                           f"slide ({w}x{h} px): is it another slide's, or not in level-0 pixels?")

    def box_mask(self, x0: float, y0: float, width: int, height: int, downsample: float | tuple[float, float]
                 ) -> np.ndarray:
        """Bool (height, width) mask of the box whose pixel (i, j) covers level-0
        [x0 + j·dx, x0 + (j+1)·dx) × [y0 + i·dy, ...): a pixel is in when its centre is."""
        dx, dy = (downsample, downsample) if np.isscalar(downsample) else downsample
        out = np.zeros((height, width), bool)
        if width <= 0 or height <= 0:
            return out
        box = (x0, y0, x0 + width * dx, y0 + height * dy)
        for poly in self.polygons:
            bx0, by0 = poly.exterior.min(axis=0)
            bx1, by1 = poly.exterior.max(axis=0)
            if bx1 < box[0] or by1 < box[1] or bx0 > box[2] or by0 > box[3]:
                continue
            layer = _fill(poly.exterior, x0, y0, dx, dy, out.shape)
            for hole in poly.holes:
                layer &= ~_fill(hole, x0, y0, dx, dy, out.shape)
            out |= layer
        return out

    def mask(self, dimensions: tuple[int, int], downsample: float | tuple[float, float]) -> np.ndarray:
        """The ROI over a whole slide of level-0 ``dimensions``, one pixel per ``downsample``
        level-0 pixels (shape ``round(h / dy), round(w / dx)``)."""
        dx, dy = (downsample, downsample) if np.isscalar(downsample) else downsample
        w, h = dimensions
        return self.box_mask(0.0, 0.0, max(1, round(w / dx)), max(1, round(h / dy)), (w / max(1, round(w / dx)),
                                                                                      h / max(1, round(h / dy))))

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each level-0 point (x, y) lies in the ROI (inside a polygon, outside its holes)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        inside = np.zeros(x.shape, bool)
        for poly in self.polygons:
            hit = _in_ring(poly.exterior, x, y)
            for hole in poly.holes:
                hit &= ~_in_ring(hole, x, y)
            inside |= hit
        return inside

    def box_fractions(self, boxes: np.ndarray, size: tuple[float, float], downsample: float) -> np.ndarray:
        """Share of each box (level-0 top-left corners ``boxes`` (n, 2), extent ``size``) inside
        the ROI, measured on the ROI rasterized at ``downsample`` (a summed-area table, so O(1)
        per box after one rasterization over the ROI's bounds)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 2)
        if not len(boxes):
            return np.zeros(0, np.float32)
        x0, y0, x1, y1 = self.bounds
        ox, oy = math.floor(x0 / downsample) * downsample, math.floor(y0 / downsample) * downsample
        w, h = math.ceil((x1 - ox) / downsample) + 1, math.ceil((y1 - oy) / downsample) + 1
        m = self.box_mask(ox, oy, w, h, downsample)
        sat = np.zeros((h + 1, w + 1), np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(m, axis=0, dtype=np.int64), axis=1)
        cx0 = np.clip(np.round((boxes[:, 0] - ox) / downsample).astype(np.int64), 0, w)
        cy0 = np.clip(np.round((boxes[:, 1] - oy) / downsample).astype(np.int64), 0, h)
        cx1 = np.clip(np.round((boxes[:, 0] + size[0] - ox) / downsample).astype(np.int64), 0, w)
        cy1 = np.clip(np.round((boxes[:, 1] + size[1] - oy) / downsample).astype(np.int64), 0, h)
        inside = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
        return np.clip(inside / max(size[0] * size[1] / downsample ** 2, 1e-9), 0, 1).astype(np.float32)


def read_roi(path: str | Path, classes: Sequence[str] = ()) -> ROI:
    """The ROI of a GeoJSON file; with ``classes``, only annotations of those classification
    names (QuPath's ``classification.name``, case-insensitive). Raises :class:`ROIError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ROIError(f"{path}: no such ROI file") from None
    except IsADirectoryError:
        raise ROIError(f"{path}: is a folder, not a GeoJSON file") from None
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ROIError(f"{path}: not a GeoJSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ROIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    wanted = {c.lower() for c in classes}
    polygons: list[Polygon] = []
    names: list[str] = []
    skipped: dict[str, int] = {}
    for where_, geometry, props in _features(doc, path):
        kind = props.get("objectType") if isinstance(props, dict) else None
        if kind in NOT_REGIONS:
            skipped[f"QuPath {kind}s"] = skipped.get(f"QuPath {kind}s", 0) + 1
            continue
        name = _class_name(props)
        if wanted and name.lower() not in wanted:
            skipped[f"annotations of other classes ({name or 'unclassified'})"] = \
                skipped.get(f"annotations of other classes ({name or 'unclassified'})", 0) + 1
            continue
        for poly in _polygons(geometry, path, where_, skipped):
            polygons.append(poly)
            names.append(name)
    for what, n in skipped.items():
        log.info("%s: left out %d %s", path, n, what)
    if not polygons:
        scope = f" of class {', '.join(classes)}" if classes else ""
        raise ROIError(f"{path}: holds no Polygon or MultiPolygon annotation{scope}")
    return ROI(tuple(polygons), str(path), hashlib.sha256(raw).hexdigest(), tuple(names))


@dataclass(frozen=True)
class RoiSource:
    """Where each slide's ROI file is (picklable, so workers on other machines can read it)."""

    paths: dict[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    def path_for(self, slide_id: str) -> Path | None:
        p = self.paths.get(slide_id)
        return Path(p) if p else None

    def load(self, slide_id: str) -> ROI | None:
        """The slide's ROI, or None when it has none."""
        p = self.path_for(slide_id)
        return read_roi(p, self.classes) if p else None

    def __bool__(self) -> bool:
        return bool(self.paths)


def roi_source(roi: str | Path | None, inputs: Iterable[str], slide_ids: Sequence[str],
               classes: Sequence[str] = ()) -> RoiSource:
    """Each slide's ROI file from ``--roi`` (one file for a single slide, or a folder of
    ``<slide_id>.geojson``) or from the ``roi_path`` column of the manifests among ``inputs``.
    Raises :class:`InputError` listing every problem (a missing file, both sources, one file
    for several slides)."""
    problems: list[str] = []
    from_manifest = _manifest_rois(inputs, problems)
    paths: dict[str, str] = {}
    if roi is not None:
        roi = Path(roi)
        if from_manifest:
            problems.append(f"--roi {roi} and the manifest's {MANIFEST_COLUMN!r} column both name ROIs: use one")
        elif roi.is_dir():
            for sid in slide_ids:
                found = [roi / f"{sid}{s}" for s in SUFFIXES if (roi / f"{sid}{s}").is_file()]
                if not found:
                    problems.append(f"--roi {roi}: no {sid}.geojson for slide {sid!r}")
                else:
                    paths[sid] = str(found[0])
        elif roi.is_file():
            if len(slide_ids) != 1:
                problems.append(f"--roi {roi} is one file for {len(slide_ids)} slides: give a folder of "
                                f"<slide_id>.geojson, or a manifest with a {MANIFEST_COLUMN!r} column")
            else:
                paths[slide_ids[0]] = str(roi)
        else:
            problems.append(f"--roi {roi}: no such file or folder")
    else:
        paths = {sid: p for sid, p in from_manifest.items() if sid in set(slide_ids) and p}
    if problems:
        raise InputError("\n".join(problems))
    return RoiSource(paths, tuple(classes))


def _manifest_rois(inputs: Iterable[str], problems: list[str]) -> dict[str, str]:
    """slide_id -> ROI path ('' for none) from the ``roi_path`` column of manifest inputs."""
    found: dict[str, str] = {}
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() not in (".csv", ".tsv") or not path.is_file():
            continue
        table = read_table(path, [])
        if MANIFEST_COLUMN not in table.columns or "slide_id" not in table.columns:
            continue
        for i, row in enumerate(table.rows):
            rel = row[MANIFEST_COLUMN]
            if not rel:
                found[row["slide_id"]] = ""
                continue
            target = Path(rel) if Path(rel).is_absolute() else path.parent / rel
            if not target.is_file():
                problems.append(f"{where(table.loc(i), MANIFEST_COLUMN)}: ROI file {rel!r} not found ({target})")
            found[row["slide_id"]] = str(target)
    return found


def _features(doc, path: Path) -> Iterable[tuple[str, dict | None, dict]]:
    """(where, geometry, properties) of every feature or bare geometry in a GeoJSON document."""
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _features_of(item, path, f"feature {i}")
        return
    if not isinstance(doc, dict):
        raise ROIError(f"{path}: not GeoJSON (a {type(doc).__name__} at the top level, not an object)")
    yield from _features_of(doc, path, "the document")


def _features_of(obj, path: Path, at: str) -> Iterable[tuple[str, dict | None, dict]]:
    if not isinstance(obj, dict) or "type" not in obj:
        raise ROIError(f"{path}: {at} is not a GeoJSON object (no 'type')")
    kind = obj["type"]
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, list):
            raise ROIError(f"{path}: {at}: a FeatureCollection without a 'features' list")
        for i, f in enumerate(features):
            yield from _features_of(f, path, f"feature {i}")
    elif kind == "Feature":
        props = obj.get("properties") or {}
        yield at, obj.get("geometry"), props if isinstance(props, dict) else {}
    elif kind in AREAL + NO_AREA + ("GeometryCollection",):
        yield at, obj, {}
    else:
        raise ROIError(f"{path}: {at} has unknown GeoJSON type {kind!r}")


def _class_name(props: dict) -> str:
    c = props.get("classification") if isinstance(props, dict) else None
    if isinstance(c, dict):
        return str(c.get("name") or "")
    return str(c or "")


def _polygons(geometry, path: Path, at: str, skipped: dict[str, int]) -> Iterable[Polygon]:
    if geometry is None:
        raise ROIError(f"{path}: {at} has no geometry")
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise ROIError(f"{path}: {at}: geometry is not a GeoJSON object")
    kind = geometry["type"]
    if kind == "GeometryCollection":
        for g in geometry.get("geometries") or []:
            yield from _polygons(g, path, at, skipped)
        return
    if kind in NO_AREA:
        skipped[f"{kind} geometries (no area)"] = skipped.get(f"{kind} geometries (no area)", 0) + 1
        return
    if kind not in AREAL:
        raise ROIError(f"{path}: {at} has unknown geometry type {kind!r}")
    coords = geometry.get("coordinates")
    parts = [coords] if kind == "Polygon" else coords
    if not isinstance(parts, list) or not parts:
        raise ROIError(f"{path}: {at}: {kind} without coordinates")
    for k, rings in enumerate(parts):
        label = at if kind == "Polygon" else f"{at}, polygon {k}"
        if not isinstance(rings, list) or not rings:
            raise ROIError(f"{path}: {label}: a polygon needs a list of rings ([[x, y], ...])")
        exterior, *holes = (_ring(r, path, label, j) for j, r in enumerate(rings))
        yield Polygon(exterior, tuple(holes))


def _ring(ring, path: Path, at: str, j: int) -> Ring:
    what = "outer ring" if j == 0 else f"hole {j}"
    try:
        pts = np.asarray(ring, np.float64)
    except (TypeError, ValueError):
        raise ROIError(f"{path}: {at}, {what}: coordinates are not [x, y] number pairs") from None
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ROIError(f"{path}: {at}, {what}: coordinates are not [x, y] pairs")
    pts = pts[:, :2]
    if not np.isfinite(pts).all():
        raise ROIError(f"{path}: {at}, {what}: coordinates include NaN or infinity")
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(np.unique(pts, axis=0)) < 3:
        raise ROIError(f"{path}: {at}, {what}: a ring needs at least 3 distinct points, got {len(pts)}")
    return pts


def _ring_area(ring: Ring) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _in_ring(ring: Ring, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each point lies inside the ring (matplotlib's compiled point-in-polygon test)."""
    from matplotlib.path import Path as MplPath  # imported here: matplotlib is slow to import

    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    return MplPath(ring).contains_points(pts).reshape(x.shape)


def _fill(ring: Ring, x0: float, y0: float, dx: float, dy: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a ``shape`` grid (pixel (i, j) spanning level-0 [x0 + j·dx, x0 + (j+1)·dx) × ...)
    whose centre lies inside ``ring``."""
    out = np.zeros(shape, bool)
    rows, cols = draw_polygon((ring[:, 1] - y0) / dy - 0.5, (ring[:, 0] - x0) / dx - 0.5, shape)
    out[rows, cols] = True
    return out
