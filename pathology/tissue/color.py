"""Colour measurements shared by the tissue and pen detectors: glass white balance, blur, HSV."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GLASS_SHARE = 0.01          # the brightest 1% of pixels estimate the glass colour...
GLASS_MIN_CHANNEL = 160     # ...if they are bright...
GLASS_MAX_CHROMA = 0.2      # ...and near-neutral or tinted as scanners tint (yellow, blue, grey),
STAINED_CHROMA = 0.05       # not pink or purple (green lowest), which is tissue: an all-tissue tile


@dataclass(frozen=True)
class Hsv:
    """Hue in degrees [0, 360), saturation and value in [0, 1], of the white-balanced, blurred image."""

    hue: np.ndarray
    saturation: np.ndarray
    value: np.ndarray


def glass_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """The colour of empty glass, to white-balance by: scanners give glass a tint
    (yellow, blue, grey) that would otherwise read as saturation."""
    flat = rgb.reshape(-1, 3)
    brightness = flat.sum(axis=1, dtype=np.int32)
    n = max(1, int(len(flat) * GLASS_SHARE))
    brightest = flat[np.argpartition(brightness, len(flat) - n)[-n:]]
    glass = np.median(brightest, axis=0)
    chroma = (glass.max() - glass.min()) / max(glass.max(), 1.0)
    stained = glass[1] == glass.min() and chroma > STAINED_CHROMA
    if glass.min() >= GLASS_MIN_CHANNEL and chroma <= GLASS_MAX_CHROMA and not stained:
        return tuple(float(c) for c in glass)
    return (255.0, 255.0, 255.0)


def measure(rgb: np.ndarray, mpp: float, blur_um: float,
            glass: tuple[float, float, float] | None = None) -> tuple[Hsv, tuple[float, float, float]]:
    """White-balance ``rgb`` on its glass (estimated unless given), blur it by ``blur_um`` (σ)
    and return HSV and the glass colour."""
    glass = glass_colour(rgb) if glass is None else glass
    img = np.clip(rgb.astype(np.float32) / np.asarray(glass, np.float32), 0.0, 1.0)
    sigma = blur_um / mpp
    if sigma >= 0.3:  # below a third of a pixel a blur changes nothing
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
    return _hsv(img), glass


def _hsv(img: np.ndarray) -> Hsv:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(value == r, (g - b) / safe % 6.0,
                   np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(chroma > 0, hue, 0.0)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return Hsv(hue.astype(np.float32), saturation.astype(np.float32), value.astype(np.float32))
