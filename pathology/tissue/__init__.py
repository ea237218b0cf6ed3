"""Tissue detection: where on a slide there is tissue worth tiling, and where pen ink is."""

from .mask import TissueMask, detect_tissue
from .params import TissueParams
from .pen import INKS, ColourRule, Ink

__all__ = ["INKS", "ColourRule", "Ink", "TissueMask", "TissueParams", "detect_tissue"]
