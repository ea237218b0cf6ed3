"""Synthetic whole-slide images with known truth, for tests, demos and benchmarks.

``write_synthetic_slide(path, SynthConfig(...))`` renders procedural H&E tissue
(stroma, tumor nests, nuclei) through Beer–Lambert into a pyramidal Aperio SVS and
writes tissue and tumor masks and a JSON description beside it.
"""

from .config import SynthConfig, derive_seed
from .recipe import RECIPES, Recipe
from .render import SlideRenderer
from .writer import SynthTruth, truth_paths, write_synthetic_slide

__all__ = ["RECIPES", "Recipe", "SlideRenderer", "SynthConfig", "SynthTruth", "derive_seed", "truth_paths",
           "write_synthetic_slide"]
