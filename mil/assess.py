"""Can a slide's calls under a trained run be trusted? The per-slide assessment that
``pathology run`` (results.csv, report) and ``mil predict`` (trust.csv) attach to each slide.

- the model was trained on synthetic slides (``config.json``'s provenance): every result says so;
- the slide is out of distribution: its mean patch embedding lies farther from the training
  cohort than the threshold set on the training folds (:mod:`mil.ood`);
- its stain is unlike the cohort's: the same test on its fitted stain vectors (runs trained on
  stain-normalized bags);
- its resolution: level 0 is coarser than the model's target µm/px by more than
  ``RESOLUTION_TOLERANCE``, so its patches were upsampled and lack the detail the model saw.

Any of the last three makes the slide's calls "not reliable". The assessment travels between
processes as plain data (:meth:`SlideTrust.to_data`) and becomes the columns :data:`COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .ood import EMBEDDING, STAIN, slide_distances

if TYPE_CHECKING:
    from .predict import Run

RESOLUTION_TOLERANCE = 1.25     # level 0 may be this much coarser than the target (pyramids round; 25% blurs little)
NOT_RELIABLE = "not reliable"
COLUMNS = ("reliable", "out_of_distribution", "ood_distance", "ood_threshold", "stain_distance", "stain_threshold",
           "mpp_level0", "warning")


@dataclass
class SlideTrust:
    """What is known about one slide's fit to the model."""

    warnings: list[str] = field(default_factory=list)
    reliable: bool = True
    out_of_distribution: bool | None = None       # None: the run has no references (trained before issue 19)
    ood_distance: float | None = None
    ood_threshold: float | None = None
    stain_distance: float | None = None
    stain_threshold: float | None = None
    mpp_level0: float | None = None

    def to_data(self) -> dict:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict | None) -> SlideTrust:
        return cls(**data) if data else cls()

    def columns(self) -> dict[str, str]:
        """The slide's cells of :data:`COLUMNS` in ``results.csv``."""
        def num(v: float | None) -> str:
            return "" if v is None else f"{v:.4g}"
        ood = self.out_of_distribution
        return {"reliable": "yes" if self.reliable else "no",
                "out_of_distribution": "" if ood is None else str(ood).lower(),
                "ood_distance": num(self.ood_distance), "ood_threshold": num(self.ood_threshold),
                "stain_distance": num(self.stain_distance), "stain_threshold": num(self.stain_threshold),
                "mpp_level0": num(self.mpp_level0), "warning": "; ".join(self.warnings)}


def assess_slide(run: Run, bag: Path, features: str | None = None) -> SlideTrust:
    """The warnings of one tiled and embedded slide under the run ``run`` (its embedding read
    from the feature set ``features``, default the run's)."""
    trust = SlideTrust()
    provenance = run.config.provenance
    if provenance is not None and provenance.warning:
        trust.warnings.append(provenance.warning)
    if run.config.ood is not None:
        for d in slide_distances(run.path, run.config.ood, bag, features or run.features):
            if d.vector == EMBEDDING:
                trust.ood_distance, trust.ood_threshold, trust.out_of_distribution = d.distance, d.threshold, d.flagged
                what = "out of distribution: unlike the training slides"
            elif d.vector == STAIN:
                trust.stain_distance, trust.stain_threshold = d.distance, d.threshold
                what = "stain unlike the training slides'"
            else:
                continue
            if d.flagged:
                trust.reliable = False
                trust.warnings.append(f"{what} (distance {d.distance:.3g} > threshold {d.threshold:.3g}): "
                                      f"{NOT_RELIABLE}")
    target = run.config.bag_settings.target_mpp if run.config.bag_settings is not None else None
    mpp = None
    if Path(bag).suffix == ".h5":  # a .pt feature file records no resolution
        with h5py.File(bag, "r") as f:
            mpp = f.attrs.get("mpp_level0")
    if mpp is not None:
        trust.mpp_level0 = float(np.mean(mpp))
        if target and trust.mpp_level0 > target * RESOLUTION_TOLERANCE:
            trust.reliable = False
            trust.warnings.append(f"resolution: scanned at {trust.mpp_level0:.3g} µm/px, coarser than the model's "
                                  f"{target:g} µm/px (patches upsampled): {NOT_RELIABLE}")
    return trust


def warning_counts(per_slide: Sequence[Sequence[str]]) -> list[str]:
    """Each distinct warning of ``per_slide`` (each slide's warnings) with the number of slides
    it concerns, for a console summary."""
    counts: dict[str, int] = {}
    for warnings in per_slide:
        for w in warnings:
            key = w.split(" (")[0] if "(" in w else w      # "out of distribution: ..." without the slide's numbers
            counts[key] = counts.get(key, 0) + 1
    n = len(per_slide)
    return [f"{key} ({k} of {n} slide{'s' if n != 1 else ''})" for key, k in counts.items()]
