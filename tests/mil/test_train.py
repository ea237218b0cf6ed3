"""Cross-validated training (mil.train): determinism, multi-task with missing labels, survival
with a known hazard, the run folder's contents, and clear errors on degenerate data.

The toy cohorts come from ``tests.factories.write_cohort``: bags in this project's format whose
instances carry a known signal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from mil.manifest import ManifestError, load_manifest
from mil.splits import SplitError
from mil.train import TrainConfig, train_cross_validation
from tests.factories import DIM, ENCODER, write_bag, write_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# fast: large steps, one bag each, the early-stopped model kept (refit=False; the default recipe's refit is
# tested in test_kinds.py and measured on real bags by benchmarks/bench_mil_recipe.py)
FAST = dict(folds=3, epochs=10, patience=4, hidden=16, n_bootstrap=200, lr=1e-2, refit=False)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, missing={"pr": 0.25})
    return root


def load(root: Path, targets=("er",), survival=None):
    return load_manifest(root / "manifest.csv", targets=targets, survival=survival, bags_dir=root / "bags")


@pytest.mark.slow
def test_same_seed_same_metrics_and_run_folder(cohort_dir, tmp_path):
    cohort = load(cohort_dir)
    a = train_cross_validation(cohort, TrainConfig(model="abmil", targets=("er",), seed=0, **FAST), tmp_path / "a")
    b = train_cross_validation(cohort, TrainConfig(model="abmil", targets=("er",), seed=0, **FAST), tmp_path / "b")
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()
    assert a == b
    c = train_cross_validation(cohort, TrainConfig(model="abmil", targets=("er",), seed=1, **FAST), tmp_path / "c")
    assert c["tasks"]["er"]["metrics"]["auc"]["folds"] != a["tasks"]["er"]["metrics"]["auc"]["folds"]

    run = tmp_path / "a"
    for name in ("config.json", "metrics.json", "predictions.csv", "roc_er.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
    assert all((run / f"fold_{k}" / "model.safetensors").is_file() for k in range(3))
    config = json.loads((run / "config.json").read_text())
    assert config["features"] == ENCODER and config["in_dim"] == DIM
    assert config["heads"] == [{"name": "er", "kind": "binary", "columns": ["er"], "n_outputs": 1, "threshold": 0.5,
                                "output": "probability", "classes": []}]
    assert config["bag_settings"]["features"]["encoder"] == ENCODER
    assert config["bag_settings"]["patch_size"] == 256 and config["bag_settings"]["tiling"]["target_mpp"] == 0.5
    assert len(config["manifest"]["sha256"]) == 64
    auc = a["tasks"]["er"]["metrics"]["auc"]
    assert len(auc["folds"]) == 3 and auc["ci95"][0] <= auc["pooled"] <= auc["ci95"][1]
    assert auc["pooled"] > 0.8  # the signal is strong: the model must find it
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["slide_id", "patient_id", "fold", "task", "label", "score", "event"]
    assert sorted(preds["slide_id"]) == sorted(cohort.table["slide_id"])  # every slide tested exactly once
    # no patient tested in two folds
    assert preds.groupby("patient_id")["fold"].nunique().max() == 1


def test_multitask_with_missing_labels_reports_each_task(cohort_dir, tmp_path):
    cohort = load(cohort_dir, targets=("er", "pr"))
    assert np.isnan(cohort.labels("pr")).sum() == 6
    result = train_cross_validation(cohort, TrainConfig(model="gated-abmil", targets=("er", "pr"), **FAST), tmp_path)
    assert set(result["tasks"]) == {"er", "pr"}
    assert result["tasks"]["er"]["n"] == 24 and result["tasks"]["pr"]["n"] == 18  # unknown labels excluded
    for task in ("er", "pr"):
        for metric in ("auc", "balanced_accuracy", "f1", "accuracy"):
            m = result["tasks"][task]["metrics"][metric]
            assert m["pooled"] is not None and len(m["folds"]) == 3
        assert (tmp_path / f"roc_{task}.png").is_file()
    preds = pd.read_csv(tmp_path / "predictions.csv")
    pr = preds[preds["task"] == "pr"]
    # a slide with an unknown label keeps its prediction, with an empty label
    assert len(pr) == 24 and pr["label"].isna().sum() == 6 and pr["score"].notna().all()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_survival_with_known_hazard(tmp_path, loss):
    root = tmp_path / "cohort"
    write_cohort(root, n_patients=60, n_instances=(20, 40), seed=1)
    cohort = load(root, targets=(), survival=("os_time", "os_event"))
    # no early stop: the validation NLL of ~13 patients is too noisy to pick an epoch on this toy
    config = TrainConfig(model="abmil", survival=("os_time", "os_event"), survival_loss=loss,
                         **{**FAST, "epochs": 15, "patience": 15, "folds": 3, "batch_size": 4})
    result = train_cross_validation(cohort, config, tmp_path / "run")
    c = result["tasks"]["survival"]["metrics"]["c_index"]
    # the true z scores ~0.83; chance is 0.5. Pooled NLL risks mix folds with different bin edges.
    assert c["pooled"] >= 0.65 and c["mean"] >= 0.68, c
    assert result["tasks"]["survival"]["logrank_p"] < 0.05
    assert (tmp_path / "run" / "km_survival.png").is_file()
    config_json = json.loads((tmp_path / "run" / "config.json").read_text())
    if loss == "nll":
        cuts = config_json["survival"]["bin_cuts"]  # 4 bins: 3 finite, increasing times between them
        assert len(cuts) == 3 and all(len(c) == 3 and np.all(np.diff(c) > 0) for c in cuts.values())
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert preds["event"].notna().all() and (preds["label"] == cohort.table.set_index("slide_id").loc[
        preds["slide_id"], "survival_time"].to_numpy()).all()


def test_one_class_only_is_a_clear_error(tmp_path):
    root = tmp_path / "c"
    manifest = write_cohort(root, n_patients=8)
    table = pd.read_csv(manifest)
    table["er"] = "negative"
    table.to_csv(manifest, index=False)
    with pytest.raises(SplitError, match="'er'.*only negative"):
        train_cross_validation(load(root), TrainConfig(targets=("er",), **FAST), tmp_path / "run")


def test_too_few_patients_is_a_clear_error(tmp_path):
    root = tmp_path / "c"
    write_cohort(root, n_patients=4)
    with pytest.raises(SplitError, match="too few patients for 5 folds"):
        train_cross_validation(load(root), TrainConfig(targets=("er",), **{**FAST, "folds": 5}), tmp_path / "run")


def test_nan_features_and_other_dimensions_are_reported_with_the_manifest_problems(tmp_path):
    root = tmp_path / "c"
    manifest = write_cohort(root, n_patients=24)
    bag = root / "bags" / "P03-S0.h5"
    with h5py.File(bag, "a") as f:
        x = f[f"features/{ENCODER}"][()]
        x[2, 5] = np.nan
        f[f"features/{ENCODER}"][...] = x
    write_bag(root / "bags" / "P05-S0.h5", np.ones((12, DIM + 4)))  # features of another encoder
    manifest.write_text(re.sub(r"^P07-S0,P07,\w+", "P07-S0,P07,maybe", manifest.read_text(), flags=re.M))
    with pytest.raises(ManifestError) as info:
        load(root)
    problems = info.value.problems  # every problem at once, each with its row, before any training
    assert any("row 5" in p and "P03-S0.h5: 1 of" in p and "NaN or infinite" in p for p in problems), problems
    # 22 others: the 24 bags less this one and the unreadable NaN bag
    assert any("row 7" in p and f"the bag has {DIM + 4}-d features, 22 other bag(s) have {DIM}-d" in p
               for p in problems), problems
    assert any("row 9" in p and "'maybe'" in p for p in problems), problems


def test_features_are_standardized_with_the_training_folds_statistics(tmp_path):
    """Encoder features come in any scale; training standardizes them with each fold's own
    training bags, and the saved weights carry that, so an offset/scaled copy of a cohort
    trains to the same predictions."""
    from safetensors.torch import load_file

    plain = write_cohort(tmp_path / "plain")
    shifted = tmp_path / "shifted"
    (shifted / "bags").mkdir(parents=True)
    (shifted / "manifest.csv").write_bytes(plain.read_bytes())
    for bag in (tmp_path / "plain" / "bags").glob("*.h5"):
        with h5py.File(bag) as f:
            x = f[f"features/{ENCODER}"][:].astype(np.float64)
        write_bag(shifted / "bags" / bag.name, x * 40 + 300)        # still exact in float16
    config = TrainConfig(model="abmil", targets=("er",), **FAST)
    a = train_cross_validation(load(tmp_path / "plain"), config, tmp_path / "run_plain")
    b = train_cross_validation(load(shifted), config, tmp_path / "run_shifted")
    assert a["tasks"]["er"]["metrics"]["auc"]["pooled"] > 0.8
    assert b["tasks"]["er"]["metrics"]["auc"]["pooled"] == pytest.approx(a["tasks"]["er"]["metrics"]["auc"]["pooled"],
                                                                         abs=0.05)
    weights = load_file(tmp_path / "run_shifted" / "fold_0" / "model.safetensors")
    assert weights["input_mean"][0] > 250 and weights["input_scale"][2] == pytest.approx(1 / 40, rel=0.2)


@pytest.mark.slow
def test_the_recipe_chooses_the_epochs_on_inner_splits_and_refits_on_all_training_patients(cohort_dir, tmp_path,
                                                                                         monkeypatch):
    """The default recipe (README, "Training recipe"), watched from the epochs it runs: per fold,
    three models train side by side on the inner splits (each training patient validates in
    exactly one), then one model trains on every training patient for the chosen number of
    epochs; the test patients never train."""
    import mil.train
    from mil.splits import make_folds

    epochs = []
    real = mil.train.run_epoch

    def watched(model, dataset, rows, *args, **kwargs):
        epochs.append(frozenset(int(r) for r in rows))
        return real(model, dataset, rows, *args, **kwargs)

    monkeypatch.setattr(mil.train, "run_epoch", watched)
    cohort = load(cohort_dir)
    config = TrainConfig(targets=("er",), **{**FAST, "refit": True, "epochs": 5, "patience": 5})
    assert config.inner_folds == 3 and TrainConfig().refit  # the defaults
    result = train_cross_validation(cohort, config, tmp_path / "run")
    folds = make_folds(cohort, 3, seed=0, inner_folds=3)   # what the run split, recomputed
    patients = cohort.table["patient_id"].to_numpy()
    for fold, record in zip(folds, result["training"], strict=True):
        training = set(fold.training.tolist())
        validated = [set(val.tolist()) for _, val in fold.inner]
        assert len(fold.inner) == 3 and set().union(*validated) == training
        assert sum(map(len, validated)) == len(training)                      # each validates once
        for train, val in fold.inner:
            assert set(train.tolist()) | set(val.tolist()) == training
            assert not set(patients[train]) & set(patients[val])               # patient-grouped
        inner = [frozenset(train.tolist()) for train, _ in fold.inner]
        n_select = 3 * record["epochs_run"]
        run = epochs[:n_select + record["best_epoch"] + 1]
        del epochs[:len(run)]
        assert run[:n_select] == inner * record["epochs_run"]                 # side by side, epoch by epoch
        assert run[n_select:] == [frozenset(training)] * (record["best_epoch"] + 1)   # the refit
        assert not training & set(fold.test.tolist())
        assert record["refit"] and record["inner_splits"] == 3 and record["n_refit"] == len(training)
    assert not epochs
