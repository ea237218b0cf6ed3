"""Clinical covariates fused with the slide (``--covariates``): encoded within each training fold
(numbers standardized, categories one-hot, missing values filled from the fold and flagged),
stored per fold so prediction applies the same encoding, used when they carry what the bags do
not, and reported beside a covariates-only model.

In ``tests.factories.write_task_cohort`` relapse is stage III, or stage II over 60 (5% flipped),
and no feature of the bags carries it: only the covariates can predict it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mil import covariates as C
from mil.predict import load_run, predict_bag
from mil.runconfig import CovariateFit
from pathology.cli import app as pathology_app
from tests.factories import STAGES, read_json, write_pyramid_tiff, write_task_cohort
from tests.factories import mil_cli as mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--folds", "3", "--epochs", "15", "--patience", "5", "--hidden", "32", "--lr", "3e-3", "--bootstrap", "50"]




@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """60 patients; a tenth of them with no age."""
    root = tmp_path_factory.mktemp("cov")
    write_task_cohort(root, n_patients=60, seed=2, missing={"age": 0.1})
    return root


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    common = ["--manifest", cohort / "manifest.csv", "--bags", cohort / "bags", *FAST, "--target", "relapse"]
    for name, extra in {"fused": ["--covariates", "age,stage"], "image": []}.items():
        result = mil("train", *common, "--out", out / name, *extra)
        assert result.exit_code == 0, result.output
        if name == "fused":
            assert "covariates only (age, stage)" in result.output     # the baseline's table is printed
    return {"fused": out / "fused", "image": out / "image"}


def test_the_encoding_is_fitted_on_each_training_fold(runs, cohort):
    config = read_json(runs["fused"] / "config.json")
    assert config["covariates"] == ["age", "stage"] and config["train"]["covariates"] == ["age", "stage"]
    manifest = pd.read_csv(cohort / "manifest.csv", dtype={"age": float}).set_index("slide_id")
    for fold in config["folds"]:
        training = manifest.drop(index=fold["test"])
        age, stage = fold["covariates"]
        known = training["age"].dropna()
        assert age == {"name": "age", "kind": "numeric", "mean": pytest.approx(known.mean()),
                       "sd": pytest.approx(known.std(ddof=0)), "fill": pytest.approx(known.median()),
                       "levels": [], "missing": bool(training["age"].isna().any())}
        assert stage == {"name": "stage", "kind": "categorical", "mean": 0.0, "sd": 1.0, "fill": 0.0,
                         "levels": list(STAGES), "missing": False}


def test_encode_by_hand():
    fits = [CovariateFit(name="age", kind="numeric", mean=60.0, sd=10.0, fill=58.0, levels=(), missing=True),
            CovariateFit(name="stage", kind="categorical", mean=0.0, sd=1.0, fill=0.0, levels=("I", "II", "III"),
                         missing=False)]
    got = C.encode(fits, {"age": np.array([70.0, np.nan, 55.0]), "stage": np.array(["ii", "", "IV"], object)})
    np.testing.assert_allclose(got, [[1.0, 0, 0, 1, 0],       # age 70: +1 sd; stage II (any case)
                                     [-0.2, 1, 0, 0, 0],      # no age: the median (58), flagged; no stage: zeros
                                     [-0.5, 0, 0, 0, 0]])     # a stage training never saw: zeros
    assert C.columns(fits) == ["age", "age:missing", "stage=I", "stage=II", "stage=III"]
    assert C.width(fits) == 5


def test_covariates_carrying_the_signal_are_used(runs):
    fused, image = (read_json(runs[n] / "metrics.json") for n in ("fused", "image"))
    auc = {"fused": fused["tasks"]["relapse"]["metrics"]["auc"]["pooled"],
           "covariates only": fused["covariates_only"]["relapse"]["metrics"]["auc"]["pooled"],
           "image only": image["tasks"]["relapse"]["metrics"]["auc"]["pooled"]}
    assert auc["fused"] >= 0.85 and auc["covariates only"] >= 0.85, auc
    assert auc["fused"] - auc["image only"] >= 0.2, auc          # the bags alone carry nothing of it
    baseline = pd.read_csv(runs["fused"] / "predictions_covariates_only.csv")
    assert len(baseline) == 60 and set(baseline["fold"]) == {0, 1, 2}
    assert fused["covariates"] == ["age", "stage"] and "covariates_only" not in image


def test_prediction_applies_each_folds_encoding(runs, cohort, tmp_path):
    run = load_run(runs["fused"])
    x = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    stage1, _ = predict_bag(run, x, {"age": 50.0, "stage": "I"})
    stage3, _ = predict_bag(run, x, {"age": 50.0, "stage": "III"})
    assert stage3["relapse"] > stage1["relapse"] + 0.2          # stage III relapses in this cohort
    missing, _ = predict_bag(run, x, {"age": float("nan"), "stage": ""})  # filled and flagged as in training
    assert 0 < missing["relapse"] < 1
    # mil predict takes the values from the manifest, and needs it
    refused = mil("predict", "--model", runs["fused"], "--bags", cohort / "bags", "--out", tmp_path / "p")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert [ln for ln in refused.output.splitlines() if ln.startswith("error")] == [
        f"error: {runs['fused']}: the run uses clinical covariates (age, stage); give a --manifest with those columns"]
    done = mil("predict", "--model", runs["fused"], "--bags", cohort / "bags", "--manifest", cohort / "manifest.csv",
               "--out", tmp_path / "p")
    assert done.exit_code == 0, done.output
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("slide_id")
    manifest = pd.read_csv(cohort / "manifest.csv").set_index("slide_id")
    from mil.data import read_features
    bag = read_features(cohort / "bags" / "P07-S0.h5").features
    row = manifest.loc["P07-S0"]
    expected, _ = predict_bag(run, bag, {"age": row["age"], "stage": row["stage"]})
    assert preds.at["P07-S0", "score"] == pytest.approx(expected["relapse"], rel=1e-5)


def test_pathology_run_needs_the_covariates_of_new_slides(runs, tmp_path):
    slide = write_pyramid_tiff(tmp_path / "new.svs", np.full((512, 512, 3), 230, np.uint8))
    result = CliRunner(env={"COLUMNS": "500"}).invoke(pathology_app, ["run", str(slide), "--model", str(runs["fused"]),
                                                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert [ln for ln in result.output.splitlines() if ln.startswith("error")] == [
        f"error: {runs['fused']}: the run uses clinical covariates (age, stage); give each slide's values with "
        "--clinical TABLE (columns slide_id, age, stage)"]
    assert not (tmp_path / "out").exists()
