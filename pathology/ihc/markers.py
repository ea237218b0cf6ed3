"""The biomarkers ``pathology ihc`` scores: where the stain sits, default thresholds, the call.

Intensity thresholds are decadic DAB optical density (see :mod:`.deconvolution`).

Nuclear markers class a nucleus by its own DAB: its mean DAB OD minus the DAB OD of the
tissue around it (:mod:`.nuclei`; Beer–Lambert optical densities add, so this removes the
brownish cast of cytoplasm and of unevenly lit or thick tissue that a raw mean carries).
Negative below ``weak`` (0.10), weak (1+) up to ``moderate`` (0.30), moderate (2+) up to
``strong`` (0.55), strong (3+) above; and a nucleus counts as stained only when at least
:data:`MIN_STAINED_SHARE` of its pixels exceed its surroundings by ``weak`` (a nucleus whose
outline caught the rim of a brown neighbour is not brown). How the cuts were set:

- ``weak`` 0.10 is "unequivocal brown" (the International Ki67 Working Group's rule for
  Ki-67, and the ASCO/CAP "any intensity" for ER/PgR): 0.10 OD of DAB absorbs 16 % of the
  blue light (the standard DAB vector's blue weight is 0.78), a plainly visible brown
  tint. On the two DeepLIIF Ki-67 fields (co-registered immunofluorescence truth) it lies
  above the 95th percentile of the truth-negative nuclei's own DAB (0.09 and 0.01) and
  below every truth-positive nucleus that is brown in the IHC at all but one per field
  (0.06; the rest 0.11-0.84).
- ``moderate`` and ``strong`` are QuPath's positive-cell-detection cuts on the raw mean
  (0.4 / 0.6, with 0.2 for 1+), less the 0.05-0.1 OD of DAB haze around nuclei that the
  raw mean includes (0.06-0.09 on the DeepLIIF fields): 0.30 / 0.55.

HER2 classes a cell by the DAB OD along its membrane (:mod:`.membrane`): ``weak`` is the
faintest membrane counted as stained (0.12), ``moderate`` starts "weak to moderate"
(0.22), ``strong`` is intense (0.45): complete intense membranes on ``ihc.png`` run at
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
        """``"0.1,0.3,0.55"`` → thresholds (one-line error on bad input)."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 3:
            raise InputError(f"--thresholds takes three DAB OD values weak,moderate,strong (e.g. 0.1,0.3,0.55), "
                             f"got {text!r}")
        return cls(*values)

    def classify(self, od: np.ndarray) -> np.ndarray:
        """Class 0-3 (int8) of each DAB OD value."""
        return np.searchsorted([self.weak, self.moderate, self.strong], np.asarray(od), side="right").astype(np.int8)

    def classify_nuclei(self, excess: np.ndarray, share: np.ndarray) -> np.ndarray:
        """Class 0-3 of each nucleus from its own DAB OD (``excess``) and the share of its
        pixels stained above ``weak`` (:data:`MIN_STAINED_SHARE` needed to count at all)."""
        classes = self.classify(excess)
        classes[np.asarray(share) < MIN_STAINED_SHARE] = 0
        return classes

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Marker:
    name: str
    title: str
    compartment: str                       # "nuclear" or "membrane"
    thresholds: IntensityThresholds
    call: Callable[[np.ndarray], dict]     # class counts (4,) → {"result", "value", "rule", ...}


NUCLEAR = IntensityThresholds(0.10, 0.30, 0.55)
MIN_STAINED_SHARE = 0.25
"""Least share of a nucleus's pixels above its surroundings by ``weak`` for it to count as stained."""
MEMBRANE = IntensityThresholds(0.12, 0.22, 0.45)

MARKERS: dict[str, Marker] = {
    "er": Marker("er", "Estrogen receptor (ER)", "nuclear", NUCLEAR, hormone_receptor_call),
    "pr": Marker("pr", "Progesterone receptor (PgR)", "nuclear", NUCLEAR, hormone_receptor_call),
    "ki67": Marker("ki67", "Ki-67", "nuclear", NUCLEAR, ki67_call),
    "her2": Marker("her2", "HER2", "membrane", MEMBRANE, her2_call),
}
