"""What `mil train` records so a model's calls can be judged (issue 19): provenance for the
model card, calibration (reliability, ECE, temperature scaling) and out-of-distribution
references with a threshold from the training folds."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_model
from typer.testing import CliRunner

from mil.assess import COLUMNS
from mil.calibration import T_MIN, fit_temperature, reliability, uncalibrated
from mil.cli import app as mil_app
from mil.data import read_features
from mil.manifest import load_manifest
from mil.models import Head, create_model
from mil.ood import Reference, held_out_distances, robust_threshold, slide_distances
from mil.predict import load_run, predict_bag
from mil.provenance import SYNTHETIC_WARNING, record_provenance
from mil.runconfig import RunConfig
from mil.train import TrainConfig, train_cross_validation
from pathology.errors import InputError
from tests.factories import DIM, write_bag, write_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- calibration


def test_reliability_curve_and_ece_by_hand():
    label = [0, 0, 1, 1, 1, np.nan]
    score = [0.11, 0.15, 0.81, 0.85, 0.35, 0.5]               # the NaN label's row is left out
    r = reliability(np.array(label), np.array(score))
    # bins [0.1, 0.2): mean 0.13, 0 positive; [0.3, 0.4): 0.35, all positive; [0.8, 0.9): 0.83, all positive
    assert [(b["n"], round(b["mean_score"], 6), b["positive_rate"]) for b in r["bins"]] == \
        [(2, 0.13, 0.0), (1, 0.35, 1.0), (2, 0.83, 1.0)]
    assert r["n"] == 5
    assert r["ece"] == pytest.approx((2 * 0.13 + 1 * 0.65 + 2 * 0.17) / 5)


def test_temperature_recovers_the_generators_temperature():
    """Labels drawn from sigmoid(z / 2.5): the fitted temperature is 2.5 within sampling error
    (n = 4000; the prior's pull is negligible at this size)."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z / 2.5))).astype(float)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.08)
    assert fit_temperature(z, np.full_like(z, np.nan)) == 1.0         # nothing to fit on


def test_a_separable_validation_split_does_not_make_the_model_certain():
    """Four separable slides: the log loss alone runs T to its lower bound; the prior stops it."""
    t = fit_temperature(np.array([-3.0, -2.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert T_MIN * 4 < t < 1.0


# ---------------------------------------------------------------- out of distribution


def test_robust_threshold_by_hand_and_deaf_to_one_odd_slide():
    """log distances 0, 0, 0, 1, -1, 10: median 0, MAD 0.5, spread 1.4826 x 0.5; at alpha 0.01 the
    threshold is exp(2.3263 x 0.7413) = 5.61 (z from the normal table). The odd slide (log 10) is
    the one false flag, and making it odder moves nothing."""
    logs = np.array([0.0, 0.0, 0.0, 1.0, -1.0, 10.0])
    t = robust_threshold(np.exp(logs), 0.01, "embedding")
    assert t.center == 0.0 and t.spread == pytest.approx(0.7413)
    assert t.threshold == pytest.approx(np.exp(2.3263 * 0.7413), rel=1e-4)
    assert t.false_flag_rate == pytest.approx(1 / 6) and t.n == 6
    assert robust_threshold(np.exp(np.r_[logs[:-1], 100.0]), 0.01, "embedding").threshold == t.threshold


def test_threshold_flags_few_like_slides_and_every_shifted_one():
    """Slide vectors from one correlated Gaussian (D = 12, 60 training slides, 5 folds): new draws
    from it are flagged at about the chosen rate, draws shifted by 3 sd are all flagged."""
    rng = np.random.default_rng(1)
    mix = rng.normal(0, 1, (12, 12))
    train = rng.normal(0, 1, (60, 12)) @ mix
    folds = np.array_split(rng.permutation(60), 5)
    t = robust_threshold(held_out_distances(train, folds), 0.05, "embedding")
    ref = Reference.fit(train)
    like = rng.normal(0, 1, (2000, 12)) @ mix
    flagged = np.mean(ref.distance(like) > t.threshold)
    assert flagged <= 0.1, flagged        # 0.05 chosen; the log-normal fit and 60 slides make it approximate
    shifted = like[:200] + 3 * train.std(0)
    assert np.all(ref.distance(shifted) > t.threshold)


# ---------------------------------------------------------------- mil train end to end


FAST = dict(model="abmil", targets=("er",), folds=3, epochs=8, patience=4, hidden=16, batch_size=4, n_bootstrap=50,
            lr=1e-2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy cohort beside a synth-cohort ``cohort.json``, trained with temperature scaling."""
    root = tmp_path_factory.mktemp("trust")
    manifest = write_cohort(root)
    (root / "cohort.json").write_text(json.dumps({"schema": "pathology-synth-cohort/1"}))
    cohort = load_manifest(manifest, targets=["er"], bags_dir=root / "bags")
    # temperatures are fitted on validation bags the fold model did not train on: no refit
    metrics = train_cross_validation(cohort, TrainConfig(**FAST, calibration="temperature", refit=False,
                                                         intended_use="testing only"), root / "run")
    return root, metrics


def test_temperature_scaling_is_refused_with_the_refit(tmp_path):
    with pytest.raises(InputError, match="--no-refit"):
        TrainConfig(**FAST, calibration="temperature")


def test_provenance_marks_a_synth_cohort_synthetic(trained):
    root, _ = trained
    p = RunConfig.read(root / "run" / "config.json").provenance
    assert p.synthetic and p.synthetic_source == str(root / "cohort.json") and p.warning == SYNTHETIC_WARNING
    assert (p.n_slides, p.n_patients, p.tasks["er"].slides, p.tasks["er"].patients) == (24, 24, 24, 24)
    assert p.cohort == root.name and p.intended_use == "testing only" and p.created


def test_calibration_is_reported_and_the_temperature_applied_at_prediction(trained):
    root, metrics = trained
    run_dir = root / "run"
    entry = metrics["calibration"]["tasks"]["er"]
    assert metrics["calibration"]["method"] == "temperature"
    assert 0 <= entry["ece"] <= 1 and 0 <= entry["ece_before_scaling"] <= 1
    assert sum(b["n"] for b in entry["bins"]) == entry["n"] == 24
    assert (run_dir / "reliability_er.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["calibration"]["tasks"]["er"]["ece"] == pytest.approx(entry["ece"])

    # the fold models as saved (uncalibrated), rebuilt by hand
    config = RunConfig.read(run_dir / "config.json")
    temperatures = [config.calibration.temperatures[f"er/fold_{k}"] for k in range(3)]
    assert all(t > 0 for t in temperatures) and len(set(temperatures)) == 3
    raw = []
    for k in range(3):
        model = create_model("abmil", DIM, [Head("er", 1)], hidden=16, dropout=0.25)
        load_model(model, str(run_dir / f"fold_{k}" / "model.safetensors"))
        raw.append(model.eval())
    # out-of-fold scores are the raw logit divided by the fold's temperature
    preds = pd.read_csv(run_dir / "predictions.csv")
    row = preds.iloc[0]
    x = torch.from_numpy(read_features(root / "bags" / f"{row['slide_id']}.h5").features)
    with torch.no_grad():
        logit = float(raw[int(row["fold"])](x).logits["er"])
    t = temperatures[int(row["fold"])]
    assert row["score"] == pytest.approx(1 / (1 + math.exp(-logit / t)), abs=1e-5)
    assert uncalibrated(np.array([row["score"]]), np.array([t]))[0] == pytest.approx(1 / (1 + math.exp(-logit)),
                                                                                        abs=1e-4)
    # and prediction applies the recorded temperatures (mean of the fold models' calibrated probabilities)
    scores, _ = predict_bag(load_run(run_dir), x)
    with torch.no_grad():
        by_hand = np.mean([torch.sigmoid(m(x).logits["er"] / t).item() for m, t in zip(raw, temperatures)])
    assert scores["er"] == pytest.approx(by_hand, abs=1e-6)


def test_ood_threshold_is_stated_and_separates_new_slides(trained, tmp_path):
    root, metrics = trained
    config = RunConfig.read(root / "run" / "config.json")
    t = config.ood.embedding
    assert len(t.held_out) == 24 and t.n == 24
    # the false-flag rate stated in metrics.json is the share of held-out training slides above the threshold
    assert metrics["ood"]["embedding"]["false_flag_rate"] == pytest.approx(np.mean(np.array(t.held_out) > t.threshold))
    assert metrics["ood"]["embedding"]["alpha"] == 0.01                      # the default
    # a new slide drawn as write_cohort draws them (a patient with z = 0.5) is not flagged; one whose
    # features are shifted by 2 (in sd units of the instances) in every dimension is
    rng = np.random.default_rng(123)
    x = rng.normal(0, 1, (25, DIM))
    x[:12, 0] += 3.0
    like = write_bag(tmp_path / "like.h5", x)
    far = write_bag(tmp_path / "far.h5", x + 2.0)
    (d_like,) = slide_distances(root / "run", config.ood, like, None)
    (d_far,) = slide_distances(root / "run", config.ood, far, None)
    assert not d_like.flagged and d_far.flagged, (d_like, d_far)


def test_mil_predict_writes_each_slides_reliability(trained, tmp_path):
    """`mil predict` judges each slide as `pathology run` does (mil.assess): trust.csv says the
    model is synthetic for every slide, and flags the slide unlike the training slides."""
    root, _ = trained
    rng = np.random.default_rng(123)
    x = rng.normal(0, 1, (25, DIM))
    x[:12, 0] += 3.0
    bags = tmp_path / "bags"
    write_bag(bags / "like.h5", x)
    write_bag(bags / "far.h5", x + 2.0)
    result = CliRunner().invoke(mil_app, ["predict", "-m", str(root / "run"), "--bags", str(bags),
                                          "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    trust = pd.read_csv(tmp_path / "out" / "trust.csv", keep_default_na=False).set_index("slide_id")
    assert list(trust.columns) == ["patient_id", *COLUMNS]
    assert trust.at["like", "reliable"] == "yes" and trust.at["far", "reliable"] == "no"
    assert float(trust.at["far", "ood_distance"]) > float(trust.at["far", "ood_threshold"]) \
        > float(trust.at["like", "ood_distance"])
    assert all(w.startswith(SYNTHETIC_WARNING) for w in trust["warning"])
    assert "out of distribution" in trust.at["far", "warning"] and "out of" not in trust.at["like", "warning"]

    # a .pt feature file (its feature set is named "pt"): no µm/px recorded, the same distance
    (tmp_path / "pt").mkdir()
    torch.save(torch.from_numpy(x + 2.0), tmp_path / "pt" / "far.pt")
    result = CliRunner().invoke(mil_app, ["predict", "-m", str(root / "run"), "--bags", str(tmp_path / "pt"),
                                          "--features", "pt", "--out", str(tmp_path / "out_pt")])
    assert result.exit_code == 0, result.output
    pt = pd.read_csv(tmp_path / "out_pt" / "trust.csv", keep_default_na=False).iloc[0]
    assert pt["reliable"] == "no" and pt["mpp_level0"] == ""
    assert float(pt["ood_distance"]) == pytest.approx(float(trust.at["far", "ood_distance"]), rel=1e-3)
    assert "trust.csv" in " ".join(result.output.split())


def test_provenance_is_what_the_trainer_declares(tmp_path):
    """--real overrides a synth-cohort marker (with a warning), a named cohort keeps its name, and
    a task counts only the slides and patients with a known label."""
    manifest = write_cohort(tmp_path, n_patients=10, slides_per_patient=2, missing={"pr": 0.3})
    (tmp_path / "cohort.json").write_text(json.dumps({"schema": "pathology-synth-cohort/1"}))
    cohort = load_manifest(manifest, targets=["er", "pr"], bags_dir=tmp_path / "bags")
    paths = [tmp_path / "bags" / f"{s}.h5" for s in cohort.table["slide_id"]]
    p = record_provenance(cohort, paths, name="lab A 2026", synthetic=False, intended_use="")
    assert (p.cohort, p.synthetic, p.synthetic_source, p.warning) == ("lab A 2026", False, "--real", "")
    assert (p.n_slides, p.n_patients) == (20, 10)
    assert (p.tasks["er"].slides, p.tasks["er"].patients) == (20, 10)
    assert (p.tasks["pr"].slides, p.tasks["pr"].patients) == (14, 7)          # 3 of 10 patients blanked
    assert record_provenance(cohort, paths, name=None, synthetic=None, intended_use="").synthetic
