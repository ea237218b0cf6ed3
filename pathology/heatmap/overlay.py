"""The heatmap picture: a colour-mapped score map blended over the slide, only where there
is tissue under a scored patch, above a legend strip (title and colour bar).

The top ``height`` rows of the picture are the slide at the output resolution, pixel for
pixel; the legend is added below, so the map stays aligned with the slide.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ..errors import InputError
from ..qc import _font

BAR_COLOUR = (32, 32, 36)
TEXT_COLOUR = (240, 240, 240)


def colour_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map."""
    if name not in colormaps:
        raise InputError(f"unknown colour map {name!r} (any matplotlib name, e.g. jet, inferno, viridis, turbo)")
    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def blend(picture: np.ndarray, values: np.ndarray, paint: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """``picture`` with ``lut[values]`` blended in at ``alpha`` where ``paint`` is set;
    every other pixel is left exactly as it was."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be within 0-1, got {alpha}")
    out = picture.copy()
    index = np.clip(np.rint(values[paint] * 255), 0, 255).astype(np.intp)
    mixed = (1.0 - alpha) * picture[paint].astype(np.float32) + alpha * lut[index].astype(np.float32)
    out[paint] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def with_legend(picture: np.ndarray, lut: np.ndarray, ticks: list[tuple[float, str]], title: str,
                label: str) -> Image.Image:
    """``picture`` above a dark strip with ``title`` and a horizontal colour bar labelled
    ``label``, with ``ticks`` (position in [0, 1], text) under it."""
    h, w = picture.shape[:2]
    font, small = _font(max(12, min(22, round(w / 60)))), _font(max(11, min(18, round(w / 75))))
    pad = max(6, font.size // 2)
    bar_h = max(10, font.size)
    strip_h = pad + font.size + pad + bar_h + 4 + small.size + pad + small.size + pad
    out = Image.new("RGB", (w, h + strip_h), BAR_COLOUR)
    out.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(out)
    y = h + pad
    draw.text((pad, y), fit_text(title, font, w - 2 * pad), font=font, fill=TEXT_COLOUR)
    y += font.size + pad
    bar_w = max(16, w - 2 * pad - 2 * round(small.getlength("highest") / 2))
    x0 = (w - bar_w) // 2
    gradient = lut[np.linspace(0, 255, bar_w).round().astype(np.intp)]
    out.paste(Image.fromarray(np.ascontiguousarray(np.broadcast_to(gradient, (bar_h, bar_w, 3)))), (x0, y))
    y += bar_h
    for pos, text in ticks:
        x = x0 + round(pos * (bar_w - 1))
        draw.line((x, y, x, y + 4), fill=TEXT_COLOUR)
        tw = small.getlength(text)
        draw.text((min(max(0, x - tw / 2), w - tw), y + 4), text, font=small, fill=TEXT_COLOUR)
    y += 4 + small.size + pad
    draw.text((max(0, (w - small.getlength(label)) / 2), y), fit_text(label, small, w), font=small, fill=TEXT_COLOUR)
    return out


def fit_text(text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
