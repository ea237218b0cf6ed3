"""Marker-pen ink: colour rules per ink, grown from solid ink into its faint edges.

Each ink has a strict *core* rule (solid ink, which no stain produces) and a looser
*edge* rule (the stroke's thin margins, ink over pale tissue). Edge pixels count only
near a core blob of real size, so eosin or haematoxylin that happens to satisfy an
edge rule elsewhere on the slide is left alone.

The hard case is red pen against eosin: eosin's hue stays at 300-335° (pink-magenta),
while red marker is crimson to orange-red (335-20°) and, where solid, saturated above
0.6. Red blood cells can match the core rule, but in specks far below the minimum area
of a stroke (a vessel packed with blood over 0.01 mm² can still be taken for ink).

Grey is what no stain gives: haematoxylin and eosin absorb some colours far more than
others, so dark stained tissue stays saturated (above ~0.25), while thin black ink, or
green ink crossing red ink or eosin (complementary colours), darkens all channels alike.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .color import Hsv
from .morphology import drop_small, grow


@dataclass(frozen=True)
class ColourRule:
    """A box in HSV space; a hue range with ``lo > hi`` wraps through 0° (red)."""

    hue: tuple[float, float] = (0.0, 360.0)
    saturation: tuple[float, float] = (0.0, 1.0)
    value: tuple[float, float] = (0.0, 1.0)

    def match(self, hsv: Hsv) -> np.ndarray:
        lo, hi = self.hue
        hue = (hsv.hue >= lo) & (hsv.hue <= hi) if lo <= hi else (hsv.hue >= lo) | (hsv.hue <= hi)
        return (hue & (hsv.saturation >= self.saturation[0]) & (hsv.saturation <= self.saturation[1])
                & (hsv.value >= self.value[0]) & (hsv.value <= self.value[1]))


@dataclass(frozen=True)
class Ink:
    """A marker ink: the colour of solid ink (``core``) and of its faint margins (``edge``)."""

    core: ColourRule
    edge: ColourRule
    neutral: bool = False
    """Colourless ink: where it reaches the image edge it is the slide's edge or the
    scanner's border, not a pen mark."""


INKS: dict[str, Ink] = {
    "red": Ink(core=ColourRule(hue=(338.0, 15.0), saturation=(0.6, 1.0), value=(0.3, 1.0)),
               edge=ColourRule(hue=(336.0, 25.0), saturation=(0.25, 1.0), value=(0.25, 1.0))),
    "green": Ink(core=ColourRule(hue=(75.0, 200.0), saturation=(0.3, 1.0)),
                 edge=ColourRule(hue=(70.0, 205.0), saturation=(0.12, 1.0))),
    "blue": Ink(core=ColourRule(hue=(200.0, 250.0), saturation=(0.5, 1.0)),
                edge=ColourRule(hue=(195.0, 255.0), saturation=(0.25, 1.0))),
    "black": Ink(core=ColourRule(value=(0.0, 0.33)),
                 edge=ColourRule(value=(0.0, 0.55)), neutral=True),
    "grey": Ink(core=ColourRule(saturation=(0.0, 0.15), value=(0.0, 0.6)),
                edge=ColourRule(saturation=(0.0, 0.25), value=(0.0, 0.7)), neutral=True),
}


def detect_pen(hsv: Hsv, mpp: float, inks: tuple[str, ...], min_area_um2: float,
               halo_um: float, pool: ThreadPoolExecutor | None = None) -> dict[str, np.ndarray]:
    """Boolean mask of each ink in ``inks`` (names in :data:`INKS`): core blobs of at
    least ``min_area_um2`` plus edge pixels within ``halo_um`` of them. Inks are
    independent: with a ``pool`` they are found in parallel."""
    min_px = min_area_um2 / mpp ** 2
    halo_px = halo_um / mpp

    def one(name: str) -> np.ndarray:
        core = drop_small(INKS[name].core.match(hsv), min_px)
        if core.any():  # edge pixels near solid ink, in pieces of real size (not stray cells)
            core = drop_small(core | (grow(core, halo_px) & INKS[name].edge.match(hsv)), min_px)
        return core

    masks = pool.map(one, inks) if pool is not None else map(one, inks)
    return dict(zip(inks, masks))

