"""Colour deconvolution of IHC pixels into hematoxylin and DAB optical density.

Units are decadic optical density, ``OD = -log10(I / 255)`` per stain (as QuPath reports
"DAB OD"), so the intensity thresholds read like the numbers pathologists already use.

The default basis is the standard Ruifrok & Johnston hematoxylin and DAB vectors (those
of ``skimage.color.rgb2hed``) with their cross product as the third, residual stain, as
QuPath's "H-DAB" does: an eosin vector, absent from IHC, would otherwise soak up part of
the brown and leak it into hematoxylin. DAB stays close to skimage's (``rgb2hed`` gives
natural-log OD divided by ``ln 1e6``, i.e. our decadic OD / 6; on ``ihc.png`` the
DAB-positive area differs by under half a point). A fixed matrix is the default because the
thresholds are only comparable across slides and labs on a fixed scale, and because a
per-slide fit is unstable where it matters most: on a DAB-negative slide there is no
DAB direction to find, and a fitted "DAB" vector would make counterstain look positive.
``fitted`` (Macenko on the slide's tissue, vectors assigned to H and DAB by angle) suits
scanners or batches whose DAB hue is off the standard; it falls back to the standard
vector for a stain whose fit strays more than :data:`MAX_FIT_ANGLE` from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.color import rgb_from_hed

from ..stain.kinds import order_h_dab
from ..stain.macenko import macenko_stains

log = logging.getLogger(__name__)

MAX_FIT_ANGLE = 25.0          # degrees a fitted stain vector may differ from the standard one
MIN_FIT_PIXELS = 2000         # stained pixels needed to fit
FIT_MIN_OD = 0.15             # natural-log OD sum below which a pixel is glass (staintools uses L < 0.8)
OD_TABLE = -np.log10(np.maximum(np.arange(256), 1) / 255.0).astype(np.float32)
"""Decadic OD of each 8-bit intensity (0 counts as 1, as in staintools)."""


@dataclass(frozen=True)
class StainBasis:
    """Three unit OD vectors (rows: hematoxylin, residual, DAB) and their inverse."""

    name: str
    vectors: np.ndarray

    @property
    def inverse(self) -> np.ndarray:
        """(3, 3) matrix taking an OD row vector (r, g, b) to stain amounts (H, third, DAB)."""
        return np.linalg.inv(self.vectors).astype(np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "hematoxylin": self.vectors[0].round(6).tolist(),
                "dab": self.vectors[2].round(6).tolist(), "residual": self.vectors[1].round(6).tolist()}


def _with_residual(name: str, h: np.ndarray, dab: np.ndarray) -> StainBasis:
    h, dab = h / np.linalg.norm(h), dab / np.linalg.norm(dab)
    third = np.cross(h, dab)
    return StainBasis(name, np.stack([h, third / np.linalg.norm(third), dab]))


def standard_basis() -> StainBasis:
    """Ruifrok & Johnston's H and DAB vectors (``skimage.color.rgb_from_hed``) and their residual."""
    return _with_residual("standard (Ruifrok & Johnston H-DAB + residual)", rgb_from_hed[0], rgb_from_hed[2])


def fit_basis(rgb: np.ndarray) -> StainBasis:
    """H and DAB vectors fitted to ``rgb`` pixels (Macenko), each kept only within
    :data:`MAX_FIT_ANGLE` of its standard vector; the third row is their cross product."""
    standard = standard_basis().vectors
    pixels = rgb.reshape(-1, 3)
    od = -np.log(np.maximum(pixels, 1) / 255.0)
    od = od[od.sum(axis=1) > FIT_MIN_OD]
    if len(od) < MIN_FIT_PIXELS:
        log.warning("too few stained pixels (%d) to fit stain vectors: using the standard ones", len(od))
        return standard_basis()
    h, dab = order_h_dab(macenko_stains(od))
    kept = []
    for name, fitted, ref in (("hematoxylin", h, standard[0]), ("DAB", dab, standard[2])):
        fitted = fitted / np.linalg.norm(fitted)
        angle = np.degrees(np.arccos(np.clip(fitted @ ref, -1, 1)))
        if angle > MAX_FIT_ANGLE:
            log.warning("fitted %s vector is %.0f° from the standard one (a %s-poor slide?): using the standard",
                        name, angle, name)
            fitted = ref
        kept.append(fitted)
    return _with_residual("fitted (Macenko, per slide)", kept[0], kept[1])


BASES: dict[str, Callable[..., StainBasis]] = {"standard": lambda rgb=None: standard_basis(), "fitted": fit_basis}
"""Stain-matrix choices by name; each takes a sample of the slide's RGB pixels."""


def deconvolve(rgb: np.ndarray, basis: StainBasis) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB decadic OD (float32, each (h, w), clipped at 0) of an RGB uint8 image."""
    od = OD_TABLE[rgb]                               # (h, w, 3)
    inv = basis.inverse
    h = np.maximum(od @ inv[:, 0], 0)
    dab = np.maximum(od @ inv[:, 2], 0)
    return h, dab
