"""Tile-level IHC maps: per-tile class counts, and heatmaps of positivity and intensity.

Each working tile's core is one map cell. Two pictures per slide, drawn over the slide
like the MIL attention heatmaps (:mod:`pathology.heatmap`): positivity (% cells of class
1+ or more) and intensity (the tile's H-score, 0-300, from the same classes), painted only
over what was scored, with the ROI and the Ki-67 hotspot drawn on top. A tile without
counted cells is left unpainted. ``tiles/<slide_id>.csv`` holds the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..heatmap.files import write_csv, write_png
from ..heatmap.overlay import blend, colour_lut, with_legend
from ..heatmap.raster import OutputGrid, paint_mean
from ..tiling.grid import Grid
from .analysis import TileCells
from .markers import IntensityThresholds, Marker
from .report.marks import Marks

CMAP = "jet"
ALPHA = 0.5
CSV_HEADER = ["x", "y", "width", "height", "tissue_px", "dab_positive_px", "cells", "negative", "weak_1plus",
              "moderate_2plus", "strong_3plus", "percent_positive", "h_score", "mean_intensity_od"]


@dataclass
class TileTable:
    """Per-tile results of a slide, row i = tile i of the grid."""

    counts: np.ndarray          # int64 (N, 4): cells per class
    tissue_px: np.ndarray       # int64 (N,)
    dab_px: np.ndarray          # int64 (N,)
    intensity_sum: np.ndarray   # float64 (N,): summed per-cell intensity OD
    area_sum: np.ndarray        # float64 (N, 4): summed nucleus area per class, µm²
    stained_around: np.ndarray  # int64 (N,): counted nuclei whose surroundings carry DAB (>= the weak cut)

    @classmethod
    def empty(cls, n: int) -> TileTable:
        return cls(np.zeros((n, 4), np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n),
                   np.zeros((n, 4)), np.zeros(n, np.int64))

    def record(self, i: int, cells: TileCells, weak: float = np.inf) -> None:
        self.counts[i] = cells.counts()
        self.tissue_px[i], self.dab_px[i] = cells.tissue_px, cells.dab_positive_px
        self.intensity_sum[i] = float(cells.intensity.sum())
        self.area_sum[i] = np.bincount(cells.classes, weights=cells.area_um2, minlength=4)[:4]
        self.stained_around[i] = int((cells.surroundings >= weak).sum())

    def totals(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    def percent_positive(self) -> np.ndarray:
        n = self.counts.sum(axis=1)
        return np.divide(100.0 * self.counts[:, 1:].sum(axis=1), n, out=np.zeros(len(n)), where=n > 0)

    def h_score(self) -> np.ndarray:
        n = self.counts.sum(axis=1)
        return np.divide(100.0 * (self.counts @ np.arange(4)), n, out=np.zeros(len(n)), where=n > 0)

    def showcase(self) -> int | None:
        """The tile to show in the QC picture: most cells of the rarer of positive and
        negative (so both kinds are on show), then most cells; None without cells."""
        n = self.counts.sum(axis=1)
        if not len(n) or n.max() == 0:
            return None
        both = np.minimum(self.counts[:, 0], self.counts[:, 1:].sum(axis=1))
        return int(np.lexsort((n, both))[-1])


def write_maps(out_dir: Path, slide_id: str, table: TileTable, grid: Grid, picture: np.ndarray,
               dimensions: tuple[int, int], tissue: np.ndarray, marker: Marker,
               thresholds: IntensityThresholds, tile_um: float, marks: Marks | None = None) -> dict[str, Path]:
    """Write ``maps/<id>.positivity.png``, ``maps/<id>.intensity.png`` and ``tiles/<id>.csv``;
    ``tissue`` is the mask of what was scored (tissue, in the ROI), ``marks`` the ROI and hotspot."""
    marks = marks or Marks()
    h, w = picture.shape[:2]
    out_grid = OutputGrid(w, h, (dimensions[0] / w, dimensions[1] / h), 0.0)
    margin = (np.asarray(grid.patch_size_level0) - np.asarray(grid.stride_level0)) / 2
    origin = grid.coords + margin                      # level-0 corner of each tile's core
    core = np.asarray(grid.stride_level0)
    n = table.counts.sum(axis=1)
    has = n > 0
    mask = np.asarray(Image.fromarray(tissue.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)) >= 128
    lut = colour_lut(CMAP)
    what = "cells" if marker.compartment == "membrane" else "nuclei"
    paths = {}
    for name, values, top, label in (
            ("positivity", table.percent_positive(), 100.0, f"% {what} 1+ or stronger per tile"),
            ("intensity", table.h_score(), 300.0, f"H-score per tile (cuts {thresholds.weak:g} / "
                                                  f"{thresholds.moderate:g} / {thresholds.strong:g} DAB OD)")):
        mean, covered = paint_mean(out_grid, origin[has], core, values[has] / top)
        painted = marks.draw(blend(picture, mean, covered & mask, lut, ALPHA), dimensions)
        ticks = [(f, f"{f * top:g}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
        title = f"{slide_id} · {marker.title} · {name} · {int(has.sum())} tiles of {tile_um:g} µm"
        paths[name] = write_png(out_dir / "maps" / f"{slide_id}.{name}.png",
                                with_legend(painted, lut, ticks, title, label))
    mean_od = np.divide(table.intensity_sum, n, out=np.zeros(len(n)), where=has)
    rows = [[int(x), int(y), round(float(core[0])), round(float(core[1])), int(t), int(d), int(c), *map(int, k),
             round(float(p), 2), round(float(s), 1), round(float(m), 4)]
            for (x, y), t, d, c, k, p, s, m in zip(np.round(origin), table.tissue_px, table.dab_px, n, table.counts,
                                                  table.percent_positive(), table.h_score(), mean_od, strict=True)]
    paths["tiles"] = write_csv(out_dir / "tiles" / f"{slide_id}.csv", CSV_HEADER, rows)
    return paths
