"""Colour measurements shared by the tissue and pen detectors: glass white balance, blur, HSV.

Every step is per pixel or (the blur) per neighbourhood of known radius, so :func:`measure`
computes horizontal bands of the image independently, on as many threads as it is given (numpy
and the blur release the GIL); the result does not depend on the number of bands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from .blur import gaussian_blur, gaussian_kernel

GLASS_SHARE = 0.01          # the brightest 1% of pixels estimate the glass colour...
GLASS_MIN_CHANNEL = 160     # ...if they are bright...
GLASS_MAX_CHROMA = 0.2      # ...and near-neutral or tinted as scanners tint (yellow, blue, grey),
STAINED_CHROMA = 0.05       # not pink or purple (green lowest), which is tissue: an all-tissue tile
MIN_SIGMA = 0.3             # below a third of a pixel a blur changes nothing
BAND_ROWS = 64              # rows per unit of work: the float32 temporaries stay in cache


@dataclass(frozen=True)
class Hsv:
    """Hue in degrees [0, 360), saturation and value in [0, 1], of the white-balanced, blurred image.
    ``hue`` is None when it was not asked for."""

    hue: np.ndarray | None
    saturation: np.ndarray
    value: np.ndarray


def glass_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """The colour of empty glass, to white-balance by: scanners give glass a tint
    (yellow, blue, grey) that would otherwise read as saturation.

    The brightest :data:`GLASS_SHARE` of pixels by channel sum (of equally bright ones at the
    cut, the first in scan order) are found from a histogram of the sums, not a partial sort:
    a tenth of the time on a thumbnail."""
    flat = rgb.reshape(-1, 3)
    brightness = flat[:, 0].astype(np.int32)  # the channel sum, a column at a time (3x faster than .sum(axis=1))
    brightness += flat[:, 1]
    brightness += flat[:, 2]
    n = max(1, int(len(flat) * GLASS_SHARE))
    at_least = np.cumsum(np.bincount(brightness, minlength=3 * 255 + 1)[::-1])[::-1]  # pixels >= each sum
    cut = int(np.flatnonzero(at_least >= n)[-1])  # the sum that the n-th brightest pixel has
    ties = np.flatnonzero(brightness == cut)[:n - (int(at_least[cut + 1]) if cut < 3 * 255 else 0)]
    brightest = flat[np.concatenate([np.flatnonzero(brightness > cut), ties])]
    glass = np.median(brightest, axis=0)
    chroma = (glass.max() - glass.min()) / max(glass.max(), 1.0)
    stained = glass[1] == glass.min() and chroma > STAINED_CHROMA
    if glass.min() >= GLASS_MIN_CHANNEL and chroma <= GLASS_MAX_CHROMA and not stained:
        return tuple(float(c) for c in glass)
    return (255.0, 255.0, 255.0)


def measure(rgb: np.ndarray, mpp: float, blur_um: float, glass: tuple[float, float, float] | None = None,
            hue: bool = True, pool: ThreadPoolExecutor | None = None) -> tuple[Hsv, tuple[float, float, float]]:
    """White-balance ``rgb`` on its glass (estimated unless given), blur it by ``blur_um`` (σ)
    and return HSV (without hue unless ``hue``) and the glass colour. Bands run on ``pool``."""
    glass = glass_colour(rgb) if glass is None else glass
    sigma = blur_um / mpp
    blur = sigma >= MIN_SIGMA
    radius = gaussian_kernel(sigma)[1] if blur else 0
    h, w = rgb.shape[:2]
    out = Hsv(np.empty((h, w), np.float32) if hue else None, np.empty((h, w), np.float32),
              np.empty((h, w), np.float32))
    balance = np.asarray(glass, np.float32)

    rows = max(BAND_ROWS, 4 * radius)  # the blur's context rows cost at most half the band's

    def band(start: int) -> None:
        stop = min(h, start + rows)
        lo, hi = max(0, start - radius), min(h, stop + radius)  # the rows the blur looks at
        img = np.clip(rgb[lo:hi].astype(np.float32) / balance, 0.0, 1.0)
        if blur:
            img = gaussian_blur(img, sigma, rows=(start - lo, stop - lo))
        _hsv(img, out, slice(start, stop))

    _run(band, range(0, h, rows), pool)
    return out, glass


def _hsv(img: np.ndarray, out: Hsv, rows: slice) -> None:
    """HSV of the float32 RGB rows ``img`` (0-1) into ``out[rows]``, by OpenCV: hue in degrees
    from the largest channel, saturation = chroma / value. OpenCV divides by chroma and value
    plus float32's epsilon, which moves them by a few ulps and leaves grey (chroma 0) at hue 0
    and black at saturation 0, as the formulas' guards would."""
    hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
    if out.hue is not None:
        out.hue[rows] = hsv[:, :, 0]
    out.saturation[rows] = hsv[:, :, 1]
    out.value[rows] = hsv[:, :, 2]


def _run(fn: Callable[[int], None], items: Iterable[int], pool: ThreadPoolExecutor | None) -> None:
    if pool is None:
        for item in items:
            fn(item)
    else:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()
