"""Nucleus detection on stain optical density: blobs at nuclear scale, outlined at half height.

A classical detector in physical units (µm, µm², decadic OD), so it finds the same nuclei
at 0.25 or 0.5 µm/px and on a 512-px field as on a whole slide:

1. **Signal.** Hematoxylin OD plus DAB OD counted up to :attr:`NucleusParams.dab_cap`
   (nuclear markers; hematoxylin alone for membrane markers, where DAB outlines cells).
   The cap keeps a dark brown nucleus from outshining its pale neighbours: past the OD at
   which a nucleus is unmistakable, more brown says nothing more about *where* it is.
   The signal is smoothed (``smooth_um``) and its local background, an opening over
   ``background_um`` (larger than any nucleus), is subtracted: diffuse cytoplasmic stain
   and the grey cast of thick or unevenly lit tissue cancel, nuclei stand out.
2. **Centres.** Scale-normalised Laplacian-of-Gaussian blobs, searched over σ =
   ``blob_um`` (1.5 µm, QuPath's default, to 3 µm: nuclei 4-8.5 µm across, r = σ√2),
   each found at its own scale; overlapping blobs keep the stronger. A blob is a
   nucleus centre when its smoothed contrast exceeds ``seed_od``. Touching nuclei
   are split because each is its own blob, and a long nucleus is one blob at a
   larger scale, not two at a small one.
3. **Outlines.** A watershed of the smoothed contrast from the centres; each nucleus
   keeps the pixels of its basin above ``edge_fraction`` of its own peak contrast (its
   outline at "half height"), so a pale nucleus is outlined as well as a dark one.
4. **Kept** are nuclei of ``min_area_um2 … max_area_um2`` whose mean contrast reaches
   ``min_contrast``.

Glass (stain below ``glass_od``, and the 2 µm of blurred tissue rim next to it) is given
the tile's typical tissue background before the opening; otherwise the opening would take
the glass for background where tissue meets glass, and the tissue's own edge would pass
for nuclei.

Each nucleus gets its centroid, area, mean hematoxylin, mean DAB OD, and the DAB OD of its
surroundings (:func:`dab_background`): the median over a ring ``ring_um`` outside it, clear
of every nucleus. The nucleus's own DAB is the difference (Beer–Lambert: optical densities
add, so the haze the light also crossed around the nucleus is subtracted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import blob_log
from skimage.measure import regionprops
from skimage.morphology import disk
from skimage.segmentation import watershed

from ..errors import InputError


@dataclass(frozen=True)
class NucleusParams:
    """Detection settings (µm, µm² and decadic OD)."""

    min_contrast: float = 0.06
    """Mean background-subtracted signal (OD) of a kept nucleus: the faintest counterstained
    nuclei of the DeepLIIF fields stand 0.05-0.1 above their cytoplasm."""
    smooth_um: float = 0.5
    """Gaussian σ applied to the signal first (noise, JPEG blocks)."""
    background_um: float = 8.0
    """Radius of the opening that estimates the local background (larger than a nucleus)."""
    blob_um: tuple[float, float] = (1.5, 3.0)
    """σ range of the blob search; a nucleus of radius r responds most at σ = r / √2."""
    blob_scales: int = 4
    """Scales searched between the two (1.5, 2, 2.5, 3 µm)."""
    blob_od: float = 0.01
    """Least scale-normalised Laplacian response (OD) of a blob."""
    seed_od: float = 0.03
    """Least smoothed contrast (OD) at a nucleus centre."""
    edge_fraction: float = 0.4
    """A nucleus extends to where its contrast falls to this share of its peak."""
    dab_cap: float = 0.2
    """DAB OD counted in the detection signal (nuclear markers): a nucleus with this much DAB
    is unmistakable, more must not hide its neighbours."""
    min_area_um2: float = 10.0
    max_area_um2: float = 400.0
    glass_od: float = 0.06
    """Smoothed stain OD (H + DAB) below which a pixel is glass (scanned glass is 0.01-0.04)."""
    ring_um: tuple[float, float] = (1.0, 3.0)
    """Inner and outer distance of the ring whose DAB is a nucleus's surroundings."""
    merge_solidity: float = 0.85
    """Touching stained pieces whose union is at least this convex are one nucleus."""

    def __post_init__(self) -> None:
        if not self.min_contrast > 0:
            raise InputError(f"nucleus threshold must be a positive OD, got {self.min_contrast}")
        if not 0 < self.min_area_um2 < self.max_area_um2:
            raise InputError(f"need 0 < min area < max area, got {self.min_area_um2}, {self.max_area_um2}")
        for name in ("smooth_um", "background_um"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.blob_um[0] <= self.blob_um[1] or not 0 <= self.ring_um[0] < self.ring_um[1]:
            raise InputError(f"bad blob or ring sizes: {self.blob_um}, {self.ring_um}")
        if not 0 < self.edge_fraction < 1:
            raise InputError(f"edge fraction must be within (0, 1), got {self.edge_fraction}")

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
    dab_background: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dab_excess(self) -> np.ndarray:
        """Each nucleus's own DAB OD: its mean minus its surroundings'."""
        return self.dab - self.dab_background

    def dab_share(self, dab: np.ndarray, cut: float) -> np.ndarray:
        """Share of each nucleus's pixels whose DAB OD exceeds its surroundings' by ``cut``."""
        if not len(self):
            return np.zeros(0, np.float32)
        lift = np.concatenate([[np.inf], self.dab_background])[self.labels]
        return np.asarray(ndimage.mean(dab - lift >= cut, self.labels, np.arange(1, len(self) + 1)), np.float32)


def contrast(hematoxylin: np.ndarray, dab: np.ndarray, mpp: float, params: NucleusParams,
             use_dab: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The detection signal (unsmoothed) and its smoothed contrast over the local background
    (an opening; square, so separable and fast)."""
    signal = hematoxylin + np.minimum(dab, params.dab_cap) if use_dab else hematoxylin
    smooth = ndimage.gaussian_filter(signal, params.smooth_um / mpp) if params.smooth_um > 0 else signal
    glass = ndimage.gaussian_filter(hematoxylin + dab, 1.0 / mpp) < params.glass_od
    glass = ndimage.binary_dilation(glass, iterations=max(1, round(2.0 / mpp)))  # and tissue's blurred rim
    base = smooth
    if glass.any() and not glass.all():
        base = np.where(glass, np.percentile(smooth[~glass], 20), smooth)
    size = 2 * max(1, round(params.background_um / mpp)) + 1
    background = ndimage.maximum_filter(ndimage.minimum_filter(base, size), size)
    background = ndimage.uniform_filter(background, size)
    return signal - background, smooth - background


def detect_nuclei(hematoxylin: np.ndarray, dab: np.ndarray, mpp: float, params: NucleusParams = NucleusParams(),
                  use_dab: bool = True, valid: np.ndarray | None = None) -> Nuclei:
    """Nuclei in an image given its H and DAB OD (same shape) at ``mpp`` µm/px.

    ``use_dab`` detects on H + DAB (nuclear markers) instead of H alone; ``valid``
    (bool, same shape) limits nuclei to those whose centroid falls inside it.
    """
    raw, lifted = contrast(hematoxylin, dab, mpp, params, use_dab)
    height = ndimage.gaussian_filter(lifted, 0.75 / mpp)
    lo, hi = params.blob_um
    blobs = blob_log(raw, min_sigma=lo / mpp, max_sigma=hi / mpp, num_sigma=params.blob_scales,
                     threshold=params.blob_od, overlap=0.5, exclude_border=False)
    centres = blobs[:, :2].astype(np.int64).reshape(-1, 2)
    centres = centres[height[centres[:, 0], centres[:, 1]] > params.seed_od]
    markers = np.zeros(height.shape, np.int32)
    markers[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1)
    basins = watershed(-height, markers, mask=height > params.seed_od / 2)
    n = len(centres)
    index = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(height, basins, index)) if n else np.zeros(0)
    level = np.concatenate([[np.inf], params.edge_fraction * peak])
    core = ndimage.binary_opening((height >= level[basins]) & (basins > 0), disk(max(1, round(0.5 / mpp))))
    labels = np.where(core, basins, 0)
    px_area = mpp * mpp
    area = ndimage.sum_labels(np.ones_like(labels), labels, index) if n else np.zeros(0)
    summed = ndimage.sum_labels(lifted, labels, index) if n else np.zeros(0)
    mean_contrast = np.divide(summed, area, out=np.zeros(n), where=area > 0)   # a basin may have lost every pixel
    keep = (area * px_area >= params.min_area_um2) & (area * px_area <= params.max_area_um2) \
        & (mean_contrast >= params.min_contrast)
    cy, cx = np.zeros(n), np.zeros(n)
    if keep.any():   # centroids of the kept nuclei (the others may have lost every pixel to the opening)
        cy[keep], cx[keep] = np.asarray(ndimage.center_of_mass(core, labels, index[keep])).reshape(-1, 2).T
    if valid is not None and n:
        inside = valid[np.clip(np.round(cy).astype(int), 0, core.shape[0] - 1),
                       np.clip(np.round(cx).astype(int), 0, core.shape[1] - 1)]
        keep &= inside
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    labels = lut[labels]
    index = np.arange(1, int(keep.sum()) + 1)
    mean = (lambda img: np.asarray(ndimage.mean(img, labels, index), np.float32)) if len(index) else \
        (lambda img: np.zeros(0, np.float32))
    return Nuclei(labels=labels, x=np.asarray(cx)[keep].astype(np.float32), y=np.asarray(cy)[keep].astype(np.float32),
                  area_px=np.asarray(area)[keep].astype(np.float32), hematoxylin=mean(hematoxylin), dab=mean(dab),
                  dab_background=dab_background(labels, dab, hematoxylin, lifted, mpp, params))


def merge_stained(nuclei: Nuclei, cut: float, solidity: float) -> Nuclei:
    """Join touching pieces of one stained nucleus.

    A strongly stained nucleus's texture (DAB granules, and the noisy hematoxylin that
    deconvolution leaves under dark DAB) can break it into two or three blobs. Pieces that are
    all stained (own DAB >= ``cut``), touch one another, and together make a convex shape
    (solidity >= ``solidity``) are one nucleus; two stained nuclei side by side meet at a waist
    and stay two. Measures of a joined nucleus are its pieces' area-weighted means.
    """
    stained = np.flatnonzero(nuclei.dab_excess >= cut)
    if len(stained) < 2:
        return nuclei
    labels = nuclei.labels
    parent = np.arange(len(nuclei))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    is_stained = np.zeros(len(nuclei) + 1, bool)
    is_stained[stained + 1] = True
    boxes = ndimage.find_objects(labels)
    for i in stained:
        sl = tuple(slice(max(0, b.start - 2), b.stop + 2) for b in boxes[i])
        near = np.unique(labels[sl][ndimage.binary_dilation(labels[sl] == i + 1, iterations=2)])
        for j in near[(near > i + 1) & is_stained[near]] - 1:
            a, b = root(i), root(int(j))
            if a == b:
                continue
            members = [k for k in stained if root(k) in (a, b)]
            box = tuple(slice(min(boxes[k][d].start for k in members), max(boxes[k][d].stop for k in members))
                        for d in range(2))
            union = np.isin(labels[box], np.asarray(members) + 1)
            if regionprops(union.astype(np.uint8))[0].solidity >= solidity:
                parent[b] = a
    roots = np.array([root(k) for k in range(len(parent))])
    if (roots == np.arange(len(parent))).all():
        return nuclei
    _, new_index = np.unique(roots, return_inverse=True)
    lut = np.concatenate([[0], new_index + 1]).astype(np.int32)
    w = nuclei.area_px.astype(np.float64)
    total = np.bincount(new_index, weights=w)
    mean = lambda v: (np.bincount(new_index, weights=w * v) / total).astype(np.float32)
    return Nuclei(labels=lut[labels], x=mean(nuclei.x), y=mean(nuclei.y), area_px=total.astype(np.float32),
                  hematoxylin=mean(nuclei.hematoxylin), dab=mean(nuclei.dab),
                  dab_background=mean(nuclei.dab_background))


def dab_background(labels: np.ndarray, dab: np.ndarray, hematoxylin: np.ndarray, lifted: np.ndarray, mpp: float,
                   params: NucleusParams) -> np.ndarray:
    """DAB OD around each nucleus: the median over the ring ``ring_um`` outside it of the tissue
    that is no nucleus (clear of every outlined nucleus, and not nuclear-looking itself: its
    contrast below ``seed_od``), each pixel counted for its nearest nucleus. Where a nucleus has
    no such ring (packed among others), the median over all such tissue of the image."""
    n = int(labels.max())
    if not n:
        return np.zeros(0, np.float32)
    inner, outer = (max(1, round(r / mpp)) for r in params.ring_um)
    distance, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[nearest[0], nearest[1]]
    tissue = ndimage.gaussian_filter(hematoxylin + dab, 1.0 / mpp) >= params.glass_od
    clear = tissue & (distance > inner) & (lifted < params.seed_od)
    ring = np.where(clear & (distance <= outer), owner, 0)
    index = np.arange(1, n + 1)
    median = np.asarray(ndimage.median(dab, ring, index), np.float64)
    enough = ndimage.sum_labels(np.ones_like(ring), ring, index) >= max(5, round(1.0 / mpp ** 2))
    fallback = float(np.median(dab[clear])) if clear.any() else 0.0
    return np.where(enough, median, fallback).astype(np.float32)
