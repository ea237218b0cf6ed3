"""The IHC QC picture: a crop of the slide with every counted nucleus outlined in the
colour of its class, under a title bar with the slide's counts, call and a legend.

Outlines are drawn just outside each nucleus (so the stain underneath stays visible),
on the crop enlarged 2×; for HER2 each grown cell is outlined too, thinly, in the same
colour, since the membrane around it decided the class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ...heatmap.files import write_png
from ...qc import _font
from ..analysis import TileCells
from ..markers import Marker

CLASS_COLOURS = np.array([(30, 90, 255), (255, 230, 0), (255, 140, 0), (230, 0, 30)], np.uint8)
BAR_COLOUR = (32, 32, 36)
TEXT_COLOUR = (240, 240, 240)
ZOOM = 2


def render_qc_picture(rgb: np.ndarray | None, cells: TileCells | None, margin: int, marker: Marker,
                      counts: np.ndarray, slide_id: str, mpp: float) -> Image.Image:
    """The picture (see module doc); without a crop (no cell found) only the title bar."""
    names = ("negative", "1+ weak", "2+ moderate", "3+ strong") if marker.compartment == "nuclear" \
        else ("0", "1+", "2+", "3+")
    n = int(counts.sum())
    what = "cells" if marker.compartment == "membrane" else "nuclei"
    title = (f"{slide_id} · {marker.title} · {n} {what} on the slide: "
             + ", ".join(f"{name} {100 * c / max(n, 1):.1f}%" for name, c in zip(names, counts, strict=True)))
    if rgb is None or cells is None:
        body = np.full((200, 800, 3), 255, np.uint8)
        title += " · no cells found"
    else:
        body = _outlined(rgb[margin:rgb.shape[0] - margin, margin:rgb.shape[1] - margin],
                         cells.labels[margin:-margin, margin:-margin],
                         None if cells.cells is None else cells.cells[margin:-margin, margin:-margin], cells.classes)
        shown = int((np.unique(cells.labels[margin:-margin, margin:-margin]) > 0).sum())
        title += (f" · crop {body.shape[1] // ZOOM * mpp:.0f} µm wide at {mpp:g} µm/px ×{ZOOM}, "
                  f"{shown} {what} outlined")
    return _with_bar(body, title, list(zip(names, CLASS_COLOURS.tolist(), strict=True)))


def write_qc_picture(path: Path, rgb: np.ndarray | None, cells: TileCells | None, margin: int, marker: Marker,
                     counts: np.ndarray, slide_id: str, mpp: float) -> Path:
    return write_png(path, render_qc_picture(rgb, cells, margin, marker, counts, slide_id, mpp))


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


def _with_bar(body: np.ndarray, title: str, legend: list[tuple[str, list[int]]]) -> Image.Image:
    w = body.shape[1]
    font, small = _font(max(13, min(20, round(w / 60)))), _font(max(12, min(18, round(w / 70))))
    pad = font.size // 2
    lines = _wrap(title, font, w - 2 * pad)
    bar_h = pad + len(lines) * (font.size + pad // 2) + small.size + 2 * pad
    out = Image.new("RGB", (w, body.shape[0] + bar_h), BAR_COLOUR)
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
