"""Stain-matrix normalization (Macenko, Vahadane): shared fit and transform.

Fit an image: tissue OD → two stain vectors (the method's own estimator), ordered by the
stain kind → exact concentrations of every pixel → their 99th percentiles. Transform a
slide to the target: concentrations on the slide's stains, scaled by the ratio of the
percentiles, rebuilt with the target's stains (:class:`.kernel.StainTransfer`). This is
staintools' StainNormalizer, fitted per slide instead of per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import PixelMap, PixelNormalizer, require_tissue
from .errors import StainFitError
from .kernel import StainTransfer
from .lasso import nonneg_lasso2
from .od import rgb_to_od

PERCENTILE = 99


@dataclass(frozen=True)
class StainFit:
    """Stain vectors (rows in the kind's stain order, unit norm) and concentration scale of an image."""

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray
    pixels: int
    tissue_pixels: int


class StainMatrixNormalizer(PixelNormalizer):
    """Base of Macenko and Vahadane; subclasses set ``estimate`` (tissue OD (T, 3) → raw (2, 3))."""

    estimate: ClassVar[Callable[[np.ndarray], np.ndarray]]

    def _fit(self, pixels: np.ndarray) -> StainFit:
        mask = require_tissue(pixels)
        od = rgb_to_od(pixels)
        raw = self.kind.order(self.estimate(od[mask]))
        stains = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        try:
            concentrations = nonneg_lasso2(od, stains)
        except ValueError as exc:
            raise StainFitError(str(exc)) from None
        max_c = np.percentile(concentrations, PERCENTILE, axis=0)
        absent = [name for name, m in zip(self.kind.stains, max_c) if not m > 0]
        if absent:
            raise StainFitError(f"{' and '.join(absent)} concentration is zero in over {PERCENTILE}% "
                                "of pixels: nothing to rescale")
        return StainFit(stains, max_c, len(pixels), int(mask.sum()))

    def _describe(self, fit: StainFit) -> dict[str, Any]:
        return {"stain_matrix": fit.stain_matrix.tolist(), "max_concentrations": fit.max_concentrations.tolist(),
                "pixels": fit.pixels, "tissue_pixels": fit.tissue_pixels}

    def _restore(self, described: dict[str, Any]) -> StainFit:
        return StainFit(np.asarray(described["stain_matrix"], np.float64),
                        np.asarray(described["max_concentrations"], np.float64),
                        int(described["pixels"]), int(described["tissue_pixels"]))

    def _pixel_map(self, slide: StainFit, target: StainFit) -> PixelMap:
        return StainTransfer(slide.stain_matrix, slide.max_concentrations, target.stain_matrix,
                             target.max_concentrations)
