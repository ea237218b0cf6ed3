"""Tissue mask of a slide thumbnail: saturation with a guarded Otsu threshold, minus
pen ink and black borders, then closing, hole filling and removal of specks."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import morphology
from .color import measure
from .params import TissueParams
from .pen import INKS, detect_pen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueMask:
    """Result of :func:`detect_tissue`; all masks are bool and the size of the input."""

    mask: np.ndarray
    """Tissue to tile."""
    pen: np.ndarray
    """Marker ink excluded from the tissue (union of ``inks``)."""
    dark: np.ndarray
    """Black background reaching the image edge (slide edges, scanner borders)."""
    threshold: float
    """Saturation threshold used (Otsu, clipped to the parameters' floor and ceiling)."""
    otsu: float | None
    """Unclipped Otsu threshold (None when nothing was left to threshold)."""
    glass: tuple[float, float, float]
    """Glass colour the image was white-balanced on."""
    inks: dict[str, np.ndarray] = field(default_factory=dict)
    """Mask of each ink that was looked for."""

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def detect_tissue(rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams(),
                  threads: int = 1) -> TissueMask:
    """Find tissue in an RGB uint8 image of ``mpp`` µm/px (a slide thumbnail or a tile).

    Saturation, not brightness, separates stained tissue from glass (dust and coverslip
    edges are grey); the image is first white-balanced on its glass and blurred. Pen ink
    and black borders are removed before Otsu picks the threshold, since their strong
    colours would otherwise drag it up and lose pale tissue.

    ``threads`` > 1 computes bands of the image and the inks in parallel; the mask is the same.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {rgb.dtype} {rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="tissue") as pool:
            return _detect(rgb, mpp, params, pool)
    return _detect(rgb, mpp, params, None)


def _detect(rgb: np.ndarray, mpp: float, params: TissueParams, pool: ThreadPoolExecutor | None) -> TissueMask:
    px_area = mpp * mpp
    hsv, glass = measure(rgb, mpp, params.blur_um, hue=False, pool=pool)
    sharp, _ = measure(rgb, mpp, params.pen_blur_um, glass, pool=pool)  # ink and black edges stay crisp

    black = sharp.value <= params.black_value
    inks = detect_pen(sharp, mpp, params.pen_inks, params.pen_min_area_um2, params.pen_halo_um, pool)
    # black or grey reaching the image edge is the slide's edge or the scanner's border, not a pen mark
    neutral = [inks[name] for name in inks if INKS[name].neutral]
    dark = morphology.touching_border(np.logical_or.reduce([black, *neutral]))
    pen = np.zeros(black.shape, bool)
    for name in inks:
        inks[name] &= ~dark
        pen |= inks[name]
    excluded = pen | black | dark

    candidates = hsv.saturation[~excluded]
    otsu = threshold_otsu(candidates) if candidates.size and np.ptp(candidates) > 0 else None
    threshold = float(np.clip(otsu if otsu is not None else params.max_saturation,
                              params.min_saturation, params.max_saturation))

    tissue = (hsv.saturation >= threshold) & ~excluded
    tissue = morphology.close(tissue, params.closing_um / mpp)
    tissue = morphology.fill_holes(tissue, params.max_hole_um2 / px_area)
    tissue &= ~(pen | dark)
    tissue = morphology.drop_small(tissue, params.min_object_um2 / px_area)
    log.debug("tissue %.1f%%, pen %.1f%%, saturation threshold %.3f (Otsu %s), glass %s",
              100 * tissue.mean(), 100 * pen.mean(), threshold,
              "n/a" if otsu is None else f"{otsu:.3f}", tuple(round(c) for c in glass))
    return TissueMask(mask=tissue, pen=pen, dark=dark, threshold=threshold, otsu=otsu, glass=glass, inks=inks)


def threshold_otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of float ``values`` (not all equal), as scikit-image's
    ``threshold_otsu`` computes it, step for step (same histogram, float32 counts, same
    cumulative sums), so the result is identical without importing scikit-image."""
    counts, edges = np.histogram(values.reshape(-1), bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(np.float32)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[np.argmax(variance12)])
