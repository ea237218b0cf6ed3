"""Score one IHC slide: tissue (and ROI) → working tiles → cells → scores, maps, QC picture, JSON.

The slide is read tile by tile at ``working_mpp`` (nuclei are 5-10 µm, so 0.5 µm/px
resolves them), each tile with a margin of context, through the tiler's patch reader:
a whole slide never sits in memory. What is scored is the tissue (:mod:`.tissue`; a field
of view whole) inside the ROI when there is one (:mod:`pathology.roi`): a nucleus counts when
its centroid lies in it. Per-tile class counts are kept for the maps and every counted
cell's position and class for the hotspot and ``cells/<slide_id>.csv``. The per-slide JSON
is written last, so a slide whose JSON exists with the same parameters, file and ROI is
complete and a rerun skips it (reporting it as it ended: done or not evaluable).

A slide is **not evaluable** (its own status, never a 0 % score) when its resolution is too
coarse to see nuclei, no tissue is found, the ROI holds no tissue, or fewer than
``min_cells`` cells are counted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..batch import NOT_EVALUABLE
from ..errors import InputError
from ..fingerprint import fingerprint, slide_changed
from ..hashing import slide_seed
from ..heatmap.files import write_json
from ..inputs import SlideInput
from ..jobs import Outcome
from ..localcopy import local_copy
from ..publish import publish_csv
from ..roi import ROI, RoiSource
from ..slide import Slide, open_slide
from ..tiling.grid import Grid, choose_read_level, tissue_fractions
from ..tiling.reader import PatchReader
from .analysis import Settings, TileCells, analyze_tile
from .deconvolution import BASES, StainBasis
from .hotspot import Hotspot, find_hotspot
from .maps import TileTable, write_maps
from .markers import MARKERS, IntensityThresholds, Marker
from .membrane import MembraneParams
from .nuclei import NucleusParams
from .qupath import MAX_NUCLEI, write_nuclei_geojson
from .report.marks import Marks
from .report.qc import Crop, class_names, write_qc_picture
from .results import SCHEMA, slide_record
from .tissue import IHCTissueParams, TissueMap, tissue_map

log = logging.getLogger(__name__)

FIT_TILES = 8          # tiles sampled to fit a per-slide stain matrix
MAP_SIDE = 2048        # longer side of the map background picture, in pixels
MAX_SLIDE_MPP = 2.0    # coarser images cannot resolve 5-10 µm nuclei (under 3-5 px across)
CELL_COLUMNS = ["x", "y", "class", "dab_od", "area_um2"]


@dataclass(frozen=True)
class IHCOptions:
    """Everything that decides a slide's result (stored in its JSON, compared on rerun)."""

    marker: str = "er"
    thresholds: IntensityThresholds | None = None      # None: the marker's defaults
    nuclei: NucleusParams = field(default_factory=NucleusParams)
    membrane: MembraneParams = field(default_factory=MembraneParams)
    stain_matrix: str = "standard"
    working_mpp: float = 0.5
    tile_size: int = 512
    margin: int = 40
    tissue: IHCTissueParams = field(default_factory=IHCTissueParams)
    backend: str = "auto"
    mpp: float | None = None
    min_cells: int = 50
    hotspot_mm2: float = 0.2
    hotspot_min_cells: int = 100

    def __post_init__(self) -> None:
        if self.marker not in MARKERS:
            raise InputError(f"unknown marker {self.marker!r}; choose {', '.join(MARKERS)}")
        if self.stain_matrix not in BASES:
            raise InputError(f"unknown stain matrix {self.stain_matrix!r}; choose {', '.join(BASES)}")
        if not 0.1 <= self.working_mpp <= 2.0:
            raise InputError(f"working µm/px must be within 0.1-2 (nuclei must be resolved), got {self.working_mpp}")
        if self.tile_size < 64 or self.margin < 8:
            raise InputError(f"tile size must be >= 64 and margin >= 8 px, got {self.tile_size}, {self.margin}")
        if self.min_cells < 1 or self.hotspot_min_cells < 1 or not self.hotspot_mm2 > 0:
            raise InputError(f"--min-cells and the hotspot's cells and area must be positive, got "
                             f"{self.min_cells}, {self.hotspot_min_cells}, {self.hotspot_mm2}")
        if self.thresholds is None:
            object.__setattr__(self, "thresholds", MARKERS[self.marker].thresholds)

    def params(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def result_path(out_dir: Path, slide_id: str) -> Path:
    return out_dir / f"{slide_id}.json"


def stored_result(path: Path, slide_fingerprint: str, params: dict, roi_sha256: str | None,
                  slide: Path | None = None) -> dict | None:
    """The JSON at ``path`` if it holds the result of the slide file ``slide`` (whose fingerprint
    is ``slide_fingerprint``; the rule: :func:`pathology.fingerprint.slide_changed`) with these
    parameters and ROI."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    roi = done.get("roi") or {}
    same = done.get("schema") == SCHEMA and done.get("params") == params and roi.get("sha256") == roi_sha256 \
        and (done.get("slide_fingerprint") == slide_fingerprint
             or (slide is not None and slide_changed(done.get("slide_fingerprint"), slide, slide_fingerprint) is None))
    return done if same else None


@dataclass
class Collected:
    """Every counted cell of a slide: level-0 centre, class, intensity, nucleus area."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)
    intensity: list[np.ndarray] = field(default_factory=list)
    area: list[np.ndarray] = field(default_factory=list)

    def add(self, cells: TileCells, origin: np.ndarray, step: tuple[float, float]) -> None:
        self.x.append(origin[0] + (cells.x + 0.5) * step[0])
        self.y.append(origin[1] + (cells.y + 0.5) * step[1])
        self.classes.append(cells.classes)
        self.intensity.append(cells.intensity)
        self.area.append(cells.area_um2)

    def arrays(self) -> tuple[np.ndarray, ...]:
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        return (cat(self.x, np.float64), cat(self.y, np.float64), cat(self.classes, np.int8),
                cat(self.intensity, np.float32), cat(self.area, np.float32))


def score_slide(path: str | Path, slide_id: str, out_dir: str | Path, options: IHCOptions, threads: int = 2,
                on_tiles=None, roi: ROI | None = None, stage_dir: Path | None = None) -> Outcome:
    """Score one slide into ``out_dir`` (``<slide_id>.json``, ``qc/``, ``maps/``, ``tiles/``,
    ``cells/``), only inside ``roi`` when given; read from a local copy in ``stage_dir`` when
    given (the result records the original).

    Raises :class:`pathology.slide.SlideError` or :class:`InputError` (one line) on bad input.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    params, fp = options.params(), fingerprint(path)
    json_path = result_path(out_dir, slide_id)
    done = stored_result(json_path, fp, params, roi.sha256 if roi else None, slide=Path(path))
    if done is not None:
        if done.get("status") == NOT_EVALUABLE:
            reason = done["not_evaluable_reason"]
            return Outcome(slide_id, NOT_EVALUABLE, message=f"{reason} (result kept from an earlier run)",
                           data={"reason": reason})
        return Outcome(slide_id, "skipped", message="result complete with the same parameters")
    marker = MARKERS[options.marker]
    with local_copy(path, stage_dir) as local, open_slide(local, backend=options.backend, mpp=options.mpp) as slide:
        mpp = slide.require_mpp()
        if roi is not None:
            roi.check_within(slide.dimensions)
        tissue = tissue_map(slide, options.tissue)
        region = tissue.mask if roi is None else tissue.mask & roi.mask(slide.dimensions, tissue.scale)
        reason = (f"resolution too coarse ({mpp.x:.2g} µm/px; nuclei need {MAX_SLIDE_MPP:g} or finer)"
                  if mpp.x > MAX_SLIDE_MPP else "no tissue found" if not tissue.mask.any()
                  else "no tissue inside the ROI" if not region.any() else None)
        grid = tile_grid(slide, options, region if reason is None else np.zeros_like(region), tissue.scale)
        scored = _score_tiles(slide, slide_id, grid, options, marker, region, tissue, roi, threads, on_tiles)
        table, crop = scored.table, scored.crop
        counts = table.totals()
        x, y, classes, intensity, area = scored.cells.arrays()
        n = int(counts.sum())
        if reason is None and n < options.min_cells:
            reason = f"too few cells ({n} counted, {options.min_cells} needed)"
        hotspot = find_hotspot(x, y, classes > 0, mpp.x, options.hotspot_mm2, options.hotspot_min_cells,
                               region=(region, tissue.scale)) if marker.name == "ki67" and reason is None else None
        picture = slide.read_scaled(max(1.0, max(slide.dimensions) / MAP_SIDE))
        box = None if crop is None else crop[1]
        marks = Marks(roi=roi, hotspot=hotspot, box=box)
        summary = _summary(marker, counts, reason, hotspot, roi)
        qc_path = write_qc_picture(out_dir / "qc" / f"{slide_id}.png", None if crop is None else crop[0], picture,
                                   slide.dimensions, marks, marker, slide_id, summary, options.working_mpp)
        maps = write_maps(out_dir, slide_id, table, grid, picture, slide.dimensions, region, marker,
                          options.thresholds, options.tile_size * options.working_mpp, Marks(roi, hotspot))
        cells_path = publish_csv(out_dir / "cells" / f"{slide_id}.csv", CELL_COLUMNS,  # streamed: millions of rows
                               zip(x.round(1).tolist(), y.round(1).tolist(), classes.tolist(),
                                   # float64 first: a rounded float32 prints as -0.003100000089034438
                                   intensity.astype(np.float64).round(4).tolist(),
                                   area.astype(np.float64).round(1).tolist(), strict=True))
        qupath, detections = {}, out_dir / "cells" / f"{slide_id}.geojson"   # the same nuclei for QuPath
        if len(x) <= MAX_NUCLEI:
            write_nuclei_geojson(detections, x, y, classes, intensity, area, mpp.x)
            qupath["cells_geojson"] = str(detections.relative_to(out_dir))
        else:
            detections.unlink(missing_ok=True)                                # an earlier run's, now stale
        record = slide_record(
            schema=SCHEMA, slide_id=slide_id, slide_path=str(Path(path).resolve()), slide_fingerprint=fp,
            params=params, marker=marker, counts=counts, table=table, basis=scored.basis, mpp=mpp.x,
            mpp_source=mpp.source, reason=reason, hotspot=hotspot, roi=roi, tissue=tissue,
            region_mm2=float(region.sum()) * tissue.scale[0] * tissue.scale[1] * mpp.x * mpp.y / 1e6,
            outputs={"qc": str(qc_path.relative_to(out_dir)), "cells": str(cells_path.relative_to(out_dir)),
                     **qupath, **{k: str(v.relative_to(out_dir)) for k, v in maps.items()}},
            software_version=__version__, created=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(json_path, record)
    for warning in record["warnings"]:
        log.warning("%s: %s", slide_id, warning)
    what = "cells" if marker.compartment == "membrane" else "nuclei"
    if reason is not None:
        return Outcome(slide_id, NOT_EVALUABLE, len(grid), time.perf_counter() - t0, f"{reason}; see qc/{slide_id}.png",
                       data={"reason": reason})
    return Outcome(slide_id, "done", len(grid), time.perf_counter() - t0, f"{n} {what}: {record['call']['result']}",
                   data={"call": record["call"]})


@dataclass
class Scored:
    """What the tiles of a slide gave: per-tile counts, every counted cell, the stain basis
    used, and the QC crop with its level-0 box (None when no cell was counted)."""

    table: TileTable
    cells: Collected
    basis: StainBasis
    crop: tuple[Crop, tuple[float, float, float, float]] | None = None


def _score_tiles(slide: Slide, slide_id: str, grid: Grid, options: IHCOptions, marker: Marker, region: np.ndarray,
                 tissue: TissueMap, roi: ROI | None, threads: int, on_tiles) -> Scored:
    """Analyse every tile of ``grid`` where ``region`` (and the ROI, exactly) is set."""
    size = options.tile_size + 2 * options.margin
    step = (grid.patch_size_level0[0] / size, grid.patch_size_level0[1] / size)
    scored = Scored(TileTable.empty(len(grid)), Collected(), BASES["standard"]())
    if not len(grid):
        return scored
    with PatchReader(slide, grid, size, threads=threads, chunk=max(2, threads)) as reader:
        scored.basis = _basis(reader, grid, slide_id, options.stain_matrix)
        settings = Settings(marker, options.thresholds, options.nuclei, options.membrane, scored.basis,
                            options.working_mpp, options.margin)

        def where(i: int) -> np.ndarray:
            mask = tile_mask(grid, i, size, region, tissue.scale)
            if roi is not None:
                mask &= roi.box_mask(float(grid.coords[i][0]), float(grid.coords[i][1]), size, size, step)
            return mask

        for start, batch in reader.read(np.arange(len(grid))):  # decoded ahead on the reader's threads
            for i, rgb in enumerate(batch, start):
                found = analyze_tile(mirror_off_slide(rgb, grid, i, slide.dimensions), where(i), settings)
                scored.table.record(i, found, options.thresholds.weak)
                scored.cells.add(found, grid.coords[i], step)
            if on_tiles:
                on_tiles(len(batch))
        best = scored.table.showcase()
        if best is None:
            return scored
        rgb = next(iter(reader.read(np.array([best]))))[1][0]   # again, keeping its label images for the picture
        rgb = mirror_off_slide(rgb, grid, best, slide.dimensions)
        found = analyze_tile(rgb, where(best), settings, keep_labels=True)
    m = options.margin
    x0, y0 = grid.coords[best] + np.asarray(step) * m
    w0, h0 = slide.dimensions
    core_w = min(options.tile_size, max(1, math.ceil((w0 - x0) / step[0])))
    core_h = min(options.tile_size, max(1, math.ceil((h0 - y0) / step[1])))
    scored.crop = (Crop(rgb, found, m, (core_h, core_w)),
                   (float(x0), float(y0), core_w * step[0], core_h * step[1]))
    return scored


def _summary(marker: Marker, counts: np.ndarray, reason: str | None, hotspot: Hotspot | None,
             roi: ROI | None) -> str:
    """The result in words, for the QC picture's title."""
    n = int(counts.sum())
    what = "cells" if marker.compartment == "membrane" else "nuclei"
    where = "in the ROI" if roi is not None else "on the tissue"
    text = f"{n} {what} {where}: " + ", ".join(f"{name} {100 * c / max(n, 1):.1f}%" for name, c in
                                               zip(class_names(marker), counts, strict=True))
    if reason is not None:
        return f"not evaluable: {reason} · {text}"
    if marker.name == "ki67":
        text += f" · Ki-67 global index {100 * counts[1:].sum() / n:.1f}%"
        if hotspot is not None and hotspot.whole:
            text += f", hotspot = global (all of it fits in {hotspot.area_mm2:g} mm²)"
        elif hotspot is not None:
            text += f", hotspot {hotspot.index:.1f}% ({hotspot.cells} nuclei in {hotspot.area_mm2:g} mm², magenta)"
    return text


def ihc_job(slide: SlideInput, advance, *, out: Path, options: IHCOptions, threads: int,
            rois: RoiSource | None = None, stage_dir: Path | None = None) -> Outcome:
    """One slide of an IHC batch (:func:`pathology.batch.run_batch`; module level so worker
    processes can run it)."""
    return score_slide(slide.path, slide.slide_id, out, options, threads=threads, on_tiles=advance,
                       roi=rois.load(slide.slide_id) if rois else None, stage_dir=stage_dir)


def tile_grid(slide: Slide, options: IHCOptions, mask: np.ndarray, mask_scale: tuple[float, float]) -> Grid:
    """Core tiles covering the slide at the working resolution, kept where ``mask`` is set;
    each is read with ``margin`` px of context (its coords are the context's corner)."""
    mpp = slide.require_mpp()
    fx, fy = options.working_mpp / mpp.x, options.working_mpp / mpp.y
    core = (options.tile_size * fx, options.tile_size * fy)
    w0, h0 = slide.dimensions
    xs = np.arange(math.ceil(w0 / core[0])) * core[0]
    ys = np.arange(math.ceil(h0 / core[1])) * core[1]
    gy, gx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    frac = tissue_fractions(mask, mask_scale, gx, gy, core)
    keep = frac > 0
    coords = np.stack([np.round(gx[keep] - options.margin * fx), np.round(gy[keep] - options.margin * fy)], 1)
    size = options.tile_size + 2 * options.margin
    levels = [slide.level_downsample_xy(i) for i in range(slide.level_count)]
    return Grid(coords=coords.astype(np.int64).reshape(-1, 2), tissue_fraction=frac[keep],
                patch_size_level0=(size * fx, size * fy), stride_level0=core,
                read_level=choose_read_level(levels, (fx, fy)), candidates=len(gx))


def mirror_off_slide(rgb: np.ndarray, grid: Grid, index: int, dimensions: tuple[int, int]) -> np.ndarray:
    """Tile ``index`` with its pixels beyond the slide's edge mirrored from those inside, so that
    the edge of a field of view reads as the tissue it cuts through, not as glass (no nucleus
    is counted there: the mask is off the slide)."""
    size = rgb.shape[0]
    step = (grid.patch_size_level0[0] / size, grid.patch_size_level0[1] / size)
    x0, y0 = grid.coords[index]
    c0, r0 = (max(0, math.ceil(-v / s - 0.5)) for v, s in ((x0, step[0]), (y0, step[1])))
    c1 = min(size, math.ceil((dimensions[0] - x0) / step[0] - 0.5))
    r1 = min(size, math.ceil((dimensions[1] - y0) / step[1] - 0.5))
    if (c0, r0, c1, r1) == (0, 0, size, size) or c1 <= c0 or r1 <= r0:
        return rgb
    mode = "reflect" if min(r1 - r0, c1 - c0) > 1 else "edge"   # about the edge pixel: a cut nucleus reads whole
    return np.pad(rgb[r0:r1, c0:c1], ((r0, size - r1), (c0, size - c1), (0, 0)), mode=mode)


def tile_mask(grid: Grid, index: int, size: int, mask: np.ndarray, mask_scale: tuple[float, float]) -> np.ndarray:
    """``mask`` under tile ``index`` (``size``² working px), nearest mask pixel each; False off the slide."""
    x0, y0 = grid.coords[index]
    step = (grid.patch_size_level0[0] / size, grid.patch_size_level0[1] / size)
    cols = np.floor((x0 + (np.arange(size) + 0.5) * step[0]) / mask_scale[0]).astype(np.int64)
    rows = np.floor((y0 + (np.arange(size) + 0.5) * step[1]) / mask_scale[1]).astype(np.int64)
    inside = ((rows >= 0) & (rows < mask.shape[0]))[:, None] & ((cols >= 0) & (cols < mask.shape[1]))[None, :]
    return mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)] & inside


def _basis(reader: PatchReader, grid: Grid, slide_id: str, name: str) -> StainBasis:
    """The stain basis: standard, or fitted on a reproducible sample of this slide's tiles."""
    if name != "fitted" or not len(grid):
        return BASES["standard"]()
    rng = np.random.default_rng(slide_seed(slide_id))
    sample = np.sort(rng.choice(len(grid), min(FIT_TILES, len(grid)), replace=False))
    return BASES[name](np.concatenate([batch.reshape(-1, 3) for _, batch in reader.read(sample)]))
