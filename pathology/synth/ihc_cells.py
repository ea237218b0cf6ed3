"""Synthetic IHC cell fields with exact per-cell truth, for checking IHC scoring.

Tumour-like cells (a jittered hexagonal packing, Voronoi cell borders, ``cell_um`` apart: 10 µm
packs the nuclei nearly touching, 20 µm leaves them sparse on pale cytoplasm), either as a
patch on glass (``layout="patch"``) or filling the whole image like a microscope's field of
view (``layout="field"``, no glass at all), each cell drawn in one of four classes
0 / 1+ / 2+ / 3+ in set proportions:

- ``nuclear`` (ER, PgR, Ki-67): the nucleus carries DAB at its class's decadic OD
  (:data:`NUCLEAR_DAB`, measured in the middle of each band of the default thresholds),
  classes mixed at random from cell to cell;
- ``membrane`` (HER2): nuclei are hematoxylin only and the cell border carries DAB:
  class 1+ faint and incomplete, 2+ moderate and complete, 3+ strong and complete
  (:data:`MEMBRANE`), classes in contiguous patches.

A ``hotspot`` (centre and radius in µm) gives the cells inside it ``hotspot_fractions``
instead, as a Ki-67 hotspot.

Colour is made by Beer–Lambert from the standard hematoxylin and DAB vectors, with
pixel noise and a slight optical blur, and stored as a pyramidal Aperio-style TIFF
(JPEG tiles) so the scorer reads it like a scanned slide. ``<stem>.json`` beside it
holds the truth: cell count, count per class, positive percentage and H-score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.color import rgb_from_hed

from ..errors import InputError
from ..publish import publish_json, publishing

SCHEMA = "pathology-synth-ihc-cells/1"
COMPARTMENTS = ("nuclear", "membrane")
LAYOUTS = ("patch", "field")
NUCLEAR_DAB = (0.02, 0.29, 0.64, 1.25)
"""DAB OD inside a nucleus of class 0, 1+, 2+, 3+. Measured over a detected nucleus, whose
blurred rim is included, the mean is about 15 % lower (0.05, 0.25, 0.48, 0.86), and above the
cytoplasm's 0.04 around it about 0.01, 0.21, 0.44, 0.82: the middle of each band of the
default thresholds 0.1 / 0.3 / 0.55."""
MEMBRANE = ((0.0, 0.0), (0.2, 0.4), (0.36, 1.0), (0.75, 1.0))
"""(DAB OD, share of the circumference stained) of the membrane of class 0, 1+, 2+, 3+.
The membrane is 1.5 µm wide and blurred: its measured peak is about 0.13, 0.28, 0.65,
inside the bands of the HER2 thresholds 0.08 / 0.2 / 0.45."""
NUCLEUS_H = (0.32, 0.16)           # hematoxylin OD of a DAB-negative / DAB-positive nucleus
CYTOPLASM = (0.06, 0.04)           # hematoxylin, DAB OD of cytoplasm
GLASS_OD = 0.02


@dataclass(frozen=True)
class CellFieldConfig:
    """One synthetic IHC field. ``fractions`` are the shares of cells in class 0, 1+, 2+, 3+."""

    width: int = 2048
    height: int = 2048
    mpp: float = 0.5
    seed: int = 0
    compartment: str = "nuclear"
    fractions: tuple[float, float, float, float] = (0.4, 0.2, 0.25, 0.15)
    cell_um: float = 14.0
    nucleus_um: float = 3.6
    tile_size: int = 256
    quality: int = 90
    layout: str = "patch"
    hotspot: tuple[float, float, float] | None = None     # centre x, y and radius, µm
    hotspot_fractions: tuple[float, float, float, float] = (0.2, 0.3, 0.3, 0.2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "hotspot_fractions", tuple(float(f) for f in self.hotspot_fractions))
        if self.compartment not in COMPARTMENTS:
            raise InputError(f"compartment must be one of {', '.join(COMPARTMENTS)}, got {self.compartment!r}")
        if self.layout not in LAYOUTS:
            raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        for name in ("fractions", "hotspot_fractions"):
            f = getattr(self, name)
            if len(f) != 4 or min(f) < 0 or not np.isclose(sum(f), 1):
                raise InputError(f"{name} must be 4 non-negative shares summing to 1, got {f}")
        if self.hotspot is not None and self.compartment != "nuclear":
            raise InputError("a hotspot is drawn for nuclear markers only")
        if min(self.width, self.height) < 256:
            raise InputError(f"a cell field must be at least 256x256 pixels, got {self.width}x{self.height}")


def _seeds(cfg: CellFieldConfig, rng: np.random.Generator) -> np.ndarray:
    """Cell centres (n, 2) as (x, y) pixels: a jittered hexagonal packing inside an ellipse
    (a patch) or over the whole image (a field)."""
    step = cfg.cell_um / cfg.mpp
    rows = np.arange(0, cfg.height, step * np.sqrt(3) / 2)
    pts = np.array([(x + (i % 2) * step / 2, y) for i, y in enumerate(rows) for x in np.arange(0, cfg.width, step)])
    pts += rng.normal(0, 0.08 * step, pts.shape)
    if cfg.layout == "field":
        return pts[(pts[:, 0] >= 0) & (pts[:, 0] <= cfg.width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= cfg.height - 1)]
    cx, cy = cfg.width / 2, cfg.height / 2
    inside = ((pts[:, 0] - cx) / (0.44 * cfg.width)) ** 2 + ((pts[:, 1] - cy) / (0.44 * cfg.height)) ** 2 < 1
    return pts[inside]


def _cells(cfg: CellFieldConfig, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label image (0 = glass, i + 1 = cell i) and each pixel's distance to its cell's border."""
    marker = np.ones((cfg.height, cfg.width), bool)
    iy, ix = np.round(seeds[:, 1]).astype(int), np.round(seeds[:, 0]).astype(int)
    marker[iy, ix] = False
    dist, (ny, nx) = ndimage.distance_transform_edt(marker, return_indices=True)
    index = np.zeros(marker.shape, np.int32)
    index[iy, ix] = np.arange(1, len(seeds) + 1)
    labels = index[ny, nx]
    labels[dist > 0.62 * cfg.cell_um / cfg.mpp] = 0  # cells at the edge of the patch are round, not open
    border = np.zeros(marker.shape, bool)
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    border[:-1] |= labels[:-1] != labels[1:]
    return labels, ndimage.distance_transform_edt(~border)


def _classes(cfg: CellFieldConfig, seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class of each cell, in exactly the configured proportions: at random for nuclear
    markers; in contiguous patches for membranes, since a cell's membrane lies against
    its neighbours' and staining is regional in real tumours (a lone negative cell among
    3+ cells would be ringed by their DAB)."""
    if cfg.compartment == "nuclear":
        classes = np.empty(len(seeds), np.int64)
        hot = np.zeros(len(seeds), bool)
        if cfg.hotspot is not None:
            x, y, r = (v / cfg.mpp for v in cfg.hotspot)
            hot = np.hypot(seeds[:, 0] - x, seeds[:, 1] - y) <= r
        for where, fractions in ((~hot, cfg.fractions), (hot, cfg.hotspot_fractions)):
            classes[where] = rng.permutation(np.repeat(np.arange(4), _shares(fractions, int(where.sum()))))
        return classes
    n = len(seeds)
    counts = _shares(cfg.fractions, n)
    field = ndimage.gaussian_filter(rng.standard_normal((cfg.height // 8 + 1, cfg.width // 8 + 1)),
                                    2.5 * cfg.cell_um / cfg.mpp / 8)
    value = field[(seeds[:, 1] // 8).astype(int), (seeds[:, 0] // 8).astype(int)]
    classes = np.empty(n, int)
    classes[np.argsort(value, kind="stable")] = np.repeat(np.arange(4), counts)
    return classes


def _shares(fractions: tuple[float, ...], n: int) -> np.ndarray:
    """``n`` cells split in exactly these proportions (the remainder to the largest class)."""
    counts = np.floor(np.array(fractions) * n).astype(int)
    counts[np.argmax(fractions)] += n - counts.sum()
    return counts


def render_cell_field(cfg: CellFieldConfig) -> tuple[np.ndarray, dict]:
    """RGB uint8 (height, width, 3) of the field and its truth (JSON-ready)."""
    rng = np.random.default_rng(cfg.seed)
    seeds = _seeds(cfg, rng)
    n = len(seeds)
    labels, to_border = _cells(cfg, seeds)
    classes = _classes(cfg, seeds, rng)
    # nuclei: ellipses around the centres, kept 1 µm inside their own cell
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float32)
    cell = labels - 1
    inside = cell >= 0
    dx = np.where(inside, xx - seeds[cell, 0], 0)
    dy = np.where(inside, yy - seeds[cell, 1], 0)
    radius = cfg.nucleus_um / cfg.mpp * np.clip(rng.normal(1, 0.1, n), 0.75, 1.25)
    stretch = np.sqrt(rng.uniform(1.0, 1.6, n))
    theta = rng.uniform(0, np.pi, n)
    c, s = np.cos(theta)[cell], np.sin(theta)[cell]
    u = (dx * c + dy * s) / (radius * stretch)[cell]
    v = (-dx * s + dy * c) / (radius / stretch)[cell]
    rho = np.sqrt(u * u + v * v)
    nucleus = inside & (rho < 1) & (to_border > 1.0 / cfg.mpp)
    gain = np.clip(rng.normal(1, 0.06, n), 0.85, 1.15)[cell]          # cell-to-cell intensity
    chromatin = 1 + 0.12 * ndimage.gaussian_filter(rng.standard_normal(labels.shape), 1.0) / 0.28
    hema = np.where(inside, CYTOPLASM[0], 0.0)
    dab = np.where(inside, CYTOPLASM[1], 0.0)
    k = classes[cell]
    if cfg.compartment == "nuclear":
        nuc_dab = np.asarray(NUCLEAR_DAB)[k] * gain
        nuc_h = np.where(k > 0, NUCLEUS_H[1], NUCLEUS_H[0]) * gain
    else:
        nuc_dab, nuc_h = 0.0, NUCLEUS_H[0] * gain
        level, share = (np.asarray(v)[k] for v in zip(*MEMBRANE, strict=True))
        phase = rng.uniform(0, 2 * np.pi, n)[cell]
        arc = np.mod(np.arctan2(dy, dx) - phase, 2 * np.pi) < share * 2 * np.pi
        membrane = inside & (to_border <= 0.5 / cfg.mpp) & arc
        dab = np.where(membrane, level * gain, dab)
    hema = np.where(nucleus, nuc_h * chromatin, hema)
    dab = np.where(nucleus, nuc_dab * chromatin, dab)
    sigma = 0.35 / cfg.mpp
    vectors = rgb_from_hed[[0, 2]] / np.linalg.norm(rgb_from_hed[[0, 2]], axis=1, keepdims=True)
    od = (ndimage.gaussian_filter(hema, sigma)[..., None] * vectors[0]
          + ndimage.gaussian_filter(dab, sigma)[..., None] * vectors[1] + GLASS_OD)
    od += rng.normal(0, 0.008, od.shape)
    rgb = np.clip(np.round(255 * 10 ** -od), 0, 255).astype(np.uint8)
    counts = np.bincount(classes, minlength=4)
    truth = {
        "schema": SCHEMA, "config": asdict(cfg), "cells": int(n), "class_counts": counts.tolist(),
        "percent_positive": round(100 * counts[1:].sum() / n, 4),
        "h_score": round(100 * float((counts * np.arange(4)).sum()) / n, 4),
        "class_percent": (100 * counts / n).round(4).tolist(),
        "nuclear_dab_od": list(NUCLEAR_DAB), "membrane_dab_od_and_completeness": [list(m) for m in MEMBRANE],
        "centres": np.round(seeds, 1).tolist(), "classes": classes.tolist(),
    }
    return rgb, truth


def write_cell_field(path: str | Path, cfg: CellFieldConfig = CellFieldConfig()) -> dict:
    """Render ``cfg`` into a pyramidal TIFF at ``path`` and ``<stem>.json`` beside it; returns the truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb, truth = render_cell_field(cfg)
    truth["slide"] = path.name
    h, w = rgb.shape[:2]
    t = cfg.tile_size
    with publishing(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        for ds in (1, 4):
            level = rgb if ds == 1 else rgb[:h // ds * ds, :w // ds * ds].reshape(
                h // ds, ds, w // ds, ds, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            desc = (f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t}) JPEG/RGB Q={cfg.quality}"
                    + (f"|AppMag = {10 / cfg.mpp:g}|MPP = {cfg.mpp}" if ds == 1 else f" -> {w // ds}x{h // ds}"))
            tif.write(level, tile=(t, t), compression="jpeg", compressionargs={"level": cfg.quality},
                      photometric="rgb", description=desc, subfiletype=0, metadata=None)
            if ds == 1:  # Aperio's second page is a stripped thumbnail
                tif.write(rgb[::16, ::16].copy(), photometric="rgb", compression="jpeg", metadata=None,
                          description=f"Aperio Image Library v12.0.0\r\n{w}x{h} -> {w // 16}x{h // 16}")
    publish_json(path.with_suffix(".json"), truth, indent=None)
    return truth
