"""``mil train``'s options, through the command line: ``--overwrite``, ``--clinical`` (STAMP's two
tables), ``--survival-loss cox`` (and ``mil predict`` on a Cox run), ``--max-instances``,
``--in-memory`` and ``--features``.

The toy cohort (``tests.factories.write_cohort``) hides a share ``z`` of shifted instances per
patient: ER is ``z > 0.35`` and the hazard is ``exp(10 z)``, so the true risk orders the
patients with a c-index of about 0.83. The run folder is read from disk (config.json as JSON).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import mil.data
import mil.train
from mil.metrics import c_index
from mil.models import Head, create_model
from tests.factories import DIM, ENCODER, mil_cli, read_json, write_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--folds", "3", "--epochs", "6", "--patience", "4", "--hidden", "16", "--batch-size", "4", "--lr", "1e-2",
        "--bootstrap", "50", "--seed", "0"]



def train(manifest: Path, bags: Path, out: Path, *extra: object):
    return mil_cli("train", "--manifest", manifest, "--bags", bags, "--out", out, *FAST, *extra)



def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """24 patients with two slides each (12-30 instances per bag)."""
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, n_patients=24, slides_per_patient=2, n_instances=(12, 30))
    return root


# ---------------------------------------------------------------- --overwrite

def test_overwrite_is_needed_to_replace_a_complete_run_and_replaces_all_of_it(cohort, tmp_path):
    out = tmp_path / "run"
    assert train(cohort / "manifest.csv", cohort / "bags", out, "--target", "er").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = {name: (out / name).read_bytes() for name in files(out)}
    assert {"fold_2/model.safetensors", "roc_er.png"} <= set(before)

    refused = train(cohort / "manifest.csv", cohort / "bags", out, "--target", "pr", "--folds", "2")
    assert refused.exit_code == 2
    (line,) = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert line == f"error: {out} already holds a complete run; choose another --out or pass --overwrite"
    assert {name: (out / name).read_bytes() for name in files(out)} == before      # nothing touched

    replaced = train(cohort / "manifest.csv", cohort / "bags", out, "--target", "pr", "--folds", "2", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    config = read_json(out / "config.json")
    assert config["train"]["targets"] == ["pr"] and [f["fold"] for f in config["folds"]] == [0, 1]
    assert set(read_json(out / "metrics.json")["tasks"]) == {"pr"}
    # the new run's files only (the old third fold and ER plot are gone), and the user's file kept
    assert files(out) == ["config.json", "fold_0/model.safetensors", "fold_1/model.safetensors", "metrics.json",
                          "notes.txt", "ood.safetensors", "predictions.csv", "reliability_pr.png", "roc_pr.png"]
    assert set(pd.read_csv(out / "predictions.csv")["task"]) == {"pr"}


# ---------------------------------------------------------------- --clinical (STAMP)

def test_stamp_tables_train_the_same_run_as_the_one_table_manifest(cohort, tmp_path):
    """The same cohort as STAMP keeps it: a clinical table (one row per PATIENT, the labels) and a
    slide table (PATIENT, FILENAME with its .h5 extension). Same seed, same slides in the same
    order: the same folds, models and metrics as the one-table manifest."""
    table = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    clini = table.groupby("patient_id", sort=False)[["er", "os_time", "os_event"]].first().reset_index()
    clini = clini.rename(columns={"patient_id": "PATIENT"})
    clini.iloc[::-1].to_csv(tmp_path / "clini.csv", index=False)          # row order of the clinical table: any
    pd.DataFrame({"PATIENT": table["patient_id"], "FILENAME": table["slide_id"] + ".h5"}).to_csv(
        tmp_path / "slide.csv", index=False)
    tasks = ["--target", "er", "--survival", "os_time,os_event"]

    one = train(cohort / "manifest.csv", cohort / "bags", tmp_path / "one", *tasks)
    stamp = train(tmp_path / "slide.csv", cohort / "bags", tmp_path / "stamp", *tasks, "--clinical",
                  tmp_path / "clini.csv")
    assert one.exit_code == 0, one.output
    assert stamp.exit_code == 0, stamp.output
    assert (tmp_path / "stamp" / "metrics.json").read_text() == (tmp_path / "one" / "metrics.json").read_text()
    assert (tmp_path / "stamp" / "predictions.csv").read_text() == (tmp_path / "one" / "predictions.csv").read_text()
    assert read_json(tmp_path / "stamp" / "config.json")["manifest"]["path"] == str((tmp_path / "slide.csv").resolve())

    # a patient of the slide table missing from the clinical table: unknown labels, not an error
    clini[clini["PATIENT"] != "P03"].to_csv(tmp_path / "clini_short.csv", index=False)
    partial = train(tmp_path / "slide.csv", cohort / "bags", tmp_path / "partial", *tasks, "--clinical",
                    tmp_path / "clini_short.csv")
    assert partial.exit_code == 0, partial.output
    assert read_json(tmp_path / "partial" / "metrics.json")["tasks"]["er"]["n"] == 46   # 48 slides, 2 unknown


# ---------------------------------------------------------------- --survival-loss cox

@pytest.fixture(scope="module")
def survival_cohort(tmp_path_factory) -> Path:
    """60 patients, one slide each: enough events for a survival model to learn on this toy."""
    root = tmp_path_factory.mktemp("survival")
    write_cohort(root, n_patients=60, n_instances=(20, 40), seed=1)
    return root


@pytest.fixture(scope="module")
def cox_run(survival_cohort, tmp_path_factory) -> Path:
    """No early stop: the validation loss of ~13 patients is too noisy to pick an epoch on (as in
    test_train.py's known-hazard test, which this run's settings repeat)."""
    out = tmp_path_factory.mktemp("cox") / "run"
    result = train(survival_cohort / "manifest.csv", survival_cohort / "bags", out, "--survival", "os_time,os_event",
                   "--survival-loss", "cox", "--epochs", "15", "--patience", "15")
    assert result.exit_code == 0, result.output
    return out


def fold_models(run: Path) -> list:
    """The run's fold models rebuilt by hand from config.json and the safetensors files."""
    config = read_json(run / "config.json")
    heads = [Head(h["name"], h["n_outputs"]) for h in config["heads"]]
    models = {}
    for fold in config["folds"]:
        model = create_model(config["model"]["name"], config["in_dim"], heads, hidden=config["model"]["hidden"])
        model.load_state_dict(load_file(run / f"fold_{fold['fold']}" / "model.safetensors"))
        models[fold["fold"]] = model.eval()
    return models


def bag_features(bags: Path, slide: str) -> torch.Tensor:
    with h5py.File(bags / f"{slide}.h5") as f:
        return torch.from_numpy(f[f"features/{ENCODER}"][()].astype(np.float32))


def test_a_cox_run_records_cox_and_scores_the_log_hazard(cox_run, survival_cohort):
    config = read_json(cox_run / "config.json")
    assert config["train"]["survival_loss"] == "cox" and config["survival"]["loss"] == "cox"
    survival = next(h for h in config["heads"] if h["name"] == "survival")
    assert survival["n_outputs"] == 1 and survival["output"] == "risk = Cox log-hazard"
    assert config["survival"]["bin_cuts"] == {}                                   # no time bins with Cox

    # out-of-fold scores are each slide's own fold model's single output, by hand
    preds = pd.read_csv(cox_run / "predictions.csv")
    models = fold_models(cox_run)
    surv = preds[preds["task"] == "survival"]
    for _, row in surv.iloc[::9].iterrows():
        with torch.no_grad():
            logit = models[int(row["fold"])](bag_features(survival_cohort / "bags", row["slide_id"])).logits["survival"]
        assert logit.shape == (1,)
        assert row["score"] == pytest.approx(float(logit[0]), rel=1e-5, abs=1e-6)
    # they rank held-out patients by their hazard (the true hazard: ~0.83; chance 0.5), and the
    # run's metric is the c-index of these scores
    pooled = c_index(surv["label"].to_numpy(), surv["score"].to_numpy(), surv["event"].to_numpy())
    assert pooled >= 0.65
    assert read_json(cox_run / "metrics.json")["tasks"]["survival"]["metrics"]["c_index"]["pooled"] == pytest.approx(
        pooled)


def test_predict_on_a_cox_run_gives_the_mean_log_hazard_and_orders_the_patients(cox_run, survival_cohort, tmp_path):
    root = survival_cohort
    result = mil_cli("predict", "--model", cox_run, "--bags", root / "bags", "--manifest", root / "manifest.csv",
                     "--out", tmp_path)
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "predictions.csv")
    surv = preds[preds["task"] == "survival"].set_index("slide_id")
    models = list(fold_models(cox_run).values())
    for slide in ("P00-S0", "P29-S0", "P47-S0"):
        with torch.no_grad():
            expected = np.mean([float(m(bag_features(root / "bags", slide)).logits["survival"][0]) for m in models])
        assert surv.at[slide, "score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # higher hazard, higher risk: ER-positive patients (z > 0.35, hazard exp(10 z)) rank above ER-negative ones
    manifest = pd.read_csv(root / "manifest.csv").set_index("slide_id")
    er = manifest.loc[surv.index, "er"] == "positive"
    assert surv.loc[er[er].index, "score"].mean() > surv.loc[er[~er].index, "score"].mean()
    assert c_index(surv["label"].to_numpy(), surv["score"].to_numpy(), surv["event"].to_numpy()) >= 0.7


# ---------------------------------------------------------------- --max-instances, --in-memory

@pytest.fixture
def bag_sizes_seen(monkeypatch):
    """(training?, instances) of every bag the fold models are given."""
    seen: list[tuple[bool, int]] = []
    real = mil.train.create_model

    def spying(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen.append((m.training, int(inputs[0].shape[0]))))
        return model

    monkeypatch.setattr(mil.train, "create_model", spying)
    return seen


def test_max_instances_subsamples_large_bags_in_training_only(cohort, tmp_path, bag_sizes_seen):
    sizes = set()
    for bag in (cohort / "bags").glob("*.h5"):
        with h5py.File(bag) as f:
            sizes.add(len(f["coords"]))
    assert min(sizes) < 16 < max(sizes)
    result = train(cohort / "manifest.csv", cohort / "bags", tmp_path / "run", "--target", "er",
                   "--max-instances", "16")
    assert result.exit_code == 0, result.output
    trained = [n for training, n in bag_sizes_seen if training]
    evaluated = {n for training, n in bag_sizes_seen if not training}
    assert max(trained) == 16 and min(trained) < 16                   # large bags cut to 16, small ones whole
    assert evaluated == sizes                                          # validation and test: every bag whole
    assert read_json(tmp_path / "run" / "config.json")["train"]["max_instances"] == 16


def test_in_memory_reads_each_bag_once_and_changes_nothing_else(cohort, tmp_path, monkeypatch):
    reads: list[str] = []
    real = mil.data._read
    monkeypatch.setattr(mil.data, "_read", lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k))
    args = ("--target", "er", "--max-instances", "20")
    assert train(cohort / "manifest.csv", cohort / "bags", tmp_path / "disk", *args).exit_code == 0
    from_disk = len(reads)
    reads.clear()
    result = train(cohort / "manifest.csv", cohort / "bags", tmp_path / "ram", *args, "--in-memory")
    assert result.exit_code == 0, result.output
    # each of the 48 bags twice: once when the manifest is checked (NaN features are reported with the
    # manifest's other problems), once into memory; from disk, every epoch reads them again
    assert sorted(reads) == sorted(2 * [p.name for p in (cohort / "bags").glob("*.h5")])
    assert from_disk > 5 * len(reads)
    assert (tmp_path / "ram" / "metrics.json").read_text() == (tmp_path / "disk" / "metrics.json").read_text()
    assert (tmp_path / "ram" / "predictions.csv").read_text() == (tmp_path / "disk" / "predictions.csv").read_text()


# ---------------------------------------------------------------- --features

@pytest.fixture(scope="module")
def two_feature_sets(tmp_path_factory) -> Path:
    """Bags holding two feature sets: the cohort's 16-d toy-enc and an 8-d other-enc that copies
    the ER signal (dimension 0)."""
    root = tmp_path_factory.mktemp("two")
    write_cohort(root, n_patients=16)
    for bag in (root / "bags").glob("*.h5"):
        with h5py.File(bag, "a") as f:
            x = f[f"features/{ENCODER}"][()]
            ds = f.create_dataset("features/other-enc", data=x[:, :8])
            ds.attrs.update(encoder="other-enc", weights_sha256="2" * 64, dim=8, input_size=224,
                            mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    return root


def test_features_picks_one_of_several_feature_sets(two_feature_sets, tmp_path):
    root = two_feature_sets
    result = train(root / "manifest.csv", root / "bags", tmp_path / "run", "--target", "er", "--features", "other-enc")
    assert result.exit_code == 0, result.output
    config = read_json(tmp_path / "run" / "config.json")
    assert config["features"] == "other-enc" and config["in_dim"] == 8 != DIM
    assert config["bag_settings"]["features"]["encoder"] == "other-enc"
    assert config["bag_settings"]["features"]["weights_sha256"] == "2" * 64
    # predict takes the run's feature set from the same bags by default
    predicted = mil_cli("predict", "--model", tmp_path / "run", "--bags", root / "bags", "--out", tmp_path / "pred")
    assert predicted.exit_code == 0, predicted.output
    with h5py.File(tmp_path / "pred" / "attention" / "P00-S0.h5") as f:
        assert f.attrs["features"] == "other-enc"


@pytest.mark.parametrize("extra, message", [
    ([], "holds several feature sets (other-enc, toy-enc); choose one with --features"),
    (["--features", "uni"], "no feature set 'uni' (has: other-enc, toy-enc); run `pathology embed` with that encoder"),
])
def test_features_must_name_one_the_bags_hold(two_feature_sets, tmp_path, extra, message):
    root = two_feature_sets
    result = train(root / "manifest.csv", root / "bags", tmp_path / "run", "--target", "er", *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
