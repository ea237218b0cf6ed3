"""Cross-validation splits (mil.splits) on manifests the tests write: patient-level folds with
an inner validation split, the manifest's own fold/split column, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mil.manifest import load_manifest
from mil.splits import SplitError, make_folds
from pathology.errors import UserError


def write_manifest(path: Path, n_patients: int = 40, *, seed: int = 0, positive_share: float = 0.4,
                   fold_column: bool = False, survival: bool = False) -> Path:
    """Patients with 1-4 slides each; ``er`` is a patient-level label (some unknown)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        er = "positive" if rng.random() < positive_share else "negative"
        er = "" if p % 13 == 5 else er
        for s in range(int(rng.integers(1, 5))):
            row = {"slide_id": f"P{p:03d}-S{s}", "patient_id": f"P{p:03d}", "er": er}
            if fold_column:
                row["fold"] = p % 3
            if survival:
                row.update(os_time=float(10 + p), os_event=p % 3 != 0)
            rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def cohort(tmp_path):
    return load_manifest(write_manifest(tmp_path / "cohort.csv"), targets=["er"])


def patients_of(cohort, rows: np.ndarray) -> set[str]:
    return set(cohort.patients()[rows])


def test_folds_are_patient_level_and_cover_every_slide_once(cohort):
    folds = make_folds(cohort, 5, seed=0)
    n = len(cohort.table)
    assert len(folds) == 5 and cohort.table["patient_id"].nunique() < n  # patients do have several slides
    tested = np.concatenate([f.test for f in folds])
    assert np.sort(tested).tolist() == list(range(n))  # every slide tested exactly once
    for f in folds:
        assert len(f.train) and len(f.val) and len(f.test)
        assert np.sort(np.concatenate([f.train, f.val, f.test])).tolist() == list(range(n))
        train, val, test = (patients_of(cohort, r) for r in (f.train, f.val, f.test))
        assert not (train & val) and not (train & test) and not (val & test), f"fold {f.index} mixes patients"
        assert 0.1 <= len(val) / (len(train) + len(val)) <= 0.35


def test_strata_are_roughly_balanced(cohort):
    er = cohort.labels("er")
    overall = np.nanmean(er)
    for f in make_folds(cohort, 5, seed=0):
        share = np.nanmean(er[f.test])
        assert abs(share - overall) <= 0.15, f"fold {f.index}: {share:.2f} positive vs {overall:.2f} overall"
        assert np.nansum(er[f.val]) >= 1 and np.nansum(1 - er[f.val]) >= 1  # both classes to validate on


def test_same_seed_same_folds(cohort):
    a, b, c = make_folds(cohort, 4, seed=7), make_folds(cohort, 4, seed=7), make_folds(cohort, 4, seed=8)
    key = lambda folds: [(f.train.tolist(), f.val.tolist(), f.test.tolist()) for f in folds]
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_manifest_fold_column_is_respected(tmp_path):
    cohort = load_manifest(write_manifest(tmp_path / "cohort.csv", fold_column=True), targets=["er"])
    folds = make_folds(cohort, 5, seed=0)  # the column wins over n_folds
    fold = cohort.table["fold"].to_numpy(int)
    assert [f.index for f in folds] == [0, 1, 2]
    for f in folds:
        assert f.test.tolist() == np.flatnonzero(fold == f.index).tolist()
        assert not patients_of(cohort, f.train) & patients_of(cohort, f.val)
        assert set(fold[np.concatenate([f.train, f.val])]) == {0, 1, 2} - {f.index}


def test_manifest_split_column_is_respected(tmp_path):
    path = write_manifest(tmp_path / "cohort.csv")
    table = pd.read_csv(path)
    number = table["patient_id"].str[1:].astype(int)
    table["split"] = np.where(number < 8, "test", np.where(number < 14, "Validation", "train"))
    table.to_csv(path, index=False)
    (fold,) = make_folds(load_manifest(path, targets=["er"]), 5)
    assert fold.test.tolist() == np.flatnonzero(number < 8).tolist()
    assert fold.val.tolist() == np.flatnonzero((number >= 8) & (number < 14)).tolist()
    assert fold.train.tolist() == np.flatnonzero(number >= 14).tolist()


def test_survival_only_cohort_splits_on_events(tmp_path):
    cohort = load_manifest(write_manifest(tmp_path / "c.csv", survival=True), survival=("os_time", "os_event"))
    folds = make_folds(cohort, 3, seed=0)
    event = cohort.labels("survival")[:, 1]
    assert all(event[f.test].sum() >= 1 for f in folds)


def test_too_few_patients_is_a_one_line_error(tmp_path):
    cohort = load_manifest(write_manifest(tmp_path / "c.csv", n_patients=3, positive_share=0.5, seed=3),
                           targets=["er"])
    assert set(cohort.labels("er")) == {0.0, 1.0}
    with pytest.raises(SplitError, match="too few patients for 5 folds") as info:
        make_folds(cohort, 5)
    assert "\n" not in str(info.value) and "3" in str(info.value)


def test_one_class_only_is_a_one_line_error(tmp_path):
    cohort = load_manifest(write_manifest(tmp_path / "c.csv", positive_share=0.0), targets=["er"])
    with pytest.raises(SplitError, match="'er' has only negative labels") as info:
        make_folds(cohort, 5)
    assert "\n" not in str(info.value) and "both classes" in str(info.value)
    assert isinstance(info.value, UserError)  # reported as bad input, not as a bug


def test_a_tiny_cohort_still_gets_patient_level_validation_splits(tmp_path):
    """Six patients in two folds: too few per class to stratify the inner split (sklearn would
    refuse); the split falls back to plain patient-level groups instead of failing."""
    rows = [{"slide_id": f"S{p}", "patient_id": f"P{p}", "er": p % 2} for p in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "tiny.csv", index=False)
    cohort = load_manifest(tmp_path / "tiny.csv", targets=["er"])
    for f in make_folds(cohort, 2, seed=0):
        assert len(f.train) and len(f.val) and len(f.test)
        train, val, test = (patients_of(cohort, r) for r in (f.train, f.val, f.test))
        assert not (train & val) and not (train & test) and not (val & test)
