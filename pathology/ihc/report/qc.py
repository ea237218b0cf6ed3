"""The IHC QC picture: what was scored and how, for a pathologist to check at a glance.

Under a title bar with the slide's counts, call (or why it is not evaluable) and a legend:

- left, the whole slide with the ROI outlined, the Ki-67 hotspot circled and the crop boxed
  (:mod:`.marks`);
- right, the crop: the working tile with the most cells of both kinds, enlarged 2×, every
  counted nucleus outlined in the colour of its class. Outlines are drawn just outside each
  nucleus (so the stain underneath stays visible); for HER2 each grown cell is outlined too,
  thinly, in the same colour, since the membrane around it decided the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ...heatmap.files import write_png
from ...qc import _font
from ..analysis import TileCells
from ..markers import Marker
from .marks import Marks

CLASS_COLOURS = np.array([(30, 90, 255), (255, 230, 0), (255, 140, 0), (230, 0, 30)], np.uint8)
BAR_COLOUR = (32, 32, 36)
TEXT_COLOUR = (240, 240, 240)
ZOOM = 2
GAP = 8
OVERVIEW_HEIGHT = 512      # without a crop


@dataclass(frozen=True)
class Crop:
    """A working tile with its counted cells (``margin`` px of context on each side)."""

    rgb: np.ndarray
    cells: TileCells
    margin: int
    extent: tuple[int, int]      # rows, columns of the tile's core that lie on the slide


def class_names(marker: Marker) -> tuple[str, ...]:
    return ("negative", "1+ weak", "2+ moderate", "3+ strong") if marker.compartment == "nuclear" \
        else ("0", "1+", "2+", "3+")


def render_qc_picture(crop: Crop | None, overview: np.ndarray, dimensions: tuple[int, int], marks: Marks,
                      marker: Marker, slide_id: str, summary: str, mpp: float) -> Image.Image:
    """The picture (see module doc); ``summary`` is the result in words."""
    what = "cells" if marker.compartment == "membrane" else "nuclei"
    title = f"{slide_id} · {marker.title} · {summary}"
    shown = overview
    if crop is not None:
        m, (eh, ew) = crop.margin, crop.extent
        core = (slice(m, m + eh), slice(m, m + ew))
        labels = crop.cells.labels[core]
        body = _outlined(crop.rgb[core], labels, None if crop.cells.cells is None else crop.cells.cells[core],
                         crop.cells.classes)
        n_shown = int((np.unique(labels) > 0).sum())
        title += (f" · crop {body.shape[1] // ZOOM * mpp:.0f} µm wide at {mpp:g} µm/px ×{ZOOM}, "
                  f"{n_shown} {what} outlined")
        height = body.shape[0]
    else:
        body, height = None, OVERVIEW_HEIGHT
    scale = height / overview.shape[0]
    if overview.shape[1] * scale > 2 * height:          # a long slide: fit its width instead
        scale = 2 * height / overview.shape[1]
    size = (max(1, round(overview.shape[1] * scale)), max(1, round(overview.shape[0] * scale)))
    shown = np.asarray(Image.fromarray(overview).resize(size, Image.Resampling.LANCZOS if scale < 1
                                                        else Image.Resampling.NEAREST))
    shown = marks.draw(shown, dimensions)
    width = shown.shape[1] + (GAP + body.shape[1] if body is not None else 0)
    canvas = np.full((max(height, shown.shape[0]), width, 3), 255, np.uint8)
    canvas[:shown.shape[0], :shown.shape[1]] = shown
    if body is not None:
        canvas[:body.shape[0], shown.shape[1] + GAP:] = body
    legend = list(zip(class_names(marker), [tuple(c) for c in CLASS_COLOURS.tolist()], strict=True)) + marks.legend()
    return _with_bar(canvas, title, legend)


def write_qc_picture(path: Path, crop: Crop | None, overview: np.ndarray, dimensions: tuple[int, int],
                     marks: Marks, marker: Marker, slide_id: str, summary: str, mpp: float) -> Path:
    return write_png(path, render_qc_picture(crop, overview, dimensions, marks, marker, slide_id, summary, mpp))


def _outlined(rgb: np.ndarray, labels: np.ndarray, cells: np.ndarray | None, classes: np.ndarray) -> np.ndarray:
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * ZOOM, rgb.shape[0] * ZOOM),
                                                 Image.Resampling.BICUBIC)).copy()
    colour_of = np.vstack([np.zeros((1, 3), np.uint8), CLASS_COLOURS[np.asarray(classes, np.int64)]])
    if cells is not None:
        up = np.kron(cells, np.ones((ZOOM, ZOOM), cells.dtype))
        edge = _edges(up) & (up > 0)
        big[edge] = (0.5 * big[edge] + 0.5 * colour_of[up[edge]]).astype(np.uint8)
    up = np.kron(labels, np.ones((ZOOM, ZOOM), labels.dtype))
    grown = ndimage.grey_dilation(up, size=(2 * ZOOM + 1, 2 * ZOOM + 1))
    ring = (up == 0) & (grown > 0)
    big[ring] = colour_of[grown[ring]]
    return big


def _edges(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    return edge


def _with_bar(body: np.ndarray, title: str, legend: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    w = max(body.shape[1], 640)
    font, small = _font(max(13, min(20, round(w / 60)))), _font(max(12, min(18, round(w / 70))))
    pad = font.size // 2
    lines = _wrap(title, font, w - 2 * pad)
    bar_h = pad + len(lines) * (font.size + pad // 2) + small.size + 2 * pad
    out = Image.new("RGB", (w, body.shape[0] + bar_h), BAR_COLOUR)
    out.paste(Image.new("RGB", (w, body.shape[0]), (255, 255, 255)), (0, bar_h))
    out.paste(Image.fromarray(body), (0, bar_h))
    draw = ImageDraw.Draw(out)
    y = pad
    for line in lines:
        draw.text((pad, y), line, font=font, fill=TEXT_COLOUR)
        y += font.size + pad // 2
    x = pad
    for name, colour in legend:
        draw.rectangle((x, y + 2, x + small.size - 2, y + small.size), fill=tuple(colour))
        x += small.size + pad // 2
        draw.text((x, y), name, font=small, fill=TEXT_COLOUR)
        x += round(small.getlength(name)) + 2 * pad
    return out


def _wrap(text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines
