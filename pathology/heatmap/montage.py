"""The top-k and bottom-k patches of a task, side by side with their scores and level-0
positions: what the model looked at most and least.

Patches come from the bag's ``/patches`` (what the encoder saw), or are re-read from the
slide's pyramid at the bag's read level and stain-normalized as the tiler did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..bag import open_bag
from ..bag import read_patches as read_stored
from ..qc import _font
from ..slide import Slide
from ..stain import restore_normalizer
from .overlay import BAR_COLOUR, TEXT_COLOUR, fit_text
from .sources import BagView

TILE = 192           # displayed patch side, px
COLUMNS = 8          # patches per row before wrapping
HIGH_COLOUR = (230, 70, 50)
LOW_COLOUR = (70, 130, 230)


def read_patches(bag: BagView, rows: np.ndarray,
                 open_slide: Callable[[str], AbstractContextManager[Slide]]) -> np.ndarray:
    """RGB patches (k, S, S, 3) of ``rows``, in the order given."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return np.zeros((0, TILE, TILE, 3), np.uint8)
    if bag.has_patches:
        with open_bag(bag.path) as f:
            return read_stored(f, rows, bag.path)
    size = int(bag.attrs["patch_size"])
    level = int(bag.attrs["read_level"])
    with open_slide("the montage (the bag stores no patches)") as slide:
        dx, dy = slide.level_downsample_xy(level)
        w, h = max(1, round(bag.patch_size0[0] / dx)), max(1, round(bag.patch_size0[1] / dy))
        batch = np.stack([fit_patch(slide.read_region((int(x), int(y)), level, (w, h)), size)
                          for x, y in bag.coords[rows]])
    return restore_normalizer(bag.attrs["stain"]).transform(batch)


PAD = 8
TITLE_PX, CAPTION_PX = 16, 12                 # font sizes
CAPTION_H = 2 * (CAPTION_PX + 2) + PAD        # two caption lines under each tile


@dataclass(frozen=True)
class Layout:
    """Where everything goes in a montage: its size, each section's heading row and the
    top-left corner of each of its tiles."""

    width: int
    height: int
    headings: list[int]
    tiles: list[list[tuple[int, int]]]


def layout(counts: list[int]) -> Layout:
    """The montage layout for sections of ``counts`` patches (``COLUMNS`` to a row)."""
    width = max(max((min(n, COLUMNS) for n in counts), default=1) * (TILE + PAD) + PAD, 480)
    y = 2 * PAD + TITLE_PX
    headings, tiles = [], []
    for n in counts:
        headings.append(y)
        y += TITLE_PX + PAD
        tiles.append([(PAD + (i % COLUMNS) * (TILE + PAD), y + (i // COLUMNS) * (TILE + CAPTION_H))
                      for i in range(n)])
        y += math.ceil(n / COLUMNS) * (TILE + CAPTION_H) + PAD
    return Layout(width, y, headings, tiles)


def render_montage(sections: list[tuple[str, np.ndarray, list[str]]], title: str) -> Image.Image:
    """One block per section (heading, patches (k, S, S, 3), one caption per patch), under
    ``title``; the first section is framed in red (high), the second in blue (low)."""
    font, small = _font(TITLE_PX), _font(CAPTION_PX)
    plan = layout([len(p) for _, p, _ in sections])
    out = Image.new("RGB", (plan.width, plan.height), BAR_COLOUR)
    draw = ImageDraw.Draw(out)
    draw.text((PAD, PAD), fit_text(title, font, plan.width - 2 * PAD), font=font, fill=TEXT_COLOUR)
    for (heading, patches, captions), y, corners, colour in zip(sections, plan.headings, plan.tiles,
                                                                (HIGH_COLOUR, LOW_COLOUR)):
        draw.rectangle((PAD, y + 3, PAD + TITLE_PX - 6, y + TITLE_PX - 3), fill=colour)
        draw.text((PAD + TITLE_PX, y), heading, font=font, fill=TEXT_COLOUR)
        for patch, caption, (x0, y0) in zip(patches, captions, corners, strict=True):
            out.paste(Image.fromarray(fit_patch(patch)), (x0, y0))
            draw.rectangle((x0 - 1, y0 - 1, x0 + TILE, y0 + TILE), outline=colour)
            for j, line in enumerate(caption.split("\n")[:2]):
                draw.text((x0, y0 + TILE + 3 + j * (CAPTION_PX + 2)), fit_text(line, small, TILE), font=small,
                          fill=TEXT_COLOUR)
    return out


def fit_patch(rgb: np.ndarray, side: int = TILE) -> np.ndarray:
    """A patch resized to ``side`` × ``side`` for display (Lanczos)."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if img.size == (side, side):
        return np.asarray(img)
    return np.asarray(img.resize((side, side), Image.Resampling.LANCZOS))
