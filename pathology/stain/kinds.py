"""Stain kinds: which two stains a slide carries, its default reference, and how fitted
stain vectors are told apart.

H&E follows staintools: hematoxylin is the vector with the larger red optical density.
That rule is wrong for IHC, where DAB (brown) also absorbs less red than hematoxylin and
would be mapped onto eosin, turning DAB-positive cells pink. IHC therefore assigns the
two vectors to hematoxylin and DAB by angle to the standard H and DAB OD vectors of
colour deconvolution (Ruifrok & Johnston; skimage.color.rgb_from_hed), and is
normalized against an IHC reference, so H maps to H and DAB to DAB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Ruifrok & Johnston's OD vectors of hematoxylin and DAB (the rows 0 and 2 of
# skimage.color.rgb_from_hed), written out: importing skimage.color costs a third of a
# second of start-up (it pulls in scipy.linalg) for two constants.
HEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
DAB_OD = np.array([0.27, 0.57, 0.78]) / np.linalg.norm([0.27, 0.57, 0.78])


def order_he(vectors: np.ndarray) -> np.ndarray:
    """Rows (H, E): hematoxylin has the larger red OD (staintools' rule)."""
    return vectors if vectors[0, 0] >= vectors[1, 0] else vectors[::-1]


def order_h_dab(vectors: np.ndarray) -> np.ndarray:
    """Rows (H, DAB): the assignment with the smaller total angle to the standard vectors."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    angles = np.arccos(np.clip(unit @ np.stack([HEMATOXYLIN_OD, DAB_OD]).T, -1, 1))  # [vector, standard]
    ordered = vectors if angles[0, 0] + angles[1, 1] <= angles[0, 1] + angles[1, 0] else vectors[::-1]
    dab = ordered[1] / np.linalg.norm(ordered[1])
    if dab @ HEMATOXYLIN_OD > dab @ DAB_OD:
        log.warning("the fitted DAB stain vector is closer to hematoxylin than to DAB "
                    "(a DAB-negative slide?): H-DAB normalization may tint hematoxylin brown")
    return ordered


@dataclass(frozen=True)
class StainKind:
    """One kind of staining."""

    name: str
    stains: tuple[str, str]
    reference: str
    """File name of the default reference under ``pathology/stain/references``."""
    order: Callable[[np.ndarray], np.ndarray]
    """Raw stain vectors (2, 3) → the same rows in ``stains`` order."""


KINDS: dict[str, StainKind] = {
    "he": StainKind("he", ("hematoxylin", "eosin"), "he_cmu1.png", order_he),
    "ihc": StainKind("ihc", ("hematoxylin", "dab"), "ihc_skimage.png", order_h_dab),
}
