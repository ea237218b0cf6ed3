"""The biomarkers ``pathology ihc`` scores: where the stain sits, default thresholds, the call.

Intensity thresholds are decadic DAB optical density (see :mod:`.deconvolution`).

Nuclear markers class a nucleus by its mean DAB OD: negative below ``weak`` (0.15), weak
(1+) up to ``moderate`` (0.35), moderate (2+) up to ``strong`` (0.6), strong (3+) above.
These are close to QuPath's positive-cell-detection defaults (0.2 / 0.4 / 0.6), with the
lowest cut a little lower because a small nucleus's mean is diluted by its blurred rim
(on the synthetic fields of :mod:`pathology.synth.ihc_cells`, whose class means sit in the
middle of each band, these cuts recover every class), and the negative nuclei of a real
counterstain stay below 0.1.

HER2 classes a cell by the DAB OD along its membrane (:mod:`.membrane`): ``weak`` is the
faintest membrane counted as stained (0.08), ``moderate`` starts "weak to moderate"
(0.2), ``strong`` is intense (0.45): complete intense membranes on ``ihc.png`` run at
0.5-1.0, and the synthetic 1+ / 2+ / 3+ membranes fall in the three bands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .scores import her2_call, hormone_receptor_call, ki67_call


@dataclass(frozen=True)
class IntensityThresholds:
    """DAB OD cuts between negative | weak (1+) | moderate (2+) | strong (3+)."""

    weak: float
    moderate: float
    strong: float

    def __post_init__(self) -> None:
        if not 0 < self.weak < self.moderate < self.strong:
            raise InputError(f"thresholds must satisfy 0 < weak < moderate < strong, got "
                             f"{self.weak}, {self.moderate}, {self.strong}")

    @classmethod
    def parse(cls, text: str) -> IntensityThresholds:
        """``"0.15,0.35,0.6"`` → thresholds (one-line error on bad input)."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 3:
            raise InputError(f"--thresholds takes three DAB OD values weak,moderate,strong (e.g. 0.15,0.35,0.6), "
                             f"got {text!r}")
        return cls(*values)

    def classify(self, od: np.ndarray) -> np.ndarray:
        """Class 0-3 (int8) of each DAB OD value."""
        return np.searchsorted([self.weak, self.moderate, self.strong], np.asarray(od), side="right").astype(np.int8)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Marker:
    name: str
    title: str
    compartment: str                       # "nuclear" or "membrane"
    thresholds: IntensityThresholds
    call: Callable[[np.ndarray], dict]     # class counts (4,) → {"result", "value", "rule", ...}


NUCLEAR = IntensityThresholds(0.15, 0.35, 0.6)
MEMBRANE = IntensityThresholds(0.12, 0.22, 0.45)

MARKERS: dict[str, Marker] = {
    "er": Marker("er", "Estrogen receptor (ER)", "nuclear", NUCLEAR, hormone_receptor_call),
    "pr": Marker("pr", "Progesterone receptor (PgR)", "nuclear", NUCLEAR, hormone_receptor_call),
    "ki67": Marker("ki67", "Ki-67", "nuclear", NUCLEAR, ki67_call),
    "her2": Marker("her2", "HER2", "membrane", MEMBRANE, her2_call),
}
