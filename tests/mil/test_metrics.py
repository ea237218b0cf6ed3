"""Metrics (mil.metrics) against sklearn, lifelines and a brute-force Harrell's c-index;
patient-level bootstrap; undefined metrics reported as NaN, never a crash."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from mil import metrics as M


def harrell(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Brute-force Harrell's C: pair (i, j) is comparable when i has an event before j's time
    (or at j's time if j is censored); risk ties count 1/2."""
    num = den = 0.0
    for i in np.flatnonzero(event):
        for j in range(len(time)):
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


@pytest.mark.parametrize("seed", range(3))
def test_c_index_matches_lifelines_and_harrell(seed):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 12, 80).astype(float)          # many tied times
    event = (rng.random(80) < 0.6).astype(float)           # ~40% censored
    risk = np.round(rng.normal(size=80) - 0.2 * time, 1)   # tied risks, informative
    value = M.c_index(time, risk, event)
    assert value == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)  # lifelines takes survival
    assert value == pytest.approx(harrell(time, risk, event), abs=1e-12)
    assert value > 0.6


def test_c_index_direction_and_undefined():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4)
    assert M.c_index(time, -time, event) == 1.0  # higher risk, shorter survival: perfect
    assert M.c_index(time, time, event) == 0.0
    with pytest.raises(M.UndefinedMetricError):
        M.c_index(time, -time, np.zeros(4))


@pytest.mark.parametrize("seed", range(3))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    label = (rng.random(70) < 0.4).astype(float)
    score = np.round(np.clip(0.5 + 0.3 * (label - 0.5) + rng.normal(0, 0.25, 70), 0, 1), 1)  # ties, some exactly 0.5
    assert (score == 0.5).any()
    pred = (score >= 0.5).astype(int)
    assert M.auc(label, score) == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    assert M.balanced_accuracy(label, score) == pytest.approx(balanced_accuracy_score(label, pred), abs=1e-12)
    assert M.f1(label, score) == pytest.approx(f1_score(label, pred), abs=1e-12)
    assert M.accuracy(label, score) == pytest.approx(accuracy_score(label, pred), abs=1e-12)


def test_compute_drops_unknown_labels():
    label = np.array([1.0, 0.0, np.nan, 1.0, 0.0])
    score = np.array([0.9, 0.2, 0.99, 0.4, 0.6])
    out = M.compute("binary", label, score)
    keep = ~np.isnan(label)
    assert out["auc"] == pytest.approx(roc_auc_score(label[keep], score[keep]))
    assert out["accuracy"] == pytest.approx(0.5)


def test_bootstrap_resamples_whole_patients(monkeypatch):
    """Every bootstrap sample is a union of whole patients (each drawn patient brings all its slides)."""
    patients = np.repeat(np.arange(12), np.arange(12) % 3 + 1)      # 1, 2 or 3 slides per patient
    rows = np.arange(patients.size, dtype=float)
    samples = []

    def record(label, score, event, threshold):
        samples.append(score.astype(int))
        return 0.0

    monkeypatch.setitem(M.METRICS, "probe", {"probe": record})
    M.bootstrap_ci("probe", np.zeros_like(rows), rows, groups=patients.astype(str), n_boot=50, seed=1)
    assert len(samples) == 50
    for drawn in samples:
        counts = np.bincount(drawn, minlength=rows.size)
        draws = []
        for p in range(12):
            assert np.unique(counts[patients == p]).size == 1  # all slides of a patient, equally often
            draws.append(counts[patients == p][0])
        assert sum(draws) == 12  # 12 patients drawn with replacement
    assert len({tuple(np.sort(d)) for d in samples}) > 40  # and the draws differ


def test_bootstrap_ci_contains_the_estimate_and_is_wider_per_patient():
    rng = np.random.default_rng(0)
    label_p = np.arange(40) % 2
    score_p = np.clip(0.5 + 0.25 * (label_p - 0.5) + rng.normal(0, 0.25, 40), 0, 1)
    label, score = np.repeat(label_p, 5).astype(float), np.repeat(score_p, 5)  # 5 identical slides per patient
    groups = np.repeat(np.arange(40), 5).astype(str)
    point = M.compute("binary", label, score)
    per_patient = M.bootstrap_ci("binary", label, score, groups=groups, n_boot=300, seed=0)
    per_slide = M.bootstrap_ci("binary", label, score, n_boot=300, seed=0)
    for name, (lo, hi) in per_patient.items():
        assert lo <= point[name] <= hi, name
    width = lambda ci: ci[1] - ci[0]
    assert width(per_patient["auc"]) > 1.5 * width(per_slide["auc"])  # slides of one patient are not independent


def test_summarize_task_with_one_class_reports_nan(caplog):
    label = np.array([1.0, 1.0, 1.0, np.nan])
    score = np.array([0.8, 0.3, 0.6, 0.1])
    folds = [M.compute("binary", label[:2], score[:2]), M.compute("binary", label[2:], score[2:])]
    with caplog.at_level(logging.WARNING, logger="mil.metrics"):
        summary = M.summarize_task("binary", folds, label, score, groups=np.array(["a", "b", "c", "d"]), n_boot=50)
    auc = summary["metrics"]["auc"]
    assert summary["n"] == 3 and summary["n_positive"] == 3
    assert math.isnan(auc["pooled"]) and math.isnan(auc["mean"]) and all(math.isnan(v) for v in auc["ci95"])
    assert summary["metrics"]["accuracy"]["pooled"] == pytest.approx(2 / 3)
    assert "auc is undefined" in caplog.text
    safe = M.json_safe(summary)
    json.dumps(safe, allow_nan=False)  # NaN became null
    assert safe["metrics"]["auc"]["pooled"] is None


def test_summarize_survival_without_events_reports_nan():
    time = np.array([1.0, 2.0, 3.0])
    summary = M.summarize_task("survival", [], time, np.array([0.1, 0.2, 0.3]), np.zeros(3), n_boot=20)
    assert summary["n_events"] == 0 and math.isnan(summary["metrics"]["c_index"]["pooled"])
