"""Cohort manifests: a CSV with one row per slide, validated into a :class:`Cohort`.

Columns are described in ``data_manifests/README.md``. Every problem is collected and
reported at once, each naming its file, row (the CSV line; the header is row 1) and
column, so a cohort is fixed in one pass before any training starts. STAMP's two-table
layout (slide table + clinical table) is read by :mod:`mil.stamp` into the same records.

A target column's kind (binary, multiclass, regression) is inferred from its cells or given
(:mod:`mil.labels`); clinical covariates are numbers or categories (:class:`Covariate`).
:meth:`Cohort.by_patient` pools a patient's slides into one row for patient-level models.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pathology.errors import InputError, UserError
from pathology.table import Loc, Table, TableError, read_table, where

from . import labels as L
from . import stamp
from .data import BAG_SUFFIXES, BagError, find_bag, read_features
from .records import Record

log = logging.getLogger(__name__)

EVENTS = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SURVIVAL = "survival"
AUTO = "auto"                      # a target whose kind is inferred from its cells
LEVELS = ("slide", "patient")
COVARIATE_PREFIX = "covariate:"    # Cohort.table column of a covariate
# Columns of Cohort.table that a label column may not be named after.
RESERVED = {"slide_id", "patient_id", "bag_path", "fold", "split", "survival_time", "survival_event", "slides"}
UNKNOWN = L.UNKNOWN


@dataclass(frozen=True)
class Task:
    name: str                      # e.g. "er", or "survival"
    kind: str                      # "binary" | "multiclass" | "regression" | "survival" (AUTO before inference)
    columns: tuple[str, ...]       # (label_col,); survival: (time_col, event_col)
    classes: tuple[str, ...] = ()  # multiclass: the classes in order; binary: () for yes/no values, else (neg, pos)

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.kind == "multiclass" else 2 if self.kind == "binary" else 0


@dataclass(frozen=True)
class Covariate:
    """A clinical covariate: a manifest column of numbers or of categories."""

    name: str
    kind: str                      # "numeric" | "categorical"

    @property
    def column(self) -> str:
        return COVARIATE_PREFIX + self.name


@dataclass
class Cohort:
    """A validated cohort: one table row per slide (the columns are listed in :func:`load_manifest`),
    or per patient after :meth:`by_patient`."""

    table: pd.DataFrame
    tasks: list[Task]
    source: Path
    covariates: list[Covariate] = field(default_factory=list)
    level: str = "slide"

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} (tasks: {', '.join(t.name for t in self.tasks) or 'none'})")

    def labels(self, task: str) -> np.ndarray:
        """Binary: float (n,) 1/0/NaN; multiclass: the class index or NaN; regression: the value
        or NaN. Survival: float (n, 2) [time, event], NaN when unknown."""
        if self.task(task).kind == SURVIVAL:
            return self.table[["survival_time", "survival_event"]].to_numpy(np.float64)
        return self.table[task].to_numpy(np.float64)

    def patients(self) -> np.ndarray:
        """patient_id of each slide."""
        return self.table["patient_id"].to_numpy(str)

    def covariate_values(self, covariate: Covariate) -> np.ndarray:
        """Numeric: float (n,), NaN when unknown; categorical: object (n,) of str, "" when unknown."""
        values = self.table[covariate.column]
        return values.to_numpy(np.float64) if covariate.kind == "numeric" else values.to_numpy(object)

    def by_patient(self) -> Cohort:
        """The cohort with one row per patient: ``slide_id`` is the patient's id, ``bag_path`` a
        tuple of the patient's bags (pooled into one bag), ``slides`` the slide ids, and each label,
        covariate, fold and split the first known one among the patient's slides (slides of one
        patient never conflict: the manifest reader checks it)."""
        if self.level == "patient":
            return self
        t = self.table
        rows = []
        for patient, group in t.groupby("patient_id", sort=False):
            row = {"slide_id": str(patient), "patient_id": str(patient),
                   "bag_path": tuple(group["bag_path"]), "slides": tuple(group["slide_id"])}
            for column in t.columns:
                if column not in row:
                    row[column] = _first_known(group[column])
            rows.append(row)
        table = pd.DataFrame(rows, columns=[*t.columns, "slides"])
        table["fold"] = pd.array(table["fold"], dtype="Int64")
        table["split"] = pd.array(table["split"], dtype="string")
        return Cohort(table, list(self.tasks), self.source, list(self.covariates), "patient")


def _first_known(values: pd.Series):
    for v in values:
        if not (v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v == ""):
            return v
    return values.iloc[0]


class ManifestError(UserError):
    """Everything wrong with a manifest; ``problems`` lists each with its row and column."""

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = Path(source)
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the manifest, nothing was started\n"
                         + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------- records -> cohort

def parse_label(value: str) -> float | None:
    """1.0 / 0.0 / NaN (unknown) for a yes/no binary label cell, None when unparseable."""
    return L.parse(L.LabelSpec("binary"), value)


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


def label_spec(records: list[Record], task: Task, fixed: L.LabelSpec | None,
               problems: list[str]) -> L.LabelSpec | None:
    """The kind and classes of a target column: ``fixed`` (a trained run's), the kind given, or
    inferred from its cells; a column that cannot hold a label is one problem (None)."""
    if fixed is not None:
        return fixed
    column = task.columns[0]
    cells = [rec.values.get(column, "") for rec in records]
    spec = L.infer(cells) if task.kind == AUTO else L.explicit(task.kind, cells)
    if isinstance(spec, str):
        first = next((rec for rec in records if not L.is_unknown(rec.values.get(column, ""))), records[0])
        problems.append(f"{where(first.loc(column), column)}: {spec}")
        return None
    return spec


def _labels(records: list[Record], column: str, spec: L.LabelSpec, problems: list[str]) -> list[float]:
    out = []
    for rec in records:
        raw = rec.values.get(column, "")
        value = L.parse(spec, raw)
        if value is None:
            what = "label" if spec.kind != "regression" else "value"
            problems.append(f"{where(rec.loc(column), column)}: unparseable {what} {raw!r} ({L.expected(spec)})")
            value = math.nan
        out.append(value)
    _conflicts(records, column, out, "labels", problems)
    return out


def _covariate(records: list[Record], name: str, problems: list[str]) -> tuple[Covariate, list]:
    """A covariate column: numbers when every known cell is one, else categories (as written,
    compared without case); unknown cells are NaN / ""."""
    cells = [rec.values.get(name, "") for rec in records]
    known = [c.strip() for c in cells if not L.is_unknown(c)]
    if all(L.number(c) is not None for c in known):
        cov = Covariate(name, "numeric")
        values = [math.nan if L.is_unknown(c) else float(c) for c in cells]
    else:
        cov = Covariate(name, "categorical")
        spelling = L.distinct_values(cells)
        values = ["" if L.is_unknown(c) else spelling[L.class_key(c)] for c in cells]
    _conflicts(records, name, [v if v != "" else None for v in values], f"values of covariate {name!r}", problems)
    return cov, values


def _survival(records: list[Record], time_col: str, event_col: str,
              problems: list[str]) -> tuple[list[float], list[float]]:
    times, events = [], []
    for rec in records:
        t_raw, e_raw = rec.values.get(time_col, ""), rec.values.get(event_col, "")
        t = e = math.nan
        if t_raw.lower() not in UNKNOWN:
            t = L.number(t_raw)
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
        value = L.number(raw) if raw.lower() not in UNKNOWN else None
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
                 bags_dir: str | Path | None = None, features: str | None = None,
                 covariates: Sequence[str] = (), fixed: Mapping[str, L.LabelSpec] | None = None) -> Cohort:
    """Validate records into a Cohort, adding every problem found to ``problems``. A target's
    kind is resolved here (``fixed``: task -> the spec a trained run was trained with)."""
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
    resolved = []
    for task in tasks:
        if task.kind == SURVIVAL:
            times, events = _survival(records, *task.columns, problems)
            columns["survival_time"], columns["survival_event"] = np.array(times), np.array(events)
            resolved.append(task)
            continue
        spec = label_spec(records, task, (fixed or {}).get(task.name), problems) if records else None
        values = _labels(records, task.columns[0], spec, problems) if spec else [math.nan] * len(records)
        columns[task.name] = np.array(values, dtype=np.float64)
        spec = spec or L.LabelSpec("binary" if task.kind == AUTO else task.kind)
        resolved.append(replace(task, kind=spec.kind, classes=spec.classes))
    found = []
    for name in covariates:
        cov, values = _covariate(records, name, problems)
        columns[cov.column] = np.array(values, dtype=np.float64 if cov.kind == "numeric" else object)
        found.append(cov)
    table = pd.DataFrame(columns)
    table["slide_id"] = table["slide_id"].astype(str)
    table["patient_id"] = table["patient_id"].astype(str)
    return Cohort(table, resolved, source, found)


def make_tasks(targets: Sequence[str], survival: tuple[str, str] | None,
               kinds: Mapping[str, str] | None = None) -> list[Task]:
    """Tasks for the chosen label columns, each of the kind given in ``kinds`` or inferred later
    (:data:`AUTO`); a name clash or a bad kind is an argument error (InputError)."""
    targets, kinds = list(targets), dict(kinds or {})
    bad = [t for t in targets if t in RESERVED or (survival is not None and t == SURVIVAL)]
    if bad:
        raise InputError(f"label column(s) {', '.join(map(repr, bad))} clash with the cohort's own columns "
                         f"({', '.join(sorted(RESERVED | {SURVIVAL}))}); rename them in the manifest")
    if len(set(targets)) != len(targets):
        raise InputError(f"a target is named twice: {', '.join(targets)}")
    for name, kind in kinds.items():
        if kind not in L.KIND_NAMES:
            raise InputError(f"--kind {name}={kind}: the kind is one of {', '.join(L.KIND_NAMES)}")
        if name == SURVIVAL and survival is not None:
            if kind != SURVIVAL:
                raise InputError(f"--kind {name}={kind}: the survival task (--survival) is of kind survival")
        elif name not in targets:
            raise InputError(f"--kind {name}={kind}: {name!r} is not a target "
                             f"(targets: {', '.join(targets) or 'none'})")
        elif kind == SURVIVAL:
            raise InputError(f"--kind {name}=survival: a survival task takes two columns; give them with "
                             "--survival TIME_COL,EVENT_COL")
    tasks = [Task(t, kinds.get(t, AUTO), (t,)) for t in targets]
    if survival is not None:
        if len(survival) != 2 or survival[0] == survival[1]:
            raise InputError(f"survival needs two different columns (time, event), got {survival!r}")
        tasks.append(Task(SURVIVAL, SURVIVAL, (survival[0], survival[1])))
    return tasks


def check_covariates(covariates: Sequence[str], tasks: Sequence[Task]) -> list[str]:
    """The covariate column names, checked: none named twice, none also a task's column."""
    covariates = list(covariates)
    if len(set(covariates)) != len(covariates):
        raise InputError(f"a covariate is named twice: {', '.join(covariates)}")
    used = {c for t in tasks for c in t.columns}
    clash = [c for c in covariates if c in used or c in RESERVED]
    if clash:
        raise InputError(f"covariate(s) {', '.join(map(repr, clash))} are also task or cohort columns; a column "
                         "is either predicted or used as a covariate")
    return covariates


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
                  clinical: str | Path | None = None, kinds: Mapping[str, str] | None = None,
                  covariates: Sequence[str] = (), fixed: Mapping[str, L.LabelSpec] | None = None,
                  require: bool = True) -> Cohort:
    """Read and validate a cohort manifest; raise :class:`ManifestError` listing every problem.

    ``Cohort.table`` columns: ``slide_id``, ``patient_id``, ``bag_path`` (absolute; "" without
    ``bags_dir``), ``fold`` (Int64), ``split`` (string: train/val/test; valid/validation read as val),
    a float column per target (binary 1/0, a class index, a value; NaN = unknown),
    ``survival_time``/``survival_event`` for ``survival=(time, event)``, and
    ``covariate:<name>`` per covariate. ``kinds`` sets targets' kinds (the others are inferred);
    ``fixed`` gives targets the kind and classes of a trained run. With ``bags_dir`` every slide's
    bag must exist (and hold ``features``, or exactly one feature set). With ``clinical``,
    ``path`` is STAMP's slide table (see :mod:`mil.stamp`). ``require=False`` only names the slides
    (a manifest with no task columns, for prediction).
    """
    path = Path(path)
    tasks = make_tasks(targets, survival, kinds)
    covariates = check_covariates(covariates, tasks)
    needed = [*(c for t in tasks for c in t.columns), *covariates] if require else []
    problems: list[str] = []
    try:
        if clinical is None:
            records = manifest_records(read_table(path, problems), needed, problems)
        else:
            records = stamp.stamp_records(path, Path(clinical), needed, problems)
    except TableError as exc:
        raise ManifestError(path, [str(exc)]) from None
    cohort = build_cohort(records, tasks, path, problems, bags_dir=bags_dir, features=features,
                          covariates=covariates, fixed=fixed)
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
        elif task.kind == "regression":
            known = y[np.isfinite(y)]
            log.info("  %s (regression): %d values from %s to %s, %d unknown", task.name, known.size,
                     f"{known.min():g}" if known.size else "-", f"{known.max():g}" if known.size else "-",
                     int(np.isnan(y).sum()))
        elif task.kind == "multiclass" or task.classes:
            counts = ", ".join(f"{c} {int((y == i).sum())}" for i, c in enumerate(task.classes))
            log.info("  %s (%s): %s, %d unknown", task.name, task.kind, counts, int(np.isnan(y).sum()))
        else:
            log.info("  %s: %d positive, %d negative, %d unknown", task.name, int((y == 1).sum()),
                     int((y == 0).sum()), int(np.isnan(y).sum()))
    for cov in cohort.covariates:
        values = cohort.covariate_values(cov)
        missing = int(np.isnan(values).sum()) if cov.kind == "numeric" else int((values == "").sum())
        log.info("  covariate %s (%s): %d missing", cov.name, cov.kind, missing)
