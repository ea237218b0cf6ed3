"""Task kinds beyond binary: multi-class (HER2 0/1+/2+/3+), regression (Ki-67 %), mixed-kind
multi-task training with unknown labels, and each kind through predict and evaluate.

The cohort (``tests.factories.write_task_cohort``) plants each signal with a known strength:
a HER2 class shifts 40% of a bag's instances along its own feature direction, Ki-67 is the share
of instances shifted along another, ER moves every instance along a third. Expected values
(confusion counts, MAE, class shares, the training folds' mean and sd) are recomputed by hand
from the run's own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from mil.labels import LabelSpec, infer
from mil.manifest import ManifestError, load_manifest
from mil.models import Head, create_model
from mil.predict import load_run, predict_bag
from pathology.errors import InputError
from tests.factories import DIM, ENCODER, HER2_CLASSES, read_json, write_task_cohort
from tests.factories import mil_cli as mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--folds", "3", "--epochs", "12", "--patience", "4", "--hidden", "32", "--lr", "3e-3", "--bootstrap", "50"]



def train(root: Path, out: Path, *extra: object):
    return mil("train", "--manifest", root / "manifest.csv", "--bags", root / "bags", "--out", out, *FAST, *extra)



@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    write_task_cohort(root, n_patients=48)
    return root


# ---------------------------------------------------------------- inference of the kind


@pytest.mark.parametrize("cells, kind, classes", [
    (["1", "0", ""], "binary", ()),
    (["Positive", "neg", "NA"], "binary", ()),
    (["0", "1+", "2+", "3+", "2+"], "multiclass", ("0", "1+", "2+", "3+")),
    (["3", "1", "2", "2.0"], "multiclass", ("1", "2", "3")),                      # grade; 2.0 is 2
    (["LumA", "LumB", "Basal", "Her2", "Normal", "luma"], "multiclass", ("Basal", "Her2", "LumA", "LumB", "Normal")),
    (["5", "12.5", "30", "40", "65"], "regression", ()),                          # Ki-67 %
    ([str(v) for v in range(0, 60, 5)], "regression", ()),                        # 12 whole numbers: too many classes
    (["ductal", "lobular", "ductal"], "binary", ("ductal", "lobular")),           # two classes: the later is positive
    (["1", "2"], "binary", ("1", "2")),
    (["positive", "negative", "maybe"], "binary", ()),                            # yes/no with a typo
    (["1", "maybe"], "binary", ()),
    (["10", "2", "1+"], "multiclass", ("1+", "2", "10")),                         # natural order: 2 before 10
])
def test_the_kind_is_inferred_from_the_column(cells, kind, classes):
    assert infer(cells) == LabelSpec(kind, classes)


def test_many_words_are_not_classes():
    message = infer([f"w{i}" for i in range(12)])
    assert isinstance(message, str) and "12 distinct values" in message and "--kind" in message


def test_kinds_in_the_manifest_inferred_or_given(cohort, tmp_path):
    c = load_manifest(cohort / "manifest.csv", targets=["er", "her2", "ki67"], survival=("os_time", "os_event"))
    assert {t.name: (t.kind, t.classes) for t in c.tasks} == {
        "er": ("binary", ()), "her2": ("multiclass", HER2_CLASSES), "ki67": ("regression", ()),
        "survival": ("survival", ())}
    table = pd.read_csv(cohort / "manifest.csv", dtype=str)
    np.testing.assert_array_equal(c.labels("her2"), [HER2_CLASSES.index(v) for v in table["her2"]])
    np.testing.assert_allclose(c.labels("ki67"), table["ki67"].astype(float))
    # --kind: ER read as two classes, Ki-67 refused as a class column it is not
    given = load_manifest(cohort / "manifest.csv", targets=["er"], kinds={"er": "multiclass"})
    assert given.tasks[0].kind == "multiclass" and given.tasks[0].classes == ("0", "1")
    with pytest.raises(InputError, match="--kind her2=ordinal: the kind is one of binary, multiclass, regression"):
        load_manifest(cohort / "manifest.csv", targets=["her2"], kinds={"her2": "ordinal"})
    with pytest.raises(InputError, match="survival task takes two columns"):
        load_manifest(cohort / "manifest.csv", targets=["her2"], kinds={"her2": "survival"})
    with pytest.raises(InputError, match="'pr' is not a target"):
        load_manifest(cohort / "manifest.csv", targets=["her2"], kinds={"pr": "binary"})
    # every bad cell is reported with its row: words in a number column, a binary column of three values
    bad = table.copy()
    bad.loc[3, "ki67"], bad.loc[5, "her2"] = "high", "4+"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "bad.csv", targets=["ki67", "her2"], kinds={"ki67": "regression", "her2": "binary"})
    assert info.value.problems == [
        "bad.csv row 5, column 'ki67': unparseable value 'high' (a number; empty = unknown)",
        f"bad.csv row 2, column 'her2': a binary task needs two classes, the column has 5: "
        f"{', '.join(map(repr, (*HER2_CLASSES[:3], '3+', '4+')))}",
    ]


# ---------------------------------------------------------------- multi-class


@pytest.fixture(scope="module")
def her2_run(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("her2") / "run"
    result = train(cohort, out, "--target", "her2,ki67", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def test_a_multiclass_head_finds_the_planted_classes(her2_run, cohort):
    metrics = read_json(her2_run / "metrics.json")["tasks"]["her2"]
    assert metrics["kind"] == "multiclass" and metrics["classes"] == list(HER2_CLASSES)
    assert metrics["n"] == 48 and metrics["n_per_class"] == [12, 12, 12, 12]
    assert metrics["metrics"]["auc"]["pooled"] >= 0.9, metrics["metrics"]["auc"]       # macro one-vs-rest

    preds = pd.read_csv(her2_run / "predictions.csv")
    her2 = preds[preds["task"] == "her2"]
    probs = np.array([[json.loads(p)[c] for c in HER2_CLASSES] for p in her2["probabilities"]])
    assert list(json.loads(her2["probabilities"].iloc[0])) == list(HER2_CLASSES)      # class order kept
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(her2["score"], probs.argmax(1))                       # the call's index
    label = her2["label"].to_numpy(int)
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (label, probs.argmax(1)), 1)                                   # by hand
    assert metrics["confusion"] == confusion.tolist()
    recall = [(probs.argmax(1)[label == k] == k).mean() for k in range(4)]
    assert metrics["metrics"]["balanced_accuracy"]["pooled"] == pytest.approx(np.mean(recall))
    assert (her2_run / "confusion_her2.png").is_file() and not (her2_run / "roc_her2.png").exists()
    # stratified folds: every class in every test fold (12 per class over 3 folds: 4 each)
    per_fold = her2.groupby("fold")["label"].value_counts().unstack()
    assert (per_fold == 4).all().all()


def test_a_regression_head_reads_the_planted_share(her2_run, cohort):
    metrics = read_json(her2_run / "metrics.json")["tasks"]["ki67"]
    assert metrics["kind"] == "regression" and set(metrics["metrics"]) == {"pearson", "spearman", "mae"}
    assert metrics["metrics"]["spearman"]["pooled"] >= 0.8, metrics["metrics"]
    preds = pd.read_csv(her2_run / "predictions.csv")
    ki67 = preds[preds["task"] == "ki67"]
    assert metrics["metrics"]["mae"]["pooled"] == pytest.approx((ki67["score"] - ki67["label"]).abs().mean())
    assert (her2_run / "scatter_ki67.png").is_file()
    # the head predicts the standardized value; config.json keeps each fold's training mean and sd
    config = read_json(her2_run / "config.json")
    manifest = pd.read_csv(cohort / "manifest.csv").set_index("slide_id")
    for fold in config["folds"]:
        training = manifest.drop(index=fold["test"])["ki67"]
        assert fold["targets"]["ki67"] == pytest.approx([training.mean(), training.std(ddof=0)])
    heads = {h["name"]: h for h in config["heads"]}
    assert heads["her2"]["classes"] == list(HER2_CLASSES) and heads["her2"]["n_outputs"] == 4
    assert heads["ki67"]["kind"] == "regression" and heads["ki67"]["n_outputs"] == 1


def test_predict_and_evaluate_handle_every_kind(her2_run, cohort, tmp_path):
    result = mil("predict", "--model", her2_run, "--bags", cohort / "bags", "--manifest", cohort / "manifest.csv",
                 "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    run = load_run(her2_run)
    with h5py.File(cohort / "bags" / "P05-S0.h5") as f:
        x = f[f"features/{ENCODER}"][()].astype(np.float32)
    scores, _ = predict_bag(run, x)
    # a regression score is the mean over folds of (output * sd + mean), each fold with its own scaling
    by_hand = []
    for model, fold in zip(run.models, run.config.folds):
        with torch.no_grad():
            z = float(model(torch.from_numpy(x)).logits["ki67"][0])
        mean, sd = fold.targets["ki67"]
        by_hand.append(z * sd + mean)
    row = preds[(preds["slide_id"] == "P05-S0") & (preds["task"] == "ki67")].iloc[0]
    assert row["score"] == pytest.approx(np.mean(by_hand), rel=1e-5) == pytest.approx(scores["ki67"], rel=1e-5)
    her2 = preds[(preds["slide_id"] == "P05-S0") & (preds["task"] == "her2")].iloc[0]
    assert [json.loads(her2["probabilities"])[c] for c in HER2_CLASSES] == pytest.approx(scores["her2"], abs=1e-7)
    # one attention map per class beside the task's, in the bag's row order
    with h5py.File(tmp_path / "pred" / "attention" / "P05-S0.h5") as f:
        maps = sorted(f["attention"])
        assert maps == sorted(["her2", "ki67", *(f"her2={c}" for c in HER2_CLASSES)])
        assert all(len(f["attention"][m]) == len(x) for m in maps)
        assert f["attention"]["her2=3+"].attrs["kind"] == "class"
    # evaluate infers the kinds from the manifest and takes the classes from the probabilities
    evaluated = mil("evaluate", "--predictions", tmp_path / "pred" / "predictions.csv", "--manifest",
                    cohort / "manifest.csv", "--out", tmp_path / "eval", "--bootstrap", "20")
    assert evaluated.exit_code == 0, evaluated.output
    tasks = read_json(tmp_path / "eval" / "metrics.json")["tasks"]
    assert tasks["her2"]["kind"] == "multiclass" and tasks["ki67"]["kind"] == "regression"
    her2_rows = preds[preds["task"] == "her2"]
    accuracy = (her2_rows["score"] == her2_rows["label"]).mean()
    assert tasks["her2"]["metrics"]["accuracy"]["pooled"] == pytest.approx(accuracy)
    assert {"confusion_her2.png", "scatter_ki67.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}


def test_abmil_class_maps_are_each_instances_share_of_the_class_output():
    """A class map holds a_i W_k h_i: over the instances it sums to output k less its bias."""
    torch.manual_seed(0)
    model = create_model("abmil", DIM, [Head("her2", 4)], hidden=16).eval()
    x = torch.randn(30, DIM)
    with torch.no_grad():
        out = model(x)
    maps = out.class_attention["her2"]
    assert maps.shape == (30, 4)
    torch.testing.assert_close(maps.sum(0), out.logits["her2"] - model.classifiers[0].bias)


# ---------------------------------------------------------------- every kind at once, with unknown labels


def test_mixed_kinds_train_together_with_unknown_labels(tmp_path):
    root = tmp_path / "c"
    write_task_cohort(root, n_patients=36, seed=3, missing={"er": 0.25, "her2": 0.25, "ki67": 0.25, "os_time": 0.0})
    result = train(root, tmp_path / "run", "--target", "er,her2,ki67", "--survival", "os_time,os_event",
                   "--epochs", "4", "--arch", "gated-abmil")
    assert result.exit_code == 0, result.output
    metrics = read_json(tmp_path / "run" / "metrics.json")["tasks"]
    assert {t: m["kind"] for t, m in metrics.items()} == {"er": "binary", "her2": "multiclass",
                                                         "ki67": "regression", "survival": "survival"}
    assert {t: m["n"] for t, m in metrics.items()} == {"er": 27, "her2": 27, "ki67": 27, "survival": 36}
    assert set(metrics["er"]["metrics"]) == {"auc", "balanced_accuracy", "f1", "accuracy"}
    assert set(metrics["ki67"]["metrics"]) == {"pearson", "spearman", "mae"}
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    for task in ("er", "her2", "ki67"):          # an unknown label keeps its row, with an empty label
        rows = preds[preds["task"] == task]
        assert len(rows) == 36 and rows["label"].isna().sum() == 9 and rows["score"].notna().all()
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"roc_er.png", "confusion_her2.png", "scatter_ki67.png", "km_survival.png"} <= files


def test_a_survival_head_starts_at_the_kaplan_meier_estimate(tmp_path, monkeypatch):
    """The NLL head's bias starts at the logit of each bin's baseline hazard; with censoring at
    the end of its bin, prod(1 - h_k) is the Kaplan-Meier curve at the bin ends (lifelines)."""
    from lifelines import KaplanMeierFitter

    import mil.train
    from mil.losses import survival_bins
    from mil.tasks import baseline_hazard_logits

    rng = np.random.default_rng(0)
    times = np.round(rng.exponential(10, 80), 3) + 0.01
    events = (rng.random(80) > 0.3).astype(float)
    edges = survival_bins(times, events, 4)
    # censored cases move to the end of their bin (after its events), as the discrete model counts them
    bins = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, 3)
    ends = np.r_[edges[1:-1], times.max() + 1]
    times = np.where(events == 1, times, ends[bins] - 1e-6)
    hazard = 1 / (1 + np.exp(-baseline_hazard_logits(times, events, edges)))
    km = KaplanMeierFitter().fit(times, events)
    expected = km.survival_function_at_times(ends[:3] - 1e-9).to_numpy()
    np.testing.assert_allclose(np.cumprod(1 - hazard)[:3], expected, rtol=1e-6)

    # the fold models start there: their survival head's bias at the first forward pass
    root = tmp_path / "c"
    write_task_cohort(root, n_patients=30, seed=1)
    starts = []
    real = mil.train.create_model

    def spying(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, _: starts.append(m.output_bias(0).detach().clone())
                                        if len(starts) < 1 else None)
        return model

    monkeypatch.setattr(mil.train, "create_model", spying)
    result = train(root, tmp_path / "run", "--survival", "os_time,os_event", "--epochs", "1", "--folds", "2")
    assert result.exit_code == 0, result.output
    cohort = load_manifest(root / "manifest.csv", survival=("os_time", "os_event"))
    from mil.splits import make_folds
    first = make_folds(cohort, 2, seed=0, inner_folds=3)[0].inner[0][0]  # the first model: fold 0's inner split 0
    y = cohort.labels("survival")[first]
    start = baseline_hazard_logits(y[:, 0], y[:, 1], survival_bins(y[:, 0], y[:, 1], 4))
    np.testing.assert_allclose(starts[0].numpy(), start, rtol=1e-5)
    assert np.all(np.diff(np.cumprod(1 - 1 / (1 + np.exp(-start)))) <= 0)  # a survival curve


def test_label_values_are_parsed_the_way_the_run_was_trained(her2_run, cohort, tmp_path):
    """mil predict reads a manifest's labels with the run's classes: a HER2 of another class
    than the run knows is a problem with its row, before any bag is read."""
    table = pd.read_csv(cohort / "manifest.csv", dtype=str)
    table.loc[2, "her2"] = "4+"
    table.to_csv(tmp_path / "m.csv", index=False)
    result = mil("predict", "--model", her2_run, "--bags", cohort / "bags", "--manifest", tmp_path / "m.csv",
                 "--out", tmp_path / "p")
    assert result.exit_code == 2
    assert "m.csv row 4, column 'her2': unparseable label '4+' (one of '0', '1+', '2+', '3+'; empty = unknown)" \
        in " ".join(result.output.split())
    assert not (tmp_path / "p" / "predictions.csv").exists()
