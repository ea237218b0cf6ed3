"""Cohort manifests: a CSV with one row per slide, validated into a :class:`Cohort`.

Columns are described in ``data_manifests/README.md``. Every problem is collected and
reported at once, each naming its file, row (the CSV line; the header is row 1) and
column, so a cohort is fixed in one pass before any training starts. STAMP's two-table
layout (slide table + clinical table) is read by :mod:`mil.stamp` into the same records.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.errors import InputError, UserError
from pathology.table import Loc, Table, TableError, read_table, where

from . import stamp
from .data import BAG_SUFFIXES, BagError, find_bag, read_features
from .records import Record

log = logging.getLogger(__name__)

POSITIVE = {"1", "1.0", "true", "positive", "pos", "yes"}
NEGATIVE = {"0", "0.0", "false", "negative", "neg", "no"}
UNKNOWN = {"", "na", "n/a", "nan", "none", "null", "unknown"}
EVENTS = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SURVIVAL = "survival"
# Columns of Cohort.table that a label column may not be named after.
RESERVED = {"slide_id", "patient_id", "bag_path", "fold", "split", "survival_time", "survival_event"}


@dataclass(frozen=True)
class Task:
    name: str                      # e.g. "er", or "survival"
    kind: str                      # "binary" | "survival"
    columns: tuple[str, ...]       # binary: (label_col,); survival: (time_col, event_col)


@dataclass
class Cohort:
    """A validated cohort: one table row per slide (the columns are listed in :func:`load_manifest`)."""

    table: pd.DataFrame
    tasks: list[Task]
    source: Path

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} (tasks: {', '.join(t.name for t in self.tasks) or 'none'})")

    def labels(self, task: str) -> np.ndarray:
        """Binary: float (n,) 1/0/NaN. Survival: float (n, 2) [time, event], NaN when unknown."""
        if self.task(task).kind == SURVIVAL:
            return self.table[["survival_time", "survival_event"]].to_numpy(np.float64)
        return self.table[task].to_numpy(np.float64)

    def patients(self) -> np.ndarray:
        """patient_id of each slide."""
        return self.table["patient_id"].to_numpy(str)


class ManifestError(UserError):
    """Everything wrong with a manifest; ``problems`` lists each with its row and column."""

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = Path(source)
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the manifest, nothing was started\n"
                         + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------- records -> cohort

def parse_label(value: str) -> float | None:
    """1.0 / 0.0 / NaN (unknown) for a binary label cell, None when unparseable."""
    v = value.strip().lower()
    if v in POSITIVE:
        return 1.0
    if v in NEGATIVE:
        return 0.0
    return math.nan if v in UNKNOWN else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _conflicts(records: list[Record], column: str, values: list, what: str, problems: list[str]) -> None:
    """Report patients whose known ``values`` (None/NaN = unknown) differ between their slides."""
    by_patient: dict[str, dict[object, list[Loc]]] = {}
    for rec, v in zip(records, values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        by_patient.setdefault(rec.patient_id, {}).setdefault(v, []).append(rec.loc(column))
    for patient, seen in by_patient.items():
        if len(seen) > 1:
            first = min(loc for locs in seen.values() for loc in locs)
            detail = "; ".join(f"{_fmt(v)} on {', '.join(where(loc) for loc in locs)}" for v, locs in seen.items())
            problems.append(f"{where(first, column)}: patient {patient!r} has conflicting {what}: {detail}")


def _binary(records: list[Record], column: str, problems: list[str]) -> list[float]:
    out = []
    for rec in records:
        raw = rec.values.get(column, "")
        value = parse_label(raw)
        if value is None:
            problems.append(f"{where(rec.loc(column), column)}: unparseable label {raw!r} "
                            f"(use 1/0, true/false, positive/negative, pos/neg, yes/no; empty = unknown)")
            value = math.nan
        out.append(value)
    _conflicts(records, column, out, "labels", problems)
    return out


def _survival(records: list[Record], time_col: str, event_col: str,
              problems: list[str]) -> tuple[list[float], list[float]]:
    times, events = [], []
    for rec in records:
        t_raw, e_raw = rec.values.get(time_col, ""), rec.values.get(event_col, "")
        t = e = math.nan
        if t_raw.lower() not in UNKNOWN:
            t = _number(t_raw)
            if t is None or not math.isfinite(t) or t < 0:
                problems.append(f"{where(rec.loc(time_col), time_col)}: survival time {t_raw!r} is not "
                                f"a non-negative number")
                t = math.nan
        if e_raw.lower() not in UNKNOWN:
            e = EVENTS.get(e_raw.lower())
            if e is None:
                problems.append(f"{where(rec.loc(event_col), event_col)}: event {e_raw!r} is not 1 (event) "
                                f"or 0 (censored)")
                e = math.nan
        if (t_raw.lower() in UNKNOWN) != (e_raw.lower() in UNKNOWN):
            given, empty = (time_col, event_col) if e_raw.lower() in UNKNOWN else (event_col, time_col)
            problems.append(f"{where(rec.loc(empty), empty)}: empty while {given!r} is given "
                            f"(give both, or leave both empty for unknown)")
        times.append(t)
        events.append(e)
    pairs = [None if math.isnan(t) or math.isnan(e) else (t, e) for t, e in zip(times, events)]
    _conflicts(records, time_col, pairs, f"survival ({time_col}, {event_col})", problems)
    return times, events


def _folds(records: list[Record], problems: list[str]) -> list:
    out = []
    for rec in records:
        raw = rec.values.get("fold", "")
        value = _number(raw) if raw.lower() not in UNKNOWN else None
        if raw.lower() not in UNKNOWN and (value is None or not value.is_integer() or value < 0):
            problems.append(f"{where(rec.loc('fold'), 'fold')}: fold {raw!r} is not a non-negative integer")
            value = None
        out.append(None if value is None else int(value))
    _conflicts(records, "fold", out, "folds (a patient must stay on one side of every split)", problems)
    return out


def _splits(records: list[Record], problems: list[str]) -> list:
    out = []
    for rec in records:
        raw = rec.values.get("split", "")
        value = SPLITS.get(raw.lower())
        if value is None and raw.lower() not in UNKNOWN:
            problems.append(f"{where(rec.loc('split'), 'split')}: split {raw!r} is not one of train, val, test")
        out.append(value)
    _conflicts(records, "split", out, "splits (a patient must stay on one side of every split)", problems)
    return out


def _bag_paths(records: list[Record], bags_dir: Path | None, features: str | None,
               problems: list[str]) -> list[str]:
    if bags_dir is None:
        return [""] * len(records)
    if not bags_dir.is_dir():
        problems.append(f"{bags_dir}: bags folder not found")
        return [""] * len(records)
    out, dims = [], {}
    for rec in records:
        path = find_bag(bags_dir, rec.slide_id)
        if path is None:
            names = " or ".join(f"{rec.slide_id}{s}" for s in BAG_SUFFIXES)
            problems.append(f"{where(rec.loc())}: no bag for slide {rec.slide_id!r} in {bags_dir} (looked for {names})")
            out.append("")
            continue
        try:  # every value is read once here, so NaN features are reported with the other problems
            dims[where(rec.loc())] = read_features(path, features).features.shape[1]
        except BagError as exc:
            problems.append(f"{where(rec.loc())}: {exc}")
        out.append(str(path.resolve()))
    _same_dims(dims, problems)
    return out


def _same_dims(dims: dict[str, int], problems: list[str]) -> None:
    """Report the bags whose feature dimension differs from most bags' (features of another encoder)."""
    if len(set(dims.values())) < 2:
        return
    common, n = Counter(dims.values()).most_common(1)[0]
    for at, d in dims.items():
        if d != common:
            problems.append(f"{at}: the bag has {d}-d features, {n} other bag(s) have {common}-d (made with another "
                            "encoder? choose one with --features, or re-embed)")


def build_cohort(records: list[Record], tasks: list[Task], source: Path, problems: list[str], *,
                 bags_dir: str | Path | None = None, features: str | None = None) -> Cohort:
    """Validate records into a Cohort, adding every problem found to ``problems``."""
    first: dict[str, Loc] = {}
    for rec in records:
        if rec.slide_id in first:
            problems.append(f"{where(rec.loc())}: duplicate slide_id {rec.slide_id!r} "
                            f"(first on {where(first[rec.slide_id])})")
        else:
            first[rec.slide_id] = rec.loc()
        if "/" in rec.slide_id or "\\" in rec.slide_id:
            problems.append(f"{where(rec.loc())}: slide_id {rec.slide_id!r} contains a path separator")
    columns: dict[str, object] = {
        "slide_id": [r.slide_id for r in records],
        "patient_id": [r.patient_id for r in records],
        "bag_path": _bag_paths(records, Path(bags_dir) if bags_dir is not None else None, features, problems),
        "fold": pd.array(_folds(records, problems), dtype="Int64"),
        "split": pd.array(_splits(records, problems), dtype="string"),
    }
    for task in tasks:
        if task.kind == SURVIVAL:
            times, events = _survival(records, *task.columns, problems)
            columns["survival_time"], columns["survival_event"] = np.array(times), np.array(events)
        else:
            columns[task.name] = np.array(_binary(records, task.columns[0], problems))
    table = pd.DataFrame(columns)
    table["slide_id"] = table["slide_id"].astype(str)
    table["patient_id"] = table["patient_id"].astype(str)
    return Cohort(table, tasks, source)


def make_tasks(targets: Sequence[str], survival: tuple[str, str] | None) -> list[Task]:
    """Tasks for the chosen label columns; a name clash is an argument error (ValueError)."""
    targets = list(targets)
    bad = [t for t in targets if t in RESERVED or (survival is not None and t == SURVIVAL)]
    if bad:
        raise InputError(f"label column(s) {', '.join(map(repr, bad))} clash with the cohort's own columns "
                         f"({', '.join(sorted(RESERVED | {SURVIVAL}))}); rename them in the manifest")
    if len(set(targets)) != len(targets):
        raise InputError(f"a target is named twice: {', '.join(targets)}")
    tasks = [Task(t, "binary", (t,)) for t in targets]
    if survival is not None:
        if len(survival) != 2 or survival[0] == survival[1]:
            raise InputError(f"survival needs two different columns (time, event), got {survival!r}")
        tasks.append(Task(SURVIVAL, SURVIVAL, (survival[0], survival[1])))
    return tasks


def manifest_records(table: Table, needed: Sequence[str], problems: list[str]) -> list[Record]:
    """Records of a one-table manifest (``slide_id`` required, ``patient_id`` optional)."""
    table.require(["slide_id", *needed], problems)
    if "slide_id" not in table.columns:
        return []
    records, defaulted = [], 0
    for i, row in enumerate(table.rows):
        loc = table.loc(i)
        if not row["slide_id"]:
            problems.append(f"{where(loc, 'slide_id')}: empty slide_id")
            continue
        patient = row.get("patient_id", "")
        if not patient:
            defaulted += 1
            patient = row["slide_id"]
        records.append(Record(row["slide_id"], patient, row, {None: loc}))
    if "patient_id" not in table.columns:
        log.warning("%s: no patient_id column; each slide is taken as its own patient, so splits cannot "
                    "keep a patient's slides together", table.path.name)
    elif defaulted:
        log.warning("%s: %d row(s) with an empty patient_id; their slide_id is used instead",
                    table.path.name, defaulted)
    return records


def load_manifest(path: str | Path, *, targets: Sequence[str] = (), survival: tuple[str, str] | None = None,
                  bags_dir: str | Path | None = None, features: str | None = None,
                  clinical: str | Path | None = None) -> Cohort:
    """Read and validate a cohort manifest; raise :class:`ManifestError` listing every problem.

    ``Cohort.table`` columns: ``slide_id``, ``patient_id``, ``bag_path`` (absolute; "" without
    ``bags_dir``), ``fold`` (Int64), ``split`` (string: train/val/test; valid/validation read as val),
    a float 1/0/NaN column per binary target, and ``survival_time``/``survival_event`` for ``survival=(time, event)``.
    With ``bags_dir`` every slide's bag must exist (and hold ``features``, or exactly one
    feature set). With ``clinical``, ``path`` is STAMP's slide table (see :mod:`mil.stamp`).
    """
    path = Path(path)
    tasks = make_tasks(targets, survival)
    needed = [c for t in tasks for c in t.columns]
    problems: list[str] = []
    try:
        if clinical is None:
            records = manifest_records(read_table(path, problems), needed, problems)
        else:
            records = stamp.stamp_records(path, Path(clinical), needed, problems)
    except TableError as exc:
        raise ManifestError(path, [str(exc)]) from None
    cohort = build_cohort(records, tasks, path, problems, bags_dir=bags_dir, features=features)
    if problems:
        raise ManifestError(path, list(dict.fromkeys(problems)))
    if not records:
        raise ManifestError(path, [f"{path.name}: no slides"])
    _log_summary(cohort)
    return cohort


def _log_summary(cohort: Cohort) -> None:
    t = cohort.table
    log.info("%s: %d slides of %d patients", cohort.source.name, len(t), t["patient_id"].nunique())
    for task in cohort.tasks:
        y = cohort.labels(task.name)
        if task.kind == SURVIVAL:
            known = ~np.isnan(y).any(axis=1)
            log.info("  %s: %d events, %d censored, %d unknown", task.name, int((y[known, 1] == 1).sum()),
                     int((y[known, 1] == 0).sum()), int((~known).sum()))
        else:
            log.info("  %s: %d positive, %d negative, %d unknown", task.name, int((y == 1).sum()),
                     int((y == 0).sum()), int(np.isnan(y).sum()))
