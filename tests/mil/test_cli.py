"""The ``mil`` command line end to end: train a run on a toy cohort, predict new bags with it,
evaluate predictions, and refuse bad input with exit code 2 and one clear message.

Bags and manifests come from ``write_cohort`` (test_mil_train.py): 24 patients with two
slides each, ER carried by a share of shifted instances, PR partly unknown, and survival.
Tests that need the trained run (a module fixture, ~5-10 s) are marked slow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mil.losses import risk_from_hazards
from mil.models import Head, create_model
from tests.factories import DIM, ENCODER, write_bag, write_cohort
from tests.factories import mil_cli as mil

# the plumbing tests train fast: a few large steps, the early-stopped model kept (--no-refit); the
# default recipe (refit for the epochs chosen on inner splits) is tested in test_kinds.py and measured
# on real bags by benchmarks/bench_mil_recipe.py
FAST = ["--folds", "3", "--epochs", "10", "--patience", "4", "--hidden", "16", "--batch-size", "4", "--lr", "1e-2",
        "--no-refit", "--bootstrap", "200"]
TASKS = ["--target", "er,pr", "--survival", "os_time,os_event"]



def train(root: Path, out: Path, *extra: object):
    return mil("train", "--manifest", root / "manifest.csv", "--bags", root / "bags", "--out", out, *FAST, *extra)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, n_patients=24, slides_per_patient=2, n_instances=(10, 24), missing={"pr": 0.25})
    return root


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory) -> Path:
    """One multi-task run (er, pr with unknown labels, survival) trained through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = train(cohort, out, *TASKS, "--model", "abmil", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def fold_models(run: Path) -> tuple[dict, list]:
    """The run's fold models rebuilt by hand from config.json and the safetensors files."""
    config = json.loads((run / "config.json").read_text())
    heads = [Head(h["name"], h["n_outputs"]) for h in config["heads"]]
    models = []
    for fold in config["folds"]:
        model = create_model(config["model"]["name"], config["in_dim"], heads, hidden=config["model"]["hidden"])
        model.load_state_dict(load_file(run / f"fold_{fold['fold']}" / "model.safetensors"))
        models.append(model.eval())
    return config, models


# ---------------------------------------------------------------- train

@pytest.mark.slow
def test_train_writes_a_complete_run(run, cohort):
    for name in ("config.json", "metrics.json", "predictions.csv", "roc_er.png", "roc_pr.png", "km_survival.png"):
        assert (run / name).is_file(), name
    assert all((run / f"fold_{k}" / "model.safetensors").is_file() for k in range(3))
    assert not list(run.rglob("*.partial"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"er", "pr", "survival"}
    for task, names in (("er", ("auc", "balanced_accuracy", "f1", "accuracy")),
                        ("pr", ("auc", "balanced_accuracy", "f1", "accuracy")), ("survival", ("c_index",))):
        assert set(metrics["tasks"][task]["metrics"]) == set(names)
        for name in names:
            m = metrics["tasks"][task]["metrics"][name]
            assert len(m["folds"]) == 3 and all(v is not None for v in m["folds"]), (task, name, m)
            assert m["mean"] == pytest.approx(np.mean(m["folds"]))
            assert m["sd"] == pytest.approx(np.std(m["folds"], ddof=1))
            assert m["ci95"][0] <= m["pooled"] <= m["ci95"][1]
    assert metrics["tasks"]["er"]["n"] == 48 and metrics["tasks"]["pr"]["n"] == 36  # 6 patients' PR unknown
    assert metrics["tasks"]["er"]["metrics"]["auc"]["pooled"] > 0.8  # an easy signal
    assert metrics["tasks"]["survival"]["metrics"]["c_index"]["mean"] > 0.6  # the true hazard scores ~0.83


@pytest.mark.slow
def test_train_is_patient_level(run, cohort):
    preds = pd.read_csv(run / "predictions.csv")
    config = json.loads((run / "config.json").read_text())
    manifest = pd.read_csv(cohort / "manifest.csv")
    assert preds.groupby("task").size().to_dict() == {"er": 48, "pr": 48, "survival": 48}
    assert preds.groupby("patient_id")["fold"].nunique().max() == 1
    tested = [s for f in config["folds"] for s in f["test"]]
    assert sorted(tested) == sorted(manifest["slide_id"])  # every slide tested exactly once
    patient = manifest.set_index("slide_id")["patient_id"]
    fold_patients = [set(patient[f["test"]]) for f in config["folds"]]
    assert all(not (a & b) for i, a in enumerate(fold_patients) for b in fold_patients[i + 1:])


@pytest.mark.slow
def test_same_seed_same_metrics(run, cohort, tmp_path):
    result = train(cohort, tmp_path / "again", *TASKS, "--model", "abmil", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "metrics.json").read_text() == (run / "metrics.json").read_text()
    assert "auc" in result.stdout and "c_index" in result.stdout  # the metrics table


@pytest.mark.slow
def test_a_complete_run_is_not_overwritten_by_accident(run, cohort):
    before = (run / "metrics.json").read_text()
    result = train(cohort, run, *TASKS)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (run / "metrics.json").read_text() == before


def _one_class(root: Path) -> None:
    table = pd.read_csv(root / "manifest.csv")
    table["er"] = "negative"
    table.to_csv(root / "manifest.csv", index=False)


def _empty_bag(root: Path) -> None:
    write_bag(root / "bags" / "P03-S0.h5", np.zeros((0, DIM)), coords=np.zeros((0, 2)))


def _nan_features(root: Path) -> None:
    with h5py.File(root / "bags" / "P03-S0.h5", "a") as f:
        ds = f[f"features/{ENCODER}"]
        x = ds[()]
        x[1, 2] = np.nan
        ds[...] = x


@pytest.mark.parametrize("n_patients, damage, args, message", [
    (12, _one_class, ["--target", "er"], "task 'er' has only negative labels"),
    (4, None, ["--target", "er", "--folds", "5"], "too few patients for 5 folds"),
    (12, _empty_bag, ["--target", "er"], "P03-S0.h5: empty bag (0 instances)"),
    (16, _nan_features, ["--target", "er"], "P03-S0.h5: 1 of"),
    (12, lambda root: (root / "bags" / "P05-S0.h5").unlink(), ["--target", "er"], "no bag for slide 'P05-S0'"),
    (12, None, ["--target", "er", "--model", "no-such-model"], "no-such-model"),
    (12, None, ["--target", "ki67"], "missing required column 'ki67'"),
    (12, None, ["--survival", "os_time"], "--survival takes TIME_COL,EVENT_COL"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, n_patients, damage, args, message):
    root = tmp_path / "cohort"
    write_cohort(root, n_patients=n_patients)
    if damage:
        damage(root)
    result = train(root, tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, RuntimeError))
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def predicted(run, cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict")
    result = mil("predict", "--model", run, "--bags", cohort / "bags", "--manifest", cohort / "manifest.csv",
                 "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_predict_scores_are_the_mean_of_the_fold_models(run, cohort, predicted):
    preds = pd.read_csv(predicted / "predictions.csv", dtype={"patient_id": str})
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(preds.columns) == ["slide_id", "patient_id", "fold", "task", "label", "score", "event"]
    assert len(preds) == 3 * len(manifest) and preds["fold"].isna().all()
    _, models = fold_models(run)
    assert len(models) == 3
    er = preds[preds["task"] == "er"].set_index("slide_id")
    truth = manifest.set_index("slide_id")
    assert (er["label"] == (truth.loc[er.index, "er"] == "positive")).all()  # labels from the manifest
    pr = preds[preds["task"] == "pr"]
    assert pr["label"].isna().sum() == 12 and pr["score"].notna().all()
    for slide in ("P00-S0", "P07-S1", "P19-S0"):
        with h5py.File(cohort / "bags" / f"{slide}.h5") as f:
            x = torch.from_numpy(f[f"features/{ENCODER}"][()].astype(np.float32))
            coords = f["coords"][()]
        with torch.no_grad():
            outs = [m(x) for m in models]
        expected = {"er": np.mean([float(torch.sigmoid(o.logits["er"])[0]) for o in outs]),
                    "pr": np.mean([float(torch.sigmoid(o.logits["pr"])[0]) for o in outs]),
                    "survival": np.mean([float(risk_from_hazards(o.logits["survival"])) for o in outs])}
        got = preds[preds["slide_id"] == slide].set_index("task")["score"]
        for task, value in expected.items():
            assert got[task] == pytest.approx(value, rel=1e-5, abs=1e-6), (slide, task)
        with h5py.File(predicted / "attention" / f"{slide}.h5") as f:
            assert (f["coords"][()] == coords).all()
            assert f.attrs["features"] == ENCODER and f.attrs["model"] == "abmil" and f.attrs["n_folds"] == 3
            for task in ("er", "pr", "survival"):
                a = f[f"attention/{task}"]
                assert a.dtype == np.float32 and a.shape == (len(coords),)
                by_hand = np.mean([o.attention[task].numpy() for o in outs], axis=0)
                np.testing.assert_allclose(a[()], by_hand, rtol=1e-5, atol=1e-7)
                assert a[()].sum() == pytest.approx(1.0, abs=1e-5)  # mean of softmax weights
    assert sorted(p.stem for p in (predicted / "attention").glob("*.h5")) == sorted(manifest["slide_id"])


@pytest.mark.slow
def test_predict_without_manifest_skips_bad_bags(run, cohort, tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    for slide in ("P00-S0", "P01-S1", "P02-S0"):
        shutil.copy(cohort / "bags" / f"{slide}.h5", bags)
    rng = np.random.default_rng(0)
    write_bag(bags / "narrow.h5", rng.normal(size=(9, DIM // 2)))               # wrong dimension
    write_bag(bags / "other.h5", rng.normal(size=(9, DIM)), encoder="other-enc")  # another encoder
    write_bag(bags / "reweighted.h5", rng.normal(size=(9, DIM)), weights_sha256="1" * 64)  # other weights
    result = mil("predict", "--model", run, "--bags", bags, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "narrow.h5: features 'toy-enc' have dimension 8, the model expects 16" in text
    assert "other.h5: no feature set 'toy-enc'" in text
    assert "reweighted.h5: features 'toy-enc' come from encoder weights 111111111111…" in text
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(preds["slide_id"].unique()) == ["P00-S0", "P01-S1", "P02-S0"]
    assert preds["label"].isna().all() and preds["fold"].isna().all()
    assert sorted(p.name for p in (tmp_path / "out" / "attention").iterdir()) == ["P00-S0.h5", "P01-S1.h5",
                                                                                   "P02-S0.h5"]


@pytest.mark.slow
def test_predict_refuses_an_incomplete_run(run, cohort, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "fold_1" / "model.safetensors").unlink()
    result = mil("predict", "--model", broken, "--bags", cohort / "bags", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "fold_1/model.safetensors: missing" in result.output
    result = mil("predict", "--model", tmp_path, "--bags", cohort / "bags", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no config.json" in result.output


# ---------------------------------------------------------------- evaluate

@pytest.mark.slow
def test_evaluate_reproduces_training_metrics(run, cohort, tmp_path):
    # the manifest's labels are used, not the (here corrupted) labels in the predictions
    preds = pd.read_csv(run / "predictions.csv")
    preds["label"] = 1 - preds["label"].where(preds["task"] != "survival", 0)
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    result = mil("evaluate", "--predictions", tmp_path / "predictions.csv", "--manifest", cohort / "manifest.csv",
                 "--target", "er,pr", "--survival", "os_time,os_event", "--bootstrap", "200", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    trained = json.loads((run / "metrics.json").read_text())["tasks"]
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["tasks"]
    for task in ("er", "pr", "survival"):
        assert evaluated[task]["metrics"] == trained[task]["metrics"], task
    for name in ("roc_er.png", "roc_pr.png", "km_survival.png"):
        assert (tmp_path / "ev" / name).is_file()
    assert "auc" in result.stdout


@pytest.mark.slow
def test_evaluate_predict_output(predicted, cohort, tmp_path):
    result = mil("evaluate", "--predictions", predicted / "predictions.csv", "--manifest", cohort / "manifest.csv",
                 "--target", "er", "--bootstrap", "100", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    auc = json.loads((tmp_path / "metrics.json").read_text())["tasks"]["er"]["metrics"]["auc"]
    assert len(auc["folds"]) == 1 and auc["folds"][0] == auc["pooled"]
    assert auc["pooled"] > 0.9  # the fold models saw most of these slides in training
    # a survival task needs its columns named
    result = mil("evaluate", "--predictions", predicted / "predictions.csv", "--manifest", cohort / "manifest.csv",
                 "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--survival TIME_COL,EVENT_COL" in result.output
