"""Score a ``predictions.csv`` (from ``mil train`` or ``mil predict``) against a manifest's labels.

The manifest's labels replace any in the predictions (joined by ``slide_id``; by
``patient_id`` for patient-level predictions, whose ``slide_id`` is the patient), and the
metrics are those of training (:func:`mil.runfolder.evaluate_predictions`: per fold when the
predictions have folds, pooled with a patient-level bootstrap 95% CI), written with each
task's plots to an output folder (``metrics.json`` last, atomically). A task's kind is
inferred from the manifest's column as in training (``kinds`` sets it); a task whose
predictions carry class probabilities is multi-class, with their classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.errors import InputError

from . import metrics as M
from .labels import LabelSpec
from .manifest import SURVIVAL, load_manifest
from .runfolder import PROBABILITIES, evaluate_predictions, prediction_columns, write_json, write_plots

log = logging.getLogger(__name__)

REQUIRED = ("slide_id", "task", "score")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV with at least ``slide_id``, ``task``, ``score``; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such predictions file")
    frame = pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "task": str})
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})")
    if "fold" not in frame.columns:
        frame["fold"] = np.nan
    duplicated = frame[frame.duplicated(["slide_id", "task"])]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise InputError(f"{path}: {len(duplicated)} duplicate (slide_id, task) row(s) "
                         f"(first: {first['slide_id']}, {first['task']})")
    return frame


def task_columns(predictions: pd.DataFrame, targets: Sequence[str], survival: tuple[str, str] | None,
                 source: Path) -> tuple[list[str], tuple[str, str] | None]:
    """The targets and survival columns to evaluate: as given, else every task in the predictions
    (a binary task's name is its manifest column; survival needs its two columns named)."""
    present = list(dict.fromkeys(predictions["task"]))
    if not targets and survival is None:
        targets = [t for t in present if t != SURVIVAL]
        if SURVIVAL in present:
            raise InputError(f"{source}: the predictions hold a survival task; name its manifest columns "
                             f"with --survival TIME_COL,EVENT_COL")
    wanted = [*targets, *([SURVIVAL] if survival else [])]
    absent = [t for t in wanted if t not in present]
    if absent:
        raise InputError(f"{source}: no predictions for task(s) {', '.join(absent)} (has: {', '.join(present)})")
    return list(targets), survival


def _multiclass_specs(frame: pd.DataFrame, targets: Sequence[str]) -> dict[str, LabelSpec]:
    """target -> the multi-class spec of a task whose predictions carry class probabilities."""
    out = {}
    if PROBABILITIES not in frame:
        return out
    for name in targets:
        cells = frame.loc[frame["task"] == name, PROBABILITIES].dropna()
        cells = cells[cells.astype(str).str.strip() != ""]
        if len(cells):
            try:
                classes = tuple(json.loads(cells.iloc[0]))
            except (json.JSONDecodeError, TypeError):
                raise InputError(f"predictions of {name!r}: a probabilities cell is not JSON") from None
            out[name] = LabelSpec("multiclass", classes)
    return out


def evaluate_file(predictions: str | Path, manifest: str | Path, out_dir: str | Path, *,
                  targets: Sequence[str] = (), survival: tuple[str, str] | None = None,
                  clinical: str | Path | None = None, kinds: dict[str, str] | None = None,
                  n_boot: int = M.N_BOOTSTRAP, seed: int = 0, threshold: float = M.THRESHOLD) -> dict:
    """Metrics of ``predictions`` against ``manifest``'s labels; writes ``metrics.json`` and plots
    to ``out_dir`` and returns the metrics."""
    predictions, out_dir = Path(predictions), Path(out_dir)
    frame = read_predictions(predictions)
    targets, survival = task_columns(frame, targets, survival, predictions)
    fixed = _multiclass_specs(frame, targets)
    cohort = load_manifest(manifest, targets=targets, survival=survival, clinical=clinical, fixed=fixed,
                           kinds={k: v for k, v in (kinds or {}).items() if k not in fixed})
    by_patient = _patient_level(frame, cohort)
    if by_patient:
        cohort = cohort.by_patient()
    table = cohort.table.set_index("slide_id")
    parts, tasks = [], {}
    for task in cohort.tasks:
        p = frame[frame["task"] == task.name]
        unknown = ~p["slide_id"].isin(table.index)
        if unknown.any():
            log.warning("%s: %d case(s) predicted for %r are not in the manifest and are ignored (first: %s)",
                        predictions.name, int(unknown.sum()), task.name, p.loc[unknown, "slide_id"].iloc[0])
        p = p[~unknown]
        if p.empty:
            raise InputError(f"{predictions}: no slide predicted for {task.name!r} is in {Path(manifest).name}")
        rows = table.loc[p["slide_id"]]
        joined = pd.DataFrame({"slide_id": p["slide_id"].to_numpy(), "patient_id": rows["patient_id"].to_numpy(),
                               "fold": p["fold"].to_numpy(), "task": task.name, "score": p["score"].to_numpy(float)})
        if PROBABILITIES in p:
            joined[PROBABILITIES] = p[PROBABILITIES].to_numpy()
        if task.kind == SURVIVAL:
            joined["label"], joined["event"] = rows["survival_time"].to_numpy(), rows["survival_event"].to_numpy()
        else:
            joined["label"], joined["event"] = rows[task.name].to_numpy(), np.nan
        parts.append(joined[[c for c in prediction_columns(cohort.tasks) if c in joined]])
        tasks[task.name] = task
        n_missing = len(table) - len(p)
        if n_missing:
            log.warning("%s: %d manifest case(s) have no prediction for %r", predictions.name, n_missing, task.name)
    joined = pd.concat(parts, ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks_metrics = evaluate_predictions(joined, tasks, n_boot=n_boot, seed=seed, threshold=threshold)
    time_unit = f"the unit of manifest column {survival[0]!r}" if survival else ""
    write_plots(out_dir, joined, tasks, tasks_metrics, time_unit=time_unit)
    result = M.json_safe({
        "predictions": str(predictions.resolve()), "manifest": str(Path(manifest).resolve()),
        "level": cohort.level, "n_slides": int(joined["slide_id"].nunique()),
        "n_patients": int(joined["patient_id"].nunique()), "tasks": tasks_metrics,
        "bootstrap": {"n": n_boot, "seed": seed, "unit": "patient", "level": 0.95},
    })
    write_json(out_dir / "metrics.json", result)
    return result


def _patient_level(frame: pd.DataFrame, cohort) -> bool:
    """Whether the predictions are per patient: their ids are the manifest's patients, not its slides."""
    ids = set(frame["slide_id"].astype(str))
    slides, patients = set(cohort.table["slide_id"]), set(cohort.table["patient_id"])
    return not ids & slides and bool(ids & patients)
