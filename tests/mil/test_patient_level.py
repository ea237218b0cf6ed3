"""Patient-level models (``--level patient``): one bag pools the patches of all of a patient's
slides, attention runs across them, metrics count patients; prediction pools them the same way
and writes each slide's share of the attention beside its bag.

In ``tests.factories.write_patient_cohort`` a positive patient's evidence sits in ONE of their
three slides; the other two look negative.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import mil.train
from tests.factories import mil_cli, read_json, write_patient_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--folds", "3", "--epochs", "12", "--patience", "4", "--hidden", "32", "--lr", "3e-3", "--bootstrap", "50"]




@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("patients")
    write_patient_cohort(root, n_patients=36, slides_per_patient=3)
    return root


def bag_sizes(cohort: Path) -> dict[str, int]:
    sizes = {}
    for bag in (cohort / "bags").glob("*.h5"):
        with h5py.File(bag) as f:
            sizes[bag.stem] = len(f["coords"])
    return sizes


@pytest.fixture(scope="module")
def patient_run(cohort, tmp_path_factory) -> tuple[Path, list[int]]:
    """A patient-level run, and the size of every bag its fold models were shown in eval mode."""
    out = tmp_path_factory.mktemp("run") / "run"
    seen: list[int] = []
    real = mil.train.create_model

    def spying(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: None if m.training else seen.append(len(inputs[0])))
        return model

    mil.train.create_model = spying
    try:
        result = mil_cli("train", "--manifest", cohort / "manifest.csv", "--bags", cohort / "bags", "--out", out, *FAST,
                     "--target", "tumor", "--level", "patient")
    finally:
        mil.train.create_model = real
    assert result.exit_code == 0, result.output
    return out, seen


def test_a_patient_bag_pools_all_their_slides(patient_run, cohort):
    run, seen = patient_run
    sizes = bag_sizes(cohort)
    per_patient = {}
    for slide, n in sizes.items():
        per_patient[slide.split("-")[0]] = per_patient.get(slide.split("-")[0], 0) + n
    assert set(seen) <= set(per_patient.values()) and len(set(seen)) > 10   # pooled bags, never one slide
    preds = pd.read_csv(run / "predictions.csv")
    assert sorted(preds["slide_id"]) == sorted(per_patient) and (preds["slide_id"] == preds["patient_id"]).all()
    metrics = read_json(run / "metrics.json")
    assert metrics["level"] == "patient" and metrics["n_patients"] == 36 and metrics["n_slides"] == 108
    assert metrics["tasks"]["tumor"]["n"] == 36
    assert metrics["tasks"]["tumor"]["metrics"]["auc"]["pooled"] >= 0.85
    config = read_json(run / "config.json")
    assert config["level"] == "patient" and config["train"]["level"] == "patient"
    assert sorted(t for f in config["folds"] for t in f["test"]) == sorted(per_patient)


def test_slide_level_stays_the_default_with_patient_grouped_splits(cohort, tmp_path):
    result = mil_cli("train", "--manifest", cohort / "manifest.csv", "--bags", cohort / "bags",
                     "--out", tmp_path / "run", *FAST, "--target", "tumor", "--epochs", "3")
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(preds) == 108 and preds.groupby("patient_id")["fold"].nunique().max() == 1
    assert read_json(tmp_path / "run" / "metrics.json")["level"] == "slide"


def test_predict_and_evaluate_at_the_patient_level(patient_run, cohort, tmp_path):
    run, _ = patient_run
    result = mil_cli("predict", "--model", run, "--bags", cohort / "bags", "--manifest", cohort / "manifest.csv",
                 "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(preds) == 36 and preds["fold"].isna().all()
    # each slide's file holds its own rows of the patient's attention, which sums to 1 over the slides
    totals, shares, shifted = {}, {}, {}
    for slide, n in bag_sizes(cohort).items():
        with h5py.File(tmp_path / "pred" / "attention" / f"{slide}.h5") as f:
            a = f["attention/tumor"][()]
        with h5py.File(cohort / "bags" / f"{slide}.h5") as f:
            shifted[slide] = float(f["features/toy-enc"][:, 0].astype(float).mean())
        assert len(a) == n
        patient = slide.split("-")[0]
        totals[patient] = totals.get(patient, 0.0) + float(a.sum())
        shares.setdefault(patient, {})[slide] = float(a.sum())
    np.testing.assert_allclose(list(totals.values()), 1.0, rtol=1e-4)
    # a positive patient's attention goes mostly to the slide that carries the evidence (the shifted one)
    manifest = pd.read_csv(cohort / "manifest.csv")
    positive = manifest.groupby("patient_id")["tumor"].first()
    hits = [max(shares[p], key=shares[p].get) == max(shares[p], key=shifted.get) for p in positive[positive == 1].index]
    assert np.mean(hits) >= 0.8, hits
    evaluated = mil_cli("evaluate", "--predictions", tmp_path / "pred" / "predictions.csv", "--manifest",
                    cohort / "manifest.csv", "--out", tmp_path / "eval", "--bootstrap", "20")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = read_json(tmp_path / "eval" / "metrics.json")
    assert metrics["level"] == "patient" and metrics["tasks"]["tumor"]["n"] == 36
    labels = manifest.groupby("patient_id")["tumor"].first()
    assert metrics["tasks"]["tumor"]["n_positive"] == int(labels.sum())
