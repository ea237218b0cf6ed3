"""Tissue-detection parameters, in physical units so they hold at any resolution."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .pen import INKS


@dataclass(frozen=True)
class TissueParams:
    """Every knob of :func:`pathology.tissue.detect_tissue` (stored in each bag as JSON).

    Lengths are in µm and areas in µm², converted to pixels with the µm/px of the
    image, so the same parameters give the same mask on a thumbnail or a tile.
    """

    mask_mpp: float = 8.0
    """Resolution (µm/px) at which the tiler computes the mask: fine enough for 256-px
    patches at 0.5 µm/px (16 mask px each), coarse enough to be fast on any slide."""

    blur_um: float = 16.0
    """Gaussian σ applied before looking at colours, so a pixel reports the tissue's
    colour rather than one nucleus, a JPEG artefact or a speck of dust."""

    min_saturation: float = 0.05
    """Floor on the Otsu saturation threshold. Clean glass stays below ~0.02 once
    white-balanced; without the floor a blank slide's noise would be split in two."""

    max_saturation: float = 0.10
    """Ceiling on the Otsu threshold. On a strongly stained slide Otsu lands between
    pale and dark tissue; the ceiling keeps fat and loose stroma (0.15-0.3) in."""

    black_value: float = 0.25
    """Brightness (0-1, brightest channel) at or below which a pixel is never tissue.
    Dark regions reaching the image edge are background (slide edges, scanner borders)."""

    closing_um: float = 32.0
    """Radius of the morphological closing that bridges gaps inside tissue (pale
    stroma between stained fibres, small tears)."""

    max_hole_um2: float = 250_000.0
    """Holes in tissue smaller than this (0.25 mm²: fat, lumens, vessels) are filled;
    larger holes are real gaps and stay out of the mask."""

    min_object_um2: float = 20_000.0
    """Tissue pieces smaller than this (about one 256-px patch at 0.5 µm/px, 0.02 mm²)
    are dropped: dust, debris, floating cells."""

    pen_inks: tuple[str, ...] = ("red", "green", "blue", "black", "grey")
    """Marker inks to exclude (names in :data:`pathology.tissue.pen.INKS`); "grey" is thin
    black ink and inks crossing each other or eosin. Drop "blue" for IHC slides whose
    haematoxylin counterstain is strongly blue."""

    pen_blur_um: float = 4.0
    """Gaussian σ applied before matching ink colours: lighter than ``blur_um`` so a thin
    stroke over glass or fat keeps its full colour."""

    pen_min_area_um2: float = 10_000.0
    """Solid-ink blobs smaller than this are not pen (red blood cells, dark nuclei);
    a marker stroke is 0.3-2 mm wide."""

    pen_halo_um: float = 200.0
    """Faint ink (a stroke's thin edge, ink over pale tissue) counts as pen within this
    distance of solid ink."""

    def __post_init__(self) -> None:
        # params come back from JSON (a bag's ``tiling`` attribute) with lists for tuples
        object.__setattr__(self, "pen_inks", tuple(self.pen_inks))
        unknown = sorted(set(self.pen_inks) - set(INKS))
        if unknown:
            raise InputError(f"unknown pen ink(s) {unknown}; known: {sorted(INKS)}")
        if not (0 <= self.min_saturation <= self.max_saturation <= 1):
            raise InputError(f"need 0 <= min_saturation <= max_saturation <= 1, "
                             f"got {self.min_saturation}, {self.max_saturation}")
