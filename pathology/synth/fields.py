"""Slide-wide low-resolution fields: where tissue is, and where tumor is.

Made once per slide on a coarse grid (one sample per ``ds`` × ``ds`` level-0 block,
at the block centre) and stored as signed distances to their edge, in grid
samples, so the renderer can upsample them bilinearly and cut a crisp edge at
level 0, and the truth masks are simply ``field > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .noise import filtered_noise, upsample_field

_SD_CLIP = 8.0  # signed distances beyond this many samples are never looked at closely


@dataclass(frozen=True)
class SlideFields:
    """Coarse tissue and tumor fields (float32 signed distances in grid samples, > 0 inside)."""

    ds: int
    tissue: np.ndarray
    tumor: np.ndarray
    fragments: int

    @property
    def tissue_mask(self) -> np.ndarray:
        return self.tissue > 0

    @property
    def tumor_mask(self) -> np.ndarray:
        return (self.tumor > 0) & self.tissue_mask


def _signed_distance(f: np.ndarray) -> np.ndarray:
    """First-order distance to the zero level of ``f`` (f / |∇f|), clipped."""
    gy, gx = np.gradient(f)
    sd = f / np.maximum(np.hypot(gx, gy), 1e-4)
    return np.clip(sd, -_SD_CLIP, _SD_CLIP).astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth noise (≈ unit std) with correlation length ``sigma`` samples: made on a grid
    ``sigma / 3`` times coarser and upsampled, padded so opposite edges are unrelated."""
    k = max(1, int(sigma / 3))
    h, w = -(-shape[0] // k) + (k > 1), -(-shape[1] // k) + (k > 1)
    pad = int(min(3 * sigma / k, max(h, w)))
    small = filtered_noise(rng, (h + pad, w + pad), (sigma / k, sigma / k))[:h, :w]
    return upsample_field(small, k, 0, 0, shape[1], shape[0]) if k > 1 else small


def _fragments(rng: np.random.Generator, fw: int, fh: int, sample_um: float) -> tuple[np.ndarray, int]:
    """≈ Signed distance (grid samples, > 0 inside) to a few warped elliptical tissue
    fragments laid along the slide's long axis, fading out before the slide's border."""
    transpose = fh > fw
    long_, short = (fh, fw) if transpose else (fw, fh)
    n = int(rng.integers(2, 5)) if long_ >= 1.4 * short else int(rng.integers(1, 4))
    x, y = np.arange(long_, dtype=np.float32)[None, :], np.arange(short, dtype=np.float32)[:, None]
    f = np.full((short, long_), -np.inf, np.float32)
    slot = long_ / n
    for k in range(n):
        cx = (k + 0.5) * slot + rng.normal(0, 0.04 * slot)
        cy = short * (0.5 + rng.normal(0, 0.04))
        a = 0.5 * slot * rng.uniform(0.5, 0.7)
        b = 0.5 * short * rng.uniform(0.35, 0.55)
        t = rng.uniform(-0.3, 0.3) * min(1.0, b / a)
        c, s = np.float32(math.cos(t)), np.float32(math.sin(t))
        u = (x - cx) * (c / a) + (y - cy) * (s / a)
        v = (y - cy) * (c / b) - (x - cx) * (s / b)
        u *= u
        v *= v
        u += v
        np.sqrt(u, out=u)
        u -= 1
        u *= -min(a, b)
        np.maximum(f, u, out=f)
    del u, v
    size = min(slot, short)
    f += 0.07 * size * _noise(rng, (short, long_), max(1.0, 0.15 * size))   # lobes
    f += 30 / sample_um * _noise(rng, (short, long_), max(1.0, 60 / sample_um))  # frayed edges (µm)
    margin = 0.15 * short + 2
    fade = np.maximum(margin - np.minimum(np.minimum(x, long_ - 1 - x), np.minimum(y, short - 1 - y)), 0)
    fade *= fade
    fade *= 0.8 / margin
    f -= fade
    return (f.T if transpose else f), n


def make_fields(rng: np.random.Generator, width: int, height: int, ds: int, mpp: float,
                tumor_fraction: float) -> SlideFields:
    """Tissue fragments and tumor regions covering ``tumor_fraction`` of the tissue."""
    fw, fh = math.ceil(width / ds), math.ceil(height / ds)
    sample_um = ds * mpp
    body, n = _fragments(rng, fw, fh, sample_um)
    tissue = _signed_distance(body)
    inside = tissue > 0
    # tumor: smooth blobs, favouring the depth of the tissue, thresholded at the quantile
    # that gives the requested share of tissue
    blob = max(1.5, 0.09 * min(fw, fh), 120.0 / sample_um)
    u = _noise(rng, (fh, fw), blob)
    depth = np.clip(body / np.float32(0.1 * min(fw, fh) / math.sqrt(n) + 1), 0, 1, out=body)
    depth *= 1.2
    u += depth
    del body, depth
    if tumor_fraction <= 0 or not inside.any():
        tumor = np.full((fh, fw), -_SD_CLIP, np.float32)
    elif tumor_fraction >= 1:
        tumor = np.full((fh, fw), _SD_CLIP, np.float32)
    else:
        threshold = np.quantile(u[inside], 1 - tumor_fraction)
        tumor = _signed_distance(u - threshold)
    return SlideFields(ds=ds, tissue=tissue, tumor=tumor, fragments=n)
