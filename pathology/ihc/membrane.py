"""HER2-style membrane measurement: how completely and how strongly DAB rings each cell.

Cells are grown from the hematoxylin nuclei by a watershed on the smoothed DAB image,
so neighbouring cells meet on the DAB ridges between them (the membranes), and no cell
reaches further than ``reach_um`` from its nucleus. Around each nucleus the cell is cut
into ``sectors`` angular sectors; the strongest DAB in a sector is where a ray from the
nucleus crosses the membrane. Then per cell:

- completeness: the share of sectors whose peak DAB reaches the ``weak`` threshold;
- intensity: the median peak DAB over those stained sectors.

Cell classes follow the ASCO/CAP 2018 wording as far as pixels allow:

- 3+: complete (completeness >= ``complete``) and intense (>= ``strong``);
- 2+: complete and weak to moderate (``moderate`` … ``strong``), or incomplete but
  moderate to intense (the 2018 "unusual pattern", e.g. basolateral, scored equivocal);
- 1+: any stained membrane short of that (faint or barely perceptible, or incomplete);
- 0: stained sectors below ``min_stained``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from .markers import IntensityThresholds
from .nuclei import Nuclei


@dataclass(frozen=True)
class MembraneParams:
    reach_um: float = 6.0
    """Furthest a cell extends beyond its nucleus (a breast tumour cell is 10-20 µm across)."""
    sectors: int = 16
    complete: float = 0.85
    """Share of stained sectors that counts as a complete (circumferential) membrane."""
    min_stained: float = 0.25
    """Share of stained sectors below which a cell counts as unstained."""
    smooth_um: float = 0.25
    """Gaussian σ against pixel noise; more would flatten a 1-µm membrane's peak."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Membranes:
    """Per-cell results, aligned with the nuclei they grew from; ``cells`` is the label image."""

    cells: np.ndarray
    completeness: np.ndarray
    intensity: np.ndarray
    classes: np.ndarray


def measure_membranes(dab: np.ndarray, nuclei: Nuclei, mpp: float, thresholds: IntensityThresholds,
                      params: MembraneParams = MembraneParams()) -> Membranes:
    """Grow cells from ``nuclei`` over ``dab`` (OD, at ``mpp``) and class their membranes."""
    n = len(nuclei)
    smooth = ndimage.gaussian_filter(dab, params.smooth_um / mpp) if params.smooth_um > 0 else dab
    if n == 0:
        empty = np.zeros(0, np.float32)
        return Membranes(np.zeros(dab.shape, np.int32), empty, empty, np.zeros(0, np.int8))
    near = ndimage.distance_transform_edt(nuclei.labels == 0) <= params.reach_um / mpp
    cells = watershed(smooth, nuclei.labels, mask=near)
    ring = (cells > 0) & (nuclei.labels == 0)
    yy, xx = np.nonzero(ring)
    owner = cells[yy, xx] - 1
    angle = np.arctan2(yy - nuclei.y[owner], xx - nuclei.x[owner])
    sector = ((angle + np.pi) / (2 * np.pi) * params.sectors).astype(np.int64) % params.sectors
    flat = owner * params.sectors + sector
    peak = np.full(n * params.sectors, -np.inf, np.float32)
    np.maximum.at(peak, flat, smooth[yy, xx])
    peak = peak.reshape(n, params.sectors)
    seen = np.isfinite(peak)
    stained = seen & (peak >= thresholds.weak)
    completeness = stained.sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
    masked = np.where(stained, peak, np.nan)
    masked[~stained.any(axis=1), 0] = 0.0  # an unstained cell has intensity 0 (not an all-NaN median)
    intensity = np.nanmedian(masked, axis=1)
    return Membranes(cells, completeness.astype(np.float32), intensity.astype(np.float32),
                     classify_cells(completeness, intensity, thresholds, params))


def classify_cells(completeness: np.ndarray, intensity: np.ndarray, thresholds: IntensityThresholds,
                   params: MembraneParams = MembraneParams()) -> np.ndarray:
    """HER2 cell class 0-3 (int8) from membrane completeness and intensity."""
    complete = completeness >= params.complete
    stained = completeness >= params.min_stained
    out = np.where(stained, 1, 0)
    out = np.where(stained & (intensity >= thresholds.moderate), 2, out)
    out = np.where(complete & (intensity >= thresholds.strong), 3, out)
    return out.astype(np.int8)
