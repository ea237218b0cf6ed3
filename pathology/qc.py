"""The per-slide QC picture a pathologist checks: thumbnail, tissue outline, excluded pen
ink and the kept patch grid, under a title bar with a legend."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .publish import publish_with

log = logging.getLogger(__name__)

OUTLINE_COLOUR = (0, 215, 80)      # tissue outline: green stands out on pink tissue and white glass
PEN_COLOUR = (255, 200, 0)         # hatching over excluded ink: yellow shows on red, green and black ink
GRID_COLOUR = (20, 70, 230)        # kept patches: thin blue lines, more transparent when dense
BAR_COLOUR = (32, 32, 36)
TEXT_COLOUR = (240, 240, 240)
MIN_SIDE = 1000                    # smaller thumbnails are upscaled (integer factor) to at least this


def write_qc_image(path: str | Path, thumbnail_rgb: np.ndarray, tissue_mask: np.ndarray, boxes: np.ndarray,
                   pen_mask: np.ndarray | None = None, title: str | None = None) -> Path:
    """Draw the QC picture and write it as PNG at ``path`` (atomically; folders are created).

    ``boxes`` is (N, 4) x0, y0, x1, y1 in thumbnail pixels; the masks have the thumbnail's
    height and width.
    """
    picture = render_qc_image(thumbnail_rgb, tissue_mask, boxes, pen_mask, title)
    path = publish_with(path, lambda fh: picture.save(fh, format="PNG", compress_level=3))
    log.debug("QC picture %s (%dx%d)", path, *picture.size)
    return path


def render_qc_image(thumbnail_rgb: np.ndarray, tissue_mask: np.ndarray, boxes: np.ndarray,
                    pen_mask: np.ndarray | None = None, title: str | None = None) -> Image.Image:
    """The QC picture as a PIL image (see :func:`write_qc_image`)."""
    thumb = np.asarray(thumbnail_rgb)
    if thumb.ndim != 3 or thumb.shape[2] != 3 or thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be RGB uint8 (h, w, 3), got {thumb.dtype} {thumb.shape}")
    h, w = thumb.shape[:2]
    for name, m in (("tissue_mask", tissue_mask), ("pen_mask", pen_mask)):
        if m is not None and np.shape(m) != (h, w):
            raise ValueError(f"{name} is {np.shape(m)}, the thumbnail {(h, w)}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    scale = max(1, math.ceil(MIN_SIDE / max(h, w)))
    size = (w * scale, h * scale)
    line = max(2, round(max(size) / 450))
    base = Image.fromarray(thumb).resize(size, Image.Resampling.BICUBIC) if scale > 1 else Image.fromarray(thumb)
    pixels = np.array(base)
    if pen_mask is not None and np.any(pen_mask):
        pen = _upscale_mask(pen_mask, size)
        yy, xx = np.nonzero(pen)
        period = 4 * line
        stripe = (xx + yy) % period < line
        pixels[yy[stripe], xx[stripe]] = PEN_COLOUR
    tissue = _upscale_mask(tissue_mask, size)
    pixels[_outer_band(tissue, line)] = OUTLINE_COLOUR
    picture = Image.fromarray(pixels)
    _draw_grid(picture, boxes * scale)
    return _with_title_bar(picture, title, len(boxes))


def _upscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mask resized to ``size`` (w, h), smoothed rather than blocky when enlarged."""
    img = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    if img.size != size:
        factor = size[0] / img.width
        img = img.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(factor / 2))
    return np.asarray(img) >= 128


def _outer_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels just outside the mask, ``width`` thick: the outline never hides tissue."""
    square = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return (cv2.dilate(np.ascontiguousarray(mask, dtype=bool).view(np.uint8), square) != 0) & ~mask


def _draw_grid(picture: Image.Image, boxes: np.ndarray) -> None:
    """Patch rectangles, 1 px, translucent (fainter when small, so dense grids do not hide
    the tissue); patches too small to outline are filled faintly instead."""
    if not len(boxes):
        return
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    side = float(np.median(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    corners = np.round(boxes).astype(int).tolist()
    if side >= 5:
        outline = (*GRID_COLOUR, int(np.clip(side * 8, 70, 160)))
        for x0, y0, x1, y1 in corners:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=outline, width=1)
    else:
        fill = (*GRID_COLOUR, 60)
        for x0, y0, x1, y1 in corners:
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=fill)
    picture.paste(Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB"))


def _with_title_bar(picture: Image.Image, title: str | None, n_boxes: int) -> Image.Image:
    """Title (wrapped to the width) and a legend, in a dark bar above the picture."""
    w = picture.width
    font = _font(max(14, round(w / 70)))
    small = _font(max(12, round(w / 90)))
    pad = font.size // 2
    lines = _wrap(title, font, w - 2 * pad) if title else []
    legend = [(OUTLINE_COLOUR, "tissue outline"), (PEN_COLOUR, "pen ink (excluded)"),
              (GRID_COLOUR, f"kept patches ({n_boxes})")]
    line_h = font.size + pad // 2
    bar_h = pad + len(lines) * line_h + small.size + pad + pad // 2
    out = Image.new("RGB", (w, picture.height + bar_h), BAR_COLOUR)
    out.paste(picture, (0, bar_h))
    draw = ImageDraw.Draw(out)
    y = pad
    for text in lines:
        draw.text((pad, y), text, font=font, fill=TEXT_COLOUR)
        y += line_h
    x, y = pad, y + pad // 4
    for colour, label in legend:
        draw.rectangle((x, y + 2, x + small.size - 2, y + small.size), fill=colour)
        x += small.size + pad // 2
        draw.text((x, y), label, font=small, fill=TEXT_COLOUR)
        x += round(small.getlength(label)) + 2 * pad
    return out


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap measured in pixels (runs of spaces inside a line are kept)."""
    lines: list[str] = []
    for word in re.findall(r"\S+\s*", text):
        if lines and font.getlength((lines[-1] + word).rstrip()) <= width:
            lines[-1] += word
        else:
            lines.append(word)
    return [line.rstrip() for line in lines]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (has µ and ·): the system's, else matplotlib's bundled copy, else Pillow's default."""
    candidates = ["DejaVuSans.ttf"]
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        candidates.append(os.path.join(spec.submodule_search_locations[0], "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    for name in candidates:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)
