"""Patient-level cross-validation folds, each with an inner validation split for early stopping.

No patient is ever on two sides of a split (train / validation / test). Folds come from,
in this order of preference:

1. the manifest's ``fold`` column (test fold k = the rows with fold k),
2. the manifest's ``split`` column (one fold: ``test`` rows are tested, ``val``/``valid``/
   ``validation`` rows validate, the rest train),
3. sklearn's ``StratifiedGroupKFold`` over patients, stratified on the first binary task, else
   the first multi-class task, else the survival event, else the quartile of the first
   regression target, shuffled with the run's seed.

The validation rows of each fold are ~``val_fraction`` of its training patients, drawn the
same way (stratified, grouped by patient, seeded), unless the manifest named them. With
``inner_folds`` = K > 1 a fold also carries K inner splits of all its training patients
(stratified, grouped, seeded): every training patient validates once, so the training recipe
picks its epoch count on a validation curve measured on all of them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from pathology.errors import UserError

log = logging.getLogger(__name__)

VAL_NAMES = ("val", "valid", "validation")


class SplitError(UserError):
    """The cohort cannot be split as asked (too few patients, one class only, a bad fold column)."""


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray   # row indices into cohort.table
    val: np.ndarray
    test: np.ndarray
    inner: tuple[tuple[np.ndarray, np.ndarray], ...] = ()   # K (train, validation) splits of train + val

    @property
    def training(self) -> np.ndarray:
        """Every training row of the fold (inner training and validation)."""
        return np.union1d(self.train, self.val)


def check_cohort(cohort) -> None:
    """Every task must have both classes (binary), two classes (multiclass), two values
    (regression) or at least one event (survival) among its known labels."""
    for task in cohort.tasks:
        y = cohort.labels(task.name)
        if task.kind in ("multiclass", "regression"):
            known = np.unique(y[np.isfinite(y)])
            if known.size < 2:
                what = "classes" if task.kind == "multiclass" else "distinct values"
                raise SplitError(f"task {task.name!r} has {known.size} {what} among its known labels: it needs two")
        elif task.kind == "binary":
            known = y[np.isfinite(y)]
            if np.unique(known).size < 2:
                what = f"only {'positive' if known.size and known[0] == 1 else 'negative'}" if known.size else "no"
                raise SplitError(f"task {task.name!r} has {what} labels in the cohort ({known.size} known): "
                                 "it needs both classes")
        elif task.kind == "survival":
            event = y[:, 1]
            if not np.nansum(event):
                raise SplitError(f"task {task.name!r} has no events in the cohort: the c-index is undefined")


def make_folds(cohort, n_folds: int = 5, *, seed: int = 0, val_fraction: float = 0.2,
               inner_folds: int = 1) -> list[Fold]:
    """Test folds and inner validation splits for ``cohort`` (see the module docstring)."""
    check_cohort(cohort)
    table = cohort.table
    patients = np.asarray(cohort.patients()).astype(str)
    strata = stratification_labels(cohort)
    if "fold" in table and table["fold"].notna().any():
        folds = folds_from_column(table["fold"], patients)
    elif "split" in table and table["split"].notna().any():
        folds = [split_from_column(table["split"], patients)]
    else:
        folds = stratified_folds(patients, strata, n_folds, seed)
    out = []
    for k, train, val, test in folds:
        fixed = val is not None
        if val is None:
            train, val = inner_split(train, patients, strata, val_fraction, seed + 1 + k, fold=k)
        inner = () if fixed or inner_folds < 2 else inner_splits(np.union1d(train, val), patients, strata,
                                                                   inner_folds, seed + 1 + k, fold=k)
        out.append(Fold(k, np.sort(train), np.sort(val), np.sort(test), inner))
    return out


def inner_splits(rows: np.ndarray, patients: np.ndarray, strata: np.ndarray, k: int, seed: int,
                 fold: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``k`` (train, validation) splits of ``rows``, stratified and grouped by patient, each
    patient validating once (fewer splits when there are fewer patients)."""
    groups = patients[rows]
    n_splits = min(k, np.unique(groups).size)
    if n_splits < 2:
        raise SplitError(f"fold {fold}: {np.unique(groups).size} training patient(s) cannot be split into train "
                         "and validation")
    if np.unique(strata[rows], return_counts=True)[1].max() < n_splits:
        cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = cv.split(rows, groups=groups)
    else:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            parts = list(cv.split(rows, strata[rows], groups=groups))
    return tuple((np.sort(rows[a]), np.sort(rows[b])) for a, b in parts)


STRATA = {  # kind -> its labels as integer strata (NaN for unknown), in order of preference
    "binary": lambda y: y,
    "multiclass": lambda y: y,
    "survival": lambda y: y[:, 1],
    "regression": lambda y: np.where(np.isfinite(y), np.searchsorted(
        np.nanquantile(y, [0.25, 0.5, 0.75]) if np.isfinite(y).any() else [], y, side="right"), np.nan),
}


def stratification_labels(cohort) -> np.ndarray:
    """One integer stratum per row from the first task of the most preferred kind
    (:data:`STRATA`; unknown = its own stratum), else all zero."""
    n = len(cohort.table)
    for kind, strata in STRATA.items():
        for task in cohort.tasks:
            if task.kind == kind:
                y = strata(cohort.labels(task.name)).astype(float)
                return np.where(np.isfinite(y), np.nan_to_num(y), -1).astype(int)
    return np.zeros(n, dtype=int)


def stratified_folds(patients: np.ndarray, strata: np.ndarray, n_folds: int, seed: int):
    """``n_folds`` patient-level stratified folds: (k, train, None, test) row indices."""
    n_patients = np.unique(patients).size
    if n_folds < 2:
        raise SplitError(f"--folds must be at least 2 (got {n_folds})")
    if n_patients < n_folds:
        raise SplitError(f"too few patients for {n_folds} folds: the cohort has {n_patients}")
    if n_patients - -(-n_patients // n_folds) < 2:
        raise SplitError(f"too few patients for {n_folds} folds with validation: the cohort has {n_patients}, "
                         "each training fold needs at least 2")
    _warn_small_strata(patients, strata, n_folds)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = np.arange(patients.size)
    return [(k, train, None, test) for k, (train, test) in enumerate(cv.split(rows, strata, groups=patients))]


def inner_split(train: np.ndarray, patients: np.ndarray, strata: np.ndarray, val_fraction: float, seed: int,
                fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (train, validation) by patient, ~``val_fraction`` of patients in validation."""
    groups = patients[train]
    n_patients = np.unique(groups).size
    if n_patients < 2:
        raise SplitError(f"fold {fold}: {n_patients} training patient(s) cannot be split into train and validation")
    n_splits = min(n_patients, max(2, round(1 / val_fraction)))
    if np.unique(strata[train], return_counts=True)[1].max() < n_splits:
        # every class is rarer than the split count (a tiny fold): stratifying is impossible,
        # a plain patient-level split still keeps patients apart
        log.warning("fold %d: too few training patients per class to stratify the validation split", fold)
        inner_train, inner_val = next(GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                                      .split(train, groups=groups))
        return train[inner_train], train[inner_val]
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a rare class in a small fold: the split is still patient-level
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        inner_train, inner_val = next(cv.split(train, strata[train], groups=groups))
    return train[inner_train], train[inner_val]


def folds_from_column(fold: pd.Series, patients: np.ndarray):
    """Folds fixed by the manifest: test fold k = rows with fold == k (k keeps the manifest's numbering)."""
    if fold.isna().any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(fold.isna().to_numpy())[:10])
        raise SplitError(f"the fold column is empty on some rows (CSV rows {rows}): give every slide a fold or none")
    values = fold.astype(int).to_numpy()
    per_patient = pd.Series(values).groupby(patients).nunique()
    mixed = per_patient[per_patient > 1]
    if len(mixed):
        raise SplitError(f"the fold column puts patient(s) {', '.join(map(str, mixed.index[:5]))} in several folds")
    keys = np.unique(values)
    if keys.size < 2:
        raise SplitError(f"the fold column has a single fold ({keys[0]}): nothing to train on")
    rows = np.arange(values.size)
    return [(int(k), rows[values != k], None, rows[values == k]) for k in keys]


def split_from_column(split: pd.Series, patients: np.ndarray):
    """One fold from a train/val/test column (case-insensitive; empty = train)."""
    names = split.fillna("train").astype(str).str.strip().str.lower().to_numpy()
    rows = np.arange(names.size)
    test = rows[names == "test"]
    val = rows[np.isin(names, VAL_NAMES)]
    train = rows[~np.isin(names, ("test", *VAL_NAMES))]
    if not test.size or not train.size:
        raise SplitError("the split column needs both 'train' and 'test' rows")
    side = np.where(names == "test", "test", np.where(np.isin(names, VAL_NAMES), "val", "train"))
    per_patient = pd.Series(side).groupby(patients).nunique()
    mixed = per_patient[per_patient > 1]
    if len(mixed):
        raise SplitError(f"the split column puts patient(s) {', '.join(map(str, mixed.index[:5]))} on several sides")
    return 0, train, (val if val.size else None), test


def _warn_small_strata(patients: np.ndarray, strata: np.ndarray, n_folds: int) -> None:
    per_class = pd.Series(patients).groupby(strata).nunique()
    for value, count in per_class.items():
        if value >= 0 and count < n_folds:
            log.warning("only %d patients have stratification label %d for %d folds: some test folds miss it "
                        "and their AUC is NaN", count, value, n_folds)
