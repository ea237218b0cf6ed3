"""Parameters of one synthetic slide."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .recipe import RECIPES


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic slide: the same config gives the same pixels.

    ``stain_variation`` 0 keeps the recipe's standard stain vectors; larger values
    perturb the stain vectors and intensities per slide (drawn from ``seed``), so a
    cohort has the colour spread that stain normalization is meant to remove.
    """

    width: int = 8192
    height: int = 6144
    mpp: float = 0.25
    seed: int = 0
    tumor_fraction: float = 0.3
    stain_variation: float = 0.5
    tile_size: int = 256
    quality: int = 85
    mask_downsample: int = 32
    recipe: str = "he"

    def __post_init__(self) -> None:
        problems = []
        if self.width < 64 or self.height < 64:
            problems.append(f"slide must be at least 64x64 pixels, got {self.width}x{self.height}")
        if not (0.05 <= self.mpp <= 20):
            problems.append(f"mpp must be a microscope resolution (0.05-20 µm/px), got {self.mpp}")
        if not (0 <= self.tumor_fraction <= 1):
            problems.append(f"tumor fraction must be within 0-1, got {self.tumor_fraction}")
        if self.stain_variation < 0:
            problems.append(f"stain variation must be >= 0, got {self.stain_variation}")
        if self.tile_size % 16 or not (16 <= self.tile_size <= 4096):
            problems.append(f"tile size must be a multiple of 16 within 16-4096, got {self.tile_size}")
        if not (1 <= self.quality <= 100):
            problems.append(f"JPEG quality must be within 1-100, got {self.quality}")
        if self.mask_downsample < 4 or self.mask_downsample & (self.mask_downsample - 1):
            problems.append(f"mask downsample must be a power of two >= 4, got {self.mask_downsample}")
        if self.recipe not in RECIPES:
            problems.append(f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
        if not (0 <= self.seed < 2 ** 63):
            problems.append(f"seed must be a non-negative integer, got {self.seed}")
        if problems:
            raise InputError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def derive_seed(seed: int, index: int) -> int:
    """Seed of slide ``index`` in a cohort generated from ``seed`` (well mixed, reproducible)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))
