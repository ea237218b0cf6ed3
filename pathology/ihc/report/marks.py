"""Marks drawn over a slide picture: the ROI's outline, the hotspot circle, a box.

Every picture of a result (QC picture, positivity and intensity maps) shows what was scored:
the ROI in green, the Ki-67 hotspot as a magenta circle, the crop shown in detail as a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ...roi import ROI
from ..hotspot import Hotspot

ROI_COLOUR = (0, 200, 60)
HOTSPOT_COLOUR = (230, 0, 200)
BOX_COLOUR = (0, 170, 255)


@dataclass(frozen=True)
class Marks:
    """What to draw, in level-0 pixels."""

    roi: ROI | None = None
    hotspot: Hotspot | None = None
    box: tuple[float, float, float, float] | None = None     # x, y, width, height

    def draw(self, picture: np.ndarray, dimensions: tuple[int, int]) -> np.ndarray:
        """``picture`` (the whole slide, RGB uint8) with the marks, scaled from level-0 ``dimensions``."""
        h, w = picture.shape[:2]
        sx, sy = dimensions[0] / w, dimensions[1] / h
        out = picture.copy()
        width = max(1, round(max(w, h) / 400))
        if self.roi is not None:
            inside = self.roi.mask(dimensions, (sx, sy))
            edge = inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)
            out[edge] = ROI_COLOUR
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        if self.box is not None:
            x, y, bw, bh = self.box
            draw.rectangle((x / sx, y / sy, (x + bw) / sx, (y + bh) / sy), outline=BOX_COLOUR, width=width)
        if self.hotspot is not None and not self.hotspot.whole:     # a whole-field hotspot is the picture itself
            c, r = self.hotspot, self.hotspot.radius_px
            draw.ellipse(((c.x - r) / sx, (c.y - r) / sy, (c.x + r) / sx, (c.y + r) / sy), outline=HOTSPOT_COLOUR,
                         width=width + 1)
        return np.asarray(image)

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        items = []
        if self.roi is not None:
            items.append(("ROI", ROI_COLOUR))
        if self.hotspot is not None and not self.hotspot.whole:
            items.append((f"hotspot {self.hotspot.area_mm2:g} mm²", HOTSPOT_COLOUR))
        if self.box is not None:
            items.append(("crop", BOX_COLOUR))
        return items
