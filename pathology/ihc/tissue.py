"""Where on an IHC image there is tissue to score: optical density above the glass.

An IHC counterstain is pale: hematoxylin-only tissue, or the cytoplasm around sparse
nuclei, carries little colour, so a saturation threshold tuned on H&E takes it for glass.
Glass transmits nearly all light in every channel; any stain, pale or not, absorbs some.
So the mask is the summed decadic optical density (R + G + B, blurred over ``blur_um``)
above the glass's own OD (the image's 1st percentile, never taken above ``glass_max_od``
since glass is bright) by ``min_od``; then gaps are closed, small holes filled and specks
dropped (sizes in µm). Marker-pen ink is taken out with the tiler's ink rules.

The mask is computed at ``mask_mpp`` (8 µm/px: fast on a whole slide) but never on fewer than
``min_mask_px`` pixels along the image's longer side, and at the image's own resolution when
it is small: a 512-px field at 0.25 µm/px is only 16 pixels wide at 8 µm/px.

An image no larger than ``field_um`` on its longer side is a **field of view** (a camera
picture, a TMA core, a region exported from a viewer): all of it is scored, whatever the
mask says, so a pale field never comes out "not evaluable" because of the tissue mask.
Glass in a field holds no nuclei and adds none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, remove_small_objects

from ..errors import InputError
from ..slide import Slide
from ..tissue import TissueParams, detect_tissue
from .deconvolution import OD_TABLE


@dataclass(frozen=True)
class IHCTissueParams:
    """IHC tissue detection settings (µm, µm², decadic OD summed over R, G and B)."""

    mask_mpp: float = 8.0
    """Resolution of the mask on a whole slide."""
    min_mask_px: int = 1024
    """Least mask size along the longer side (finer than ``mask_mpp`` for small images)."""
    blur_um: float = 8.0
    """Gaussian σ before thresholding: a pixel reports its neighbourhood, not one nucleus."""
    min_od: float = 0.05
    """OD above the glass that is tissue (4 % less light on average over the channels)."""
    glass_max_od: float = 0.15
    """Glass is never darker than this (RGB about 226 in every channel): an image whose
    brightest percent is darker holds no glass at all."""
    closing_um: float = 16.0
    max_hole_um2: float = 250_000.0
    """Holes in tissue smaller than this (fat, lumens, vessels) are filled."""
    min_object_um2: float = 10_000.0
    """Specks smaller than this (dust, debris; about 0.01 mm²) are dropped."""
    field_um: float = 2000.0
    """An image no larger than this on its longer side is a field of view, scored whole."""

    def __post_init__(self) -> None:
        if not self.mask_mpp > 0:
            raise InputError(f"mask µm/px must be positive, got {self.mask_mpp}")
        if not self.min_od > 0 or not self.glass_max_od > 0:
            raise InputError(f"tissue OD thresholds must be positive, got {self.min_od}, {self.glass_max_od}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TissueMap:
    """A slide's tissue mask and how it was made."""

    mask: np.ndarray
    scale: tuple[float, float]      # level-0 px per mask px (x, y)
    field: bool                     # a field of view: scored whole
    glass_od: float                 # the glass's summed OD (NaN for a field)
    threshold_od: float             # summed OD above which a pixel is tissue (NaN for a field)

    def describe(self) -> dict:
        return {"field_of_view": self.field, "mask_shape": list(self.mask.shape),
                "glass_od": None if math.isnan(self.glass_od) else round(self.glass_od, 4),
                "threshold_od": None if math.isnan(self.threshold_od) else round(self.threshold_od, 4),
                "tissue_fraction": round(float(self.mask.mean()), 4) if self.mask.size else 0.0}


def is_field(slide: Slide, params: IHCTissueParams) -> bool:
    """Whether the image is a field of view (no larger than ``field_um`` on its longer side)."""
    mpp = slide.require_mpp()
    w, h = slide.dimensions
    return max(w * mpp.x, h * mpp.y) <= params.field_um


def mask_downsample(slide: Slide, params: IHCTissueParams) -> float:
    """Level-0 px per mask px: ``mask_mpp``, finer for a small image (at least ``min_mask_px``
    along its longer side), never finer than the image."""
    mpp = slide.require_mpp().x
    wanted = params.mask_mpp / mpp
    enough = max(slide.dimensions) / params.min_mask_px
    return max(1.0, min(wanted, enough))


def tissue_map(slide: Slide, params: IHCTissueParams) -> TissueMap:
    """The slide's tissue mask (whole image for a field of view)."""
    downsample = mask_downsample(slide, params)
    thumb = slide.read_scaled(downsample)
    w0, h0 = slide.dimensions
    scale = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    if is_field(slide, params):
        return TissueMap(np.ones(thumb.shape[:2], bool), scale, True, math.nan, math.nan)
    mpp = slide.require_mpp().x * scale[0]
    mask, glass, threshold = detect_ihc_tissue(thumb, mpp, params)
    return TissueMap(mask, scale, False, glass, threshold)


def detect_ihc_tissue(rgb: np.ndarray, mpp: float, params: IHCTissueParams = IHCTissueParams()
                      ) -> tuple[np.ndarray, float, float]:
    """Tissue mask of an RGB uint8 image at ``mpp`` µm/px, the glass OD and the threshold used."""
    od = OD_TABLE[rgb].sum(axis=-1)
    sigma = params.blur_um / mpp
    if sigma >= 0.5:
        od = ndimage.gaussian_filter(od, sigma)
    glass = min(float(np.percentile(od, 1)), params.glass_max_od)
    threshold = glass + params.min_od
    mask = od > threshold
    pen = detect_tissue(rgb, mpp, TissueParams()).pen     # the tiler's marker-ink rules
    mask &= ~pen
    radius = round(params.closing_um / mpp)
    if radius >= 1 and mask.any():
        padded = np.pad(mask, radius)
        mask = ndimage.binary_closing(padded, disk(radius))[radius:-radius, radius:-radius]
    px_area = mpp * mpp
    mask = _fill_holes(mask, params.max_hole_um2 / px_area)
    smallest = min(params.min_object_um2 / px_area, 0.01 * mask.size)
    mask = remove_small_objects(mask, max_size=max(1, round(smallest)))
    return mask, glass, threshold


def _fill_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """``mask`` with its enclosed gaps smaller than ``max_px`` filled; glass reaching the image's
    edge is never a hole, however small the image."""
    gaps, n = ndimage.label(~mask)
    if not n:
        return mask
    size = np.bincount(gaps.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]]))
    fill = size <= max_px
    fill[0] = False
    fill[edge] = False
    return mask | fill[gaps]
