"""The Ki-67 hotspot: the circle of fixed area with the highest index.

The International Ki67 in Breast Cancer Working Group scores Ki-67 globally (over the whole
invasive tumour, as :mod:`.pipeline` does over the tissue or ROI) and, where asked, in a
hotspot: the region of a fixed size where the proportion of brown nuclei is highest. Here the
hotspot is the circle of ``area_mm2`` (0.2 mm² by default, about one 40x high-power field)
whose index is highest among circles lying on what was scored (at least :data:`MIN_COVERAGE` of
the circle on the tissue or ROI: a circle half off the tissue holds few cells, and its index
is noise) and holding at least ``min_cells`` counted nuclei, searched on a grid of centres
``step_um`` apart (cells binned, counts summed over a disk), then counted exactly around the
best centre. A slide whose counted nuclei all fit in one such circle, or whose scored area is no
larger than one (a field of view, a small ROI), has its hotspot equal to its global index, and
says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

MIN_COVERAGE = 0.9


@dataclass(frozen=True)
class Hotspot:
    """The hotspot circle (level-0 pixels) and its counts."""

    x: float
    y: float
    radius_px: float
    cells: int
    positive: int
    area_mm2: float
    whole: bool            # every counted nucleus lies in the circle: the hotspot is the global index

    @property
    def index(self) -> float:
        return 100.0 * self.positive / self.cells if self.cells else 0.0

    def describe(self, mpp: float) -> dict:
        return {"index": round(self.index, 2), "cells": self.cells, "positive": self.positive,
                "centre_level0": [round(self.x, 1), round(self.y, 1)], "radius_um": round(self.radius_px * mpp, 1),
                "area_mm2": self.area_mm2, "equals_global": self.whole}


def find_hotspot(x: np.ndarray, y: np.ndarray, positive: np.ndarray, mpp: float, area_mm2: float = 0.2,
                 min_cells: int = 100, step_um: float = 25.0,
                 region: tuple[np.ndarray, tuple[float, float]] | None = None) -> Hotspot | None:
    """The hotspot of the nuclei at level-0 ``x``, ``y`` (``positive`` bool each) on a slide of
    ``mpp`` µm/px, or None when no circle on the ``region`` (a mask and its level-0 px per mask
    px; None: wherever there are cells) holds ``min_cells`` nuclei."""
    x, y, positive = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(positive, bool)
    radius_um = math.sqrt(area_mm2 * 1e6 / math.pi)
    r = radius_um / mpp
    if not len(x):
        return None
    cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    scored_mm2 = np.inf if region is None else region[0].sum() * region[1][0] * region[1][1] * mpp * mpp / 1e6
    if np.hypot(x - cx, y - cy).max() <= r or scored_mm2 <= area_mm2:   # no more than one circle's worth
        return Hotspot(float(cx), float(cy), float(r), len(x), int(positive.sum()), area_mm2, True)
    step = step_um / mpp
    x0, y0 = x.min() - r, y.min() - r
    nx, ny = int((x.max() + r - x0) // step) + 1, int((y.max() + r - y0) // step) + 1
    bins = (np.clip(((y - y0) // step).astype(np.int64), 0, ny - 1),
            np.clip(((x - x0) // step).astype(np.int64), 0, nx - 1))
    cells = np.zeros((ny, nx))
    pos = np.zeros((ny, nx))
    np.add.at(cells, bins, 1)
    np.add.at(pos, bins, positive)
    k = int(math.ceil(r / step))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    kernel = (np.hypot(xx, yy) * step <= r).astype(np.float64)
    n = np.rint(signal.fftconvolve(cells, kernel, mode="same"))
    p = np.rint(signal.fftconvolve(pos, kernel, mode="same"))
    ok = n >= min_cells
    if region is not None:
        mask, (sx, sy) = region
        rows = np.clip(((y0 + (np.arange(ny) + 0.5) * step) // sy).astype(np.int64), -1, mask.shape[0])
        cols = np.clip(((x0 + (np.arange(nx) + 0.5) * step) // sx).astype(np.int64), -1, mask.shape[1])
        on = np.zeros((ny, nx))
        rin, cin = (rows >= 0) & (rows < mask.shape[0]), (cols >= 0) & (cols < mask.shape[1])
        on[np.ix_(rin, cin)] = mask[np.ix_(rows[rin], cols[cin])]
        ok &= signal.fftconvolve(on, kernel, mode="same") >= MIN_COVERAGE * kernel.sum() - 0.5
    if not ok.any():
        return None
    index = np.where(ok, p / np.maximum(n, 1), -1.0)
    best = np.flatnonzero(index == index.max())
    i = best[np.argmax(n.ravel()[best])]                  # ties: the circle with more cells
    by, bx = divmod(int(i), nx)
    return _exact(x, y, positive, x0 + (bx + 0.5) * step, y0 + (by + 0.5) * step, r, area_mm2, len(x), min_cells)


def _exact(x, y, positive, cx, cy, r, area_mm2, total, min_cells) -> Hotspot | None:
    inside = np.hypot(x - cx, y - cy) <= r
    n = int(inside.sum())
    if n < min(min_cells, total):
        return None
    return Hotspot(float(cx), float(cy), float(r), n, int(positive[inside].sum()), area_mm2, n == total)
