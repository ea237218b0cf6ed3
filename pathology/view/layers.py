"""Overlays of per-box scores (patch attention, IHC tile scores) on the slide, in level-0 pixels.

A layer is drawn in the browser as one transparent picture laid over the whole slide, its
pixels drawn as squares (no smoothing): each picture pixel is a square of ``cell`` level-0
pixels, coloured by the mean normalized score of the boxes covering it
(:func:`pathology.heatmap.raster.paint_mean`) and transparent where no box is. Boxes on a grid
(patches, IHC tiles) get the grid's step as the cell, so every box is exactly its squares;
otherwise a cell is a quarter of a box side (a box edge is then off by an eighth of a box at
most). The picture's origin is the slide's (0, 0), so the page places it with one scale factor.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..heatmap.overlay import colour_lut
from ..heatmap.raster import OutputGrid, paint_mean
from ..heatmap.run import ranks
from ..heatmap.scores import NORMALIZERS, Normalized, extremes, normalize

CELL_FRACTION = 4            # picture pixels per box side
MAX_PIXELS = 4096 * 4096     # a larger picture takes coarser cells
EXTREMES = 8                 # boxes listed at each end (the run's default montage size)


def attention_scales(raw: np.ndarray) -> dict[str, Normalized]:
    """Attention on every colour scale of ``pathology heatmap`` (percentile first, its default)."""
    return {name: normalize(raw, name) for name in NORMALIZERS}


@dataclass(frozen=True)
class Layer:
    """Scores of boxes on the slide and how to colour them."""

    name: str                   # "tumor", "% positive"
    group: str                  # "attention" or "ihc"
    coords: np.ndarray          # (N, 2) level-0 top-left corners
    size0: tuple[float, float]  # level-0 box width, height
    raw: np.ndarray             # (N,) scores as recorded
    scales: dict[str, Normalized]  # colour scales by name: scores in [0, 1] and the colour bar's ticks
    ends: tuple[str, str] = ("highest attention", "lowest attention")
    cmap: str = "jet"

    def cell(self, dimensions: tuple[int, int]) -> int:
        """Level-0 pixels per picture pixel over a slide of ``dimensions``."""
        cell = max(1, math.floor(min(self.size0) / CELL_FRACTION))
        if all(float(v).is_integer() for v in self.size0) and np.all(self.coords == np.round(self.coords)):
            # boxes on a grid: its step, so each box is exactly its cells
            step = int(np.gcd.reduce(np.concatenate([self.coords.astype(np.int64).ravel(),
                                                     np.asarray(self.size0, np.int64)])))
            cell = max(cell, step)
        w0, h0 = dimensions
        while math.ceil(w0 / cell) * math.ceil(h0 / cell) > MAX_PIXELS:
            cell *= 2
        return cell

    def picture(self, dimensions: tuple[int, int], scale: str) -> bytes:
        """The RGBA PNG over the whole slide on colour ``scale``: colour where a box is, transparent elsewhere."""
        cell = self.cell(dimensions)
        grid = OutputGrid(math.ceil(dimensions[0] / cell), math.ceil(dimensions[1] / cell), (cell, cell), 0.0)
        mean, covered = paint_mean(grid, self.coords, np.asarray(self.size0, np.float64), self.scales[scale].values)
        rgba = np.zeros((grid.height, grid.width, 4), np.uint8)
        rgba[..., :3] = colour_lut(self.cmap)[np.clip(np.rint(mean * 255), 0, 255).astype(np.intp)]
        rgba[..., 3] = np.where(covered, 255, 0)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue()

    def describe(self, dimensions: tuple[int, int], url: str) -> dict:
        """What the page needs: per colour scale the picture (``url/<scale>.png``) and the colour bar;
        the pictures' level-0 width; the boxes at both ends."""
        cell = self.cell(dimensions)
        lut = colour_lut(self.cmap)
        top, low = extremes(self.raw, EXTREMES)
        rank = ranks(self.raw)
        w, h = self.size0

        def boxes(rows: np.ndarray) -> list[dict]:
            return [{"x": int(self.coords[i, 0]), "y": int(self.coords[i, 1]), "w": round(float(w), 1),
                     "h": round(float(h), 1), "value": float(self.raw[i]), "rank": int(rank[i])} for i in rows]

        scales = [{"name": name, "picture": f"{url}/{name}.png", "label": scale.label,
                   "ticks": [[float(p), t] for p, t in scale.ticks]} for name, scale in self.scales.items()]
        return {"name": self.name, "group": self.group, "scales": scales,
                "width0": cell * math.ceil(dimensions[0] / cell), "boxes": len(self.raw),
                "colours": ["#{:02x}{:02x}{:02x}".format(*lut[i]) for i in np.linspace(0, 255, 11).round().astype(int)],
                "ends": list(self.ends), "top": boxes(top), "bottom": boxes(low)}
