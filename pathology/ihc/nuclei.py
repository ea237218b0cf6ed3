"""Nucleus detection on stain optical density: background subtraction, threshold, watershed.

A classical detector in the manner of QuPath's positive cell detection, in physical
units so it behaves the same at any working resolution:

1. the detection signal (hematoxylin + DAB for nuclear markers, where a positive
   nucleus is brown; hematoxylin alone for membrane markers, where DAB outlines cells)
   is smoothed (``smooth_um``) and its local background, an opening over
   ``background_um``, is subtracted: diffuse cytoplasmic stain cancels, nuclei stand out;
2. pixels above ``threshold`` (OD) are nucleus, pin-holes filled, specks removed;
3. touching nuclei are split by a watershed on the distance to the background, seeded
   at distance maxima at least ``split_um`` apart;
4. objects outside ``min_area_um2 … max_area_um2`` are dropped (debris, merged clumps).

Glass (stain below ``glass_od``, and the 2 µm of blurred tissue rim next to it) is given
the tile's typical tissue background before the opening; otherwise the opening would
take the glass for background where tissue meets glass, and the tissue's own edge would
pass for nuclei.

Each nucleus gets its centroid, area, mean hematoxylin and mean DAB OD.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import remove_small_holes
from skimage.segmentation import watershed

from ..errors import InputError


@dataclass(frozen=True)
class NucleusParams:
    """Detection settings (µm, µm² and decadic OD)."""

    threshold: float = 0.1
    """Background-subtracted signal OD above which a pixel belongs to a nucleus."""
    smooth_um: float = 0.5
    """Gaussian σ applied to the signal first (noise, JPEG blocks)."""
    background_um: float = 8.0
    """Radius of the opening that estimates the local background (larger than a nucleus)."""
    split_um: float = 2.5
    """Minimum distance between the seeds of two touching nuclei."""
    min_area_um2: float = 10.0
    max_area_um2: float = 400.0
    glass_od: float = 0.06
    """Smoothed stain OD (H + DAB) below which a pixel is glass (scanned glass is 0.01-0.04)."""

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise InputError(f"nucleus threshold must be a positive OD, got {self.threshold}")
        if not 0 < self.min_area_um2 < self.max_area_um2:
            raise InputError(f"need 0 < min area < max area, got {self.min_area_um2}, {self.max_area_um2}")
        for name in ("smooth_um", "background_um", "split_um"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Nuclei:
    """Detected nuclei of one image: a label image (0 = background, i + 1 = nucleus i) and
    per-nucleus measurements (arrays of length n, pixel units of the image)."""

    labels: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area_px: np.ndarray
    hematoxylin: np.ndarray
    dab: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def detection_signal(hematoxylin: np.ndarray, dab: np.ndarray, mpp: float, params: NucleusParams,
                     use_dab: bool = True) -> np.ndarray:
    """Smoothed stain OD (H + DAB, or H alone) minus its local background (an opening;
    square, so separable and fast)."""
    signal = hematoxylin + dab if use_dab else hematoxylin
    if params.smooth_um > 0:
        signal = ndimage.gaussian_filter(signal, params.smooth_um / mpp)
    glass = ndimage.gaussian_filter(hematoxylin + dab, 1.0 / mpp) < params.glass_od
    glass = ndimage.binary_dilation(glass, iterations=max(1, round(2.0 / mpp)))  # and tissue's blurred rim
    base = signal
    if glass.any() and not glass.all():
        base = np.where(glass, np.percentile(signal[~glass], 20), signal)
    size = 2 * max(1, round(params.background_um / mpp)) + 1
    return signal - ndimage.maximum_filter(ndimage.minimum_filter(base, size), size)


def detect_nuclei(hematoxylin: np.ndarray, dab: np.ndarray, mpp: float, params: NucleusParams = NucleusParams(),
                  use_dab: bool = True, valid: np.ndarray | None = None) -> Nuclei:
    """Nuclei in an image given its H and DAB OD (same shape) at ``mpp`` µm/px.

    ``use_dab`` detects on H + DAB (nuclear markers) instead of H alone; ``valid``
    (bool, same shape) limits nuclei to those whose centroid falls inside it (tissue).
    """
    px_area = mpp * mpp
    fg = detection_signal(hematoxylin, dab, mpp, params, use_dab) > params.threshold
    # fill pin-holes only: a ring of touching nuclei around a gland must not become one disk
    fg = remove_small_holes(ndimage.binary_opening(fg), max_size=max(1, round(params.min_area_um2 / px_area)))
    distance = ndimage.distance_transform_edt(fg)
    distance = ndimage.gaussian_filter(distance, 1.0)
    seeds = peak_local_max(distance, min_distance=max(1, round(params.split_um / mpp)), labels=ndimage.label(fg)[0],
                           exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    labels = watershed(-distance, markers, mask=fg)
    n = int(labels.max())
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(labels), labels, index) if n else np.zeros(0)
    keep = (area * px_area >= params.min_area_um2) & (area * px_area <= params.max_area_um2)
    if n:
        cy, cx = np.asarray(ndimage.center_of_mass(fg, labels, index)).reshape(-1, 2).T
    else:
        cy = cx = np.zeros(0)
    if valid is not None and n:
        inside = valid[np.clip(np.round(cy).astype(int), 0, fg.shape[0] - 1),
                       np.clip(np.round(cx).astype(int), 0, fg.shape[1] - 1)]
        keep &= inside
    return _relabel(labels, keep, cx, cy, area, hematoxylin, dab)


def _relabel(labels: np.ndarray, keep: np.ndarray, cx, cy, area, hematoxylin, dab) -> Nuclei:
    """Drop rejected labels and renumber the rest 1..n, measuring mean stains."""
    lut = np.zeros(len(keep) + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    labels = lut[labels]
    index = np.arange(1, int(keep.sum()) + 1)
    mean = (lambda img: np.asarray(ndimage.mean(img, labels, index), np.float32)) if len(index) else \
        (lambda img: np.zeros(0, np.float32))
    return Nuclei(labels=labels, x=np.asarray(cx)[keep].astype(np.float32), y=np.asarray(cy)[keep].astype(np.float32),
                  area_px=np.asarray(area)[keep].astype(np.float32), hematoxylin=mean(hematoxylin), dab=mean(dab))
