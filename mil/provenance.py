"""What a model was trained on, for its model card: ``config.json``'s ``provenance``.

``mil train`` records the cohort's name and size, the slides and patients behind each
task, whether the slides are synthetic (and how that is known), the level-0 resolutions of
the training slides, the date and the trainer's statement of intended use. The encoder and
its weights hash, the tiling and stain settings and the software version are in the same
file already (``bag_settings``, ``software``); the cross-validated metrics with their 95%
confidence intervals are in ``metrics.json``.

A cohort is synthetic when the trainer says so (``mil train --synthetic``) or when its
manifest sits beside the ``cohort.json`` that ``pathology synth-cohort`` (and the demo)
write. A model trained on synthetic slides is for trying the software, never for tissue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)

SYNTH_COHORT_SCHEMA = "pathology-synth-cohort/"   # the schema prefix of pathology.synth.cohort's cohort.json
SYNTHETIC_WARNING = "trained on synthetic slides: not for real tissue"


@dataclass(frozen=True, kw_only=True)
class TaskCounts:
    """The slides and patients with a known label for one task."""

    slides: int
    patients: int


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """The training cohort and the trainer's statement, for the model card."""

    cohort: str
    synthetic: bool
    synthetic_source: str = ""         # how ``synthetic`` is known: "--synthetic", "<path>/cohort.json", ...
    n_slides: int
    n_patients: int
    tasks: dict[str, TaskCounts] = field(default_factory=dict)
    mpp_level0: tuple[float, float] | None = None    # lowest and highest level-0 µm/px of the training slides
    intended_use: str = ""
    created: str = ""                  # ISO 8601, UTC

    @property
    def warning(self) -> str:
        """The warning every result of this model carries ("" for a cohort of real slides)."""
        return SYNTHETIC_WARNING if self.synthetic else ""


def synthetic_marker(manifest: Path) -> str:
    """The ``cohort.json`` of ``pathology synth-cohort`` beside ``manifest``, if there is one ("" else)."""
    marker = Path(manifest).parent / "cohort.json"
    if not marker.is_file():
        return ""
    try:
        schema = json.loads(marker.read_text(encoding="utf-8")).get("schema", "")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""
    return str(marker) if isinstance(schema, str) and schema.startswith(SYNTH_COHORT_SCHEMA) else ""


def mpp_range(paths: Sequence[Path]) -> tuple[float, float] | None:
    """The lowest and highest level-0 µm/px of ``pathology-bag/1`` bags (None for other files)."""
    values = []
    for path in paths:
        if Path(path).suffix != ".h5":
            continue
        with h5py.File(path, "r") as f:
            mpp = f.attrs.get("mpp_level0")
        if mpp is not None:
            values.append(float(np.mean(mpp)))
    return (min(values), max(values)) if values else None


def record_provenance(cohort, paths: Sequence[Path], *, name: str | None, synthetic: bool | None,
                      intended_use: str) -> Provenance:
    """The provenance of training on ``cohort`` (a :class:`mil.manifest.Cohort`) with bags ``paths``."""
    source = Path(cohort.source)
    marker = synthetic_marker(source)
    if synthetic is None:
        synthetic, how = bool(marker), marker
    else:
        how = "--synthetic" if synthetic else "--real"
        if marker and not synthetic:
            log.warning("%s marks the cohort synthetic, but it was declared real", marker)
    patients = cohort.patients()
    tasks = {}
    for task in cohort.tasks:
        y = cohort.labels(task.name)
        known = np.isfinite(y).all(axis=1) if y.ndim == 2 else np.isfinite(y)
        tasks[task.name] = TaskCounts(slides=int(known.sum()), patients=int(np.unique(patients[known]).size))
    return Provenance(cohort=name or (source.parent.name if source.name in ("manifest.csv", "") else source.stem),
                      synthetic=synthetic, synthetic_source=how, n_slides=len(cohort.table),
                      n_patients=int(np.unique(patients).size), tasks=tasks, mpp_level0=mpp_range(paths),
                      intended_use=intended_use, created=datetime.now(UTC).isoformat(timespec="seconds"))
