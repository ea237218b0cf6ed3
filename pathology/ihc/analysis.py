"""One working tile: deconvolve, find nuclei (and, for membrane markers, cells), class them.

A tile is read with a margin of context on every side so that nuclei and cells cut by
the tile's edge are measured whole; only those whose centroid falls in the tile's core
(and on tissue) are counted, so every nucleus of the slide is counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .deconvolution import StainBasis, deconvolve
from .markers import IntensityThresholds, Marker
from .membrane import MembraneParams, measure_membranes
from .nuclei import NucleusParams, detect_nuclei, merge_stained


@dataclass(frozen=True)
class Settings:
    """What the analysis of a tile depends on."""

    marker: Marker
    thresholds: IntensityThresholds
    nuclei: NucleusParams
    membrane: MembraneParams
    basis: StainBasis
    mpp: float
    margin: int


@dataclass(frozen=True)
class TileCells:
    """Counted cells of a tile (coordinates in tile pixels, margin included) and its DAB area.

    ``intensity`` is the nucleus's own DAB OD (its mean less its surroundings', nuclear
    markers) or the membrane's median peak DAB OD (HER2); ``labels`` (kept on request, for pictures) numbers the
    counted nuclei 1..n and ``cells`` their grown cells (HER2 only).
    """

    x: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    intensity: np.ndarray
    tissue_px: int
    dab_positive_px: int
    area_um2: np.ndarray = field(default_factory=lambda: np.zeros(0))   # nucleus area per counted cell
    surroundings: np.ndarray = field(default_factory=lambda: np.zeros(0))  # DAB OD around each nucleus
    labels: np.ndarray | None = None
    cells: np.ndarray | None = None

    def counts(self) -> np.ndarray:
        return np.bincount(self.classes, minlength=4)[:4].astype(np.int64)


def analyze_tile(rgb: np.ndarray, tissue: np.ndarray, settings: Settings, keep_labels: bool = False) -> TileCells:
    """Cells of one tile (``rgb`` uint8 with ``settings.margin`` px of context on each side;
    ``tissue`` its bool mask of what is scored: tissue, inside the ROI if there is one)."""
    s = settings
    hema, dab = deconvolve(rgb, s.basis)
    nuclear = s.marker.compartment == "nuclear"
    nuclei = detect_nuclei(hema, dab, s.mpp, s.nuclei, use_dab=nuclear, valid=tissue)
    if nuclear:
        nuclei = merge_stained(nuclei, s.thresholds.weak, s.nuclei.merge_solidity)
        intensity, cells, around = nuclei.dab_excess, None, nuclei.dab_background
        classes = s.thresholds.classify_nuclei(intensity, nuclei.dab_share(dab, s.thresholds.weak))
    else:
        membranes = measure_membranes(dab, nuclei, s.mpp, s.thresholds, s.membrane)
        classes, intensity, cells = membranes.classes, membranes.intensity, membranes.cells
        around = np.zeros(len(nuclei), np.float32)
    core = np.zeros(tissue.shape, bool)
    m = s.margin
    core[m:core.shape[0] - m, m:core.shape[1] - m] = True
    lo, hi_y, hi_x = m - 0.5, core.shape[0] - m - 0.5, core.shape[1] - m - 0.5
    counted = (nuclei.x >= lo) & (nuclei.x < hi_x) & (nuclei.y >= lo) & (nuclei.y < hi_y)
    core &= tissue
    labels = None
    if keep_labels:
        lut = np.zeros(len(nuclei) + 1, np.int32)
        lut[1:][counted] = np.arange(1, int(counted.sum()) + 1)
        labels = lut[nuclei.labels]
        cells = lut[cells] if cells is not None else None
    return TileCells(x=nuclei.x[counted], y=nuclei.y[counted], classes=classes[counted],
                     intensity=intensity[counted], tissue_px=int(core.sum()),
                     area_um2=nuclei.area_px[counted] * s.mpp ** 2, surroundings=around[counted],
                     dab_positive_px=int((core & (dab >= s.thresholds.weak)).sum()),
                     labels=labels, cells=cells if keep_labels else None)
