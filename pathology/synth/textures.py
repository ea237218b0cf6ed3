"""Periodic textures shared by all slides at one resolution (made once per process).

Each slide looks them up at its own seed-dependent offset, so slides differ while
a cohort pays for the FFTs only once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .noise import filtered_noise, warp_periodic

FIBRE_ANGLES = np.arange(4) * np.pi / 4
EDGE_UM = 2.5  # raggedness of the tissue outline (std, µm)


@dataclass(frozen=True)
class Textures:
    """Float32 periodic textures; lengths are scaled to the slide's µm/px."""

    fibres: tuple[np.ndarray, ...]
    """Wavy collagen streaks, one per angle of :data:`FIBRE_ANGLES` (zero mean, unit std)."""
    edge: np.ndarray
    """Displacement of the tissue outline, in pixels."""
    fine: np.ndarray
    """Small-scale variation of tumor nest outlines (zero mean, unit std)."""
    mottle: np.ndarray
    """Granular cytoplasm (mean 1)."""
    grain: np.ndarray
    """Pixel-scale noise of glass and tissue (zero mean, unit std)."""


def _fibre(rng: np.random.Generator, period: int, angle: float, px: float) -> np.ndarray:
    """Collagen along ``angle``: broad bundles plus fine fibrils, gently waved."""
    streaks = filtered_noise(rng, (period, period), (14 * px, 2.5 * px), (5 * px, max(0.7, 0.45 * px)),
                             angle=angle, weights=(1.0, 0.25))
    return warp_periodic(streaks, rng, 5 * px, 1.5 * px)


@functools.lru_cache(maxsize=4)
def textures_for(mpp: float) -> Textures:
    """The textures at ``mpp`` µm/px (deterministic; cached)."""
    rng = np.random.default_rng(20240611)
    px = 1.0 / mpp
    period = int(min(1024, max(64, math.ceil(128 * px / 32) * 32)))
    fibres = tuple(_fibre(rng, period + 32 * k, angle, px) for k, angle in enumerate(FIBRE_ANGLES))
    edge = filtered_noise(rng, (period,) * 2, (2.2 * px,) * 2, (max(0.7, 0.6 * px),) * 2, weights=(1.0, 0.15))
    return Textures(
        fibres=fibres,
        edge=edge * np.float32(EDGE_UM * px),
        fine=filtered_noise(rng, (period - 32,) * 2, (4 * px,) * 2),
        mottle=1 + filtered_noise(rng, (256, 256), (max(0.7, 1.2 * px),) * 2),
        grain=filtered_noise(rng, (256, 256), (1.0, 1.0)),
    )
