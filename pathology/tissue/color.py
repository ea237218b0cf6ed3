"""Colour measurements shared by the tissue and pen detectors: glass white balance, blur, HSV.

Every step is per pixel or (the blur) per neighbourhood of known radius, so :func:`measure`
computes horizontal bands of the image independently, on as many threads as it is given (numpy
and the blur release the GIL); the result does not depend on the number of bands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
    (yellow, blue, grey) that would otherwise read as saturation."""
    flat = rgb.reshape(-1, 3)
    brightness = flat[:, 0].astype(np.int32)  # the channel sum, a column at a time (3x faster than .sum(axis=1))
    brightness += flat[:, 1]
    brightness += flat[:, 2]
    n = max(1, int(len(flat) * GLASS_SHARE))
    brightest = flat[np.argpartition(brightness, len(flat) - n)[-n:]]
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
    """HSV of the float32 RGB rows ``img`` into ``out[rows]``."""
    r, g, b = np.moveaxis(img, 2, 0).copy()  # contiguous planes: the ufuncs below vectorize
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    out.value[rows] = value
    out.saturation[rows] = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    if out.hue is not None:
        safe = np.where(chroma > 0, chroma, 1.0)
        hue = np.where(value == r, (g - b) / safe % 6.0,
                       np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
        out.hue[rows] = np.where(chroma > 0, hue, 0.0)


def _run(fn: Callable[[int], None], items: Iterable[int], pool: ThreadPoolExecutor | None) -> None:
    if pool is None:
        for item in items:
            fn(item)
    else:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()
