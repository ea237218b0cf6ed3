"""What ``mil train`` records beside the models so their calls can be judged: provenance
(:mod:`.provenance`), out-of-distribution references (:mod:`.ood`) and calibration
(:mod:`.calibration`), as ``config.json`` fields and ``metrics.json`` entries, and the
reliability diagrams."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import CalibrationRecord, calibration_summary
from .calibration_plot import plot_reliability
from .ood import fit_ood
from .provenance import record_provenance
from .runconfig import TrainConfig
from .splits import Fold

log = logging.getLogger(__name__)


def trust_records(cohort, config: TrainConfig, paths: Sequence[Path], embeddings: np.ndarray, folds: Sequence[Fold],
                  records: Sequence[dict], predictions: pd.DataFrame, out_dir: Path) -> tuple[dict, dict]:
    """(``config.json`` fields, ``metrics.json`` entries) of a finished cross-validation; writes
    ``ood.safetensors`` and ``reliability_<task>.png`` per binary task into ``out_dir``.
    ``embeddings``: each bag's mean patch embedding (n, D), in ``paths``' order."""
    kinds = {t.name: t.kind for t in cohort.tasks}
    provenance = record_provenance(cohort, paths, name=config.cohort_name, synthetic=config.synthetic,
                                   intended_use=config.intended_use)
    if provenance.synthetic:
        log.warning("the cohort is synthetic (%s): the model's results will say so", provenance.synthetic_source)
    ood = fit_ood(embeddings, paths, [f.test for f in folds], out_dir, alpha=config.ood_alpha)
    temperatures: dict[str, dict[int, float]] = {}
    for record in records:
        for task, t in record.get("temperature", {}).items():
            temperatures.setdefault(task, {})[int(record["fold"])] = float(t)
    calibration = calibration_summary(predictions, kinds, temperatures, config.calibration)
    for task, entry in calibration["tasks"].items():
        plot_reliability(out_dir / f"reliability_{task}.png", task, entry)
    record = None if config.calibration == "none" else CalibrationRecord(
        method=config.calibration,
        temperatures={f"{task}/fold_{k}": t for task, per_fold in temperatures.items() for k, t in per_fold.items()})
    thresholds = {name: {k: getattr(t, k) for k in ("threshold", "alpha", "n", "center", "spread", "false_flag_rate")}
                  for name in ("embedding", "stain") if (t := getattr(ood, name)) is not None}
    metrics = {"calibration": calibration, "ood": {"method": ood.method, **thresholds}}
    return {"provenance": provenance, "ood": ood, "calibration": record}, metrics


def trust_lines(metrics: dict) -> list[str]:
    """``mil train``'s console lines on calibration and out-of-distribution thresholds (from ``metrics.json``)."""
    lines = []
    for task, c in (metrics.get("calibration") or {}).get("tasks", {}).items():
        before = c.get("ece_before_scaling")
        lines.append(f"calibration {task}: ECE {c['ece']:.3f}" + (f" ({before:.3f} before temperature scaling)"
                                                                   if before is not None else ""))
    for name, t in (metrics.get("ood") or {}).items():
        if isinstance(t, dict):
            lines.append(f"out-of-distribution ({name}): threshold {t['threshold']:.3g}; "
                         f"{t['false_flag_rate']:.0%} of {t['n']} held-out training slides above it "
                         f"({t['alpha']:.0%} expected)")
    return lines
