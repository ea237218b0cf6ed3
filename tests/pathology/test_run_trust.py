"""`pathology run`'s warnings (issue 19): each slide judged against the run's training cohort,
written to results.csv, the report and the viewer's slide list.

The run is the 0.1.0 legacy run folder (tests/data/runs) copied and given what `mil train`
now records: a provenance marking its cohort synthetic and out-of-distribution references
fitted (by :func:`mil.ood.fit_ood`, as training does) on 12 bags drawn from one Gaussian.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil

import h5py
import numpy as np
import pytest

from mil.assess import COLUMNS, assess_slide
from mil.ood import fit_ood, slide_embedding
from mil.predict import load_run
from mil.provenance import SYNTHETIC_WARNING, Provenance, TaskCounts
from mil.runconfig import RunConfig
from pathology.batch import Outcome
from pathology.run.card import card_html, model_line, performance
from pathology.run.report import SlideReport, TaskResult, render_report
from pathology.run.trust import attach, trust_columns, trust_summary
from pathology.view.catalog import read_catalog
from tests.factories import DATA, write_bag

LEGACY = DATA / "runs" / "mil-run-0.1.0"
ENCODER, DIM = "stain-texture", 110          # the legacy run's features


def bag(path, seed: int, shift: float = 0.0, mpp: float = 0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (30, DIM)) + rng.normal(0, 0.3, DIM) + shift
    write_bag(path, x, encoder=ENCODER, dtype=None,
              weights_sha256=RunConfig.read(LEGACY / "config.json").feature_attrs.weights_sha256)
    with h5py.File(path, "a") as f:
        f.attrs["mpp_level0"] = mpp
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    run = root / "run"
    shutil.copytree(LEGACY, run)
    paths = [bag(root / "train" / f"t{i}.h5", seed=i) for i in range(12)]
    embeddings = np.stack([slide_embedding(p, ENCODER) for p in paths])
    ood = fit_ood(embeddings, paths, np.array_split(np.arange(12), 3), run)
    provenance = Provenance(cohort="toy", synthetic=True, synthetic_source="--synthetic", n_slides=12, n_patients=12,
                            tasks={"tumor": TaskCounts(slides=12, patients=12)}, intended_use="tests only",
                            created="2026-12-06T12:00:00+00:00")
    config = dataclasses.replace(RunConfig.read(run / "config.json"), provenance=provenance, ood=ood)
    config.write(run / "config.json")
    return run


def test_each_slide_is_judged_against_the_training_cohort(run_dir, tmp_path):
    run = load_run(run_dir)
    like = assess_slide(run, bag(tmp_path / "like.h5", seed=100))
    far = assess_slide(run, bag(tmp_path / "far.h5", seed=101, shift=1.5))
    coarse = assess_slide(run, bag(tmp_path / "coarse.h5", seed=102, mpp=1.0))    # the run's target is 0.5 µm/px
    assert like.warnings == [SYNTHETIC_WARNING] and like.reliable and like.out_of_distribution is False
    assert like.ood_distance < like.ood_threshold == run.config.ood.embedding.threshold
    assert far.out_of_distribution and not far.reliable and far.ood_distance > far.ood_threshold
    assert far.warnings[0] == SYNTHETIC_WARNING and "out of distribution" in far.warnings[1]
    assert not coarse.reliable and coarse.mpp_level0 == 1.0
    assert any(w.startswith("resolution: scanned at 1 µm/px") for w in coarse.warnings)

    # the legacy run itself records nothing: no warning, no distance, nothing flagged
    legacy = assess_slide(load_run(LEGACY), tmp_path / "like.h5")
    assert legacy.reliable and legacy.warnings == [] and legacy.out_of_distribution is None


def test_results_report_and_viewer_show_the_warnings(run_dir, tmp_path):
    run = load_run(run_dir)
    trusts = {"like": assess_slide(run, bag(tmp_path / "like.h5", seed=100)),
              "far": assess_slide(run, bag(tmp_path / "far.h5", seed=101, shift=1.5))}
    outcomes = [Outcome(sid, "done", 30, 0.1, "", data={"scores": {"tumor": 0.9}, "trust": t.to_data()})
                for sid, t in trusts.items()]
    reports = [SlideReport(sid, "done", 30, tasks=[TaskResult("tumor", "binary", 0.9, 0.5)]) for sid in trusts]
    attach(reports, outcomes)
    header, rows = trust_columns(["slide_id", "status", "tumor_score", "tumor_call"],
                                 [{"slide_id": sid, "status": "done", "tumor_score": "0.9", "tumor_call": "positive"}
                                  for sid in trusts], outcomes)
    assert header[-len(COLUMNS):] == list(COLUMNS)
    by_id = {r["slide_id"]: r for r in rows}
    assert by_id["like"]["reliable"] == "yes" and by_id["like"]["out_of_distribution"] == "false"
    assert by_id["far"]["reliable"] == "no" and by_id["far"]["out_of_distribution"] == "true"
    assert float(by_id["far"]["ood_distance"]) > float(by_id["far"]["ood_threshold"])
    assert all(r["warning"].startswith(SYNTHETIC_WARNING) for r in rows)
    assert trust_summary(reports) == [f"{SYNTHETIC_WARNING} (2 of 2 slides)",
                                      "out of distribution: unlike the training slides (1 of 2 slides)"]

    page = render_report(reports, tmp_path, title="t", model="m", card=card_html(run))
    assert page.index("Model card") < page.index('<table class="summary">')             # the card heads the page
    assert "This model was trained on synthetic slides: not for real tissue." in page
    assert page.count(f"⚠ {SYNTHETIC_WARNING}") == 2                                      # on every slide's card
    assert page.count('<span class="warn">not reliable</span>') == 2                    # far: row and card
    assert "out-of-distribution" in page and "tests only" in page
    assert "SYNTHETIC" in model_line(run) and "toy (12 slides, 12 patients" in model_line(run)

    with open(tmp_path / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    catalog = read_catalog(tmp_path)
    assert catalog.columns[-1] == "reliability"
    far = {c.name: c for c in catalog.entries["far"].calls}["reliability"]
    like = {c.name: c for c in catalog.entries["like"].calls}["reliability"]
    assert far.tone == like.tone == "pos"                     # both carry the synthetic warning
    assert far.text.startswith(f"not reliable · {SYNTHETIC_WARNING} · out of distribution")
    assert far.text.count("distance") == 1 and far.text.count("not reliable") == 1   # each said once
    assert like.text.startswith("ok · distance ") and "(threshold " in like.text     # unflagged: its distance


def test_the_card_gives_each_task_kind_its_headline_metrics():
    def metric(pooled, lo, hi):
        return {"pooled": pooled, "ci95": [lo, hi], "mean": pooled, "sd": 0.01, "folds": []}

    metrics = {"tasks": {
        "tumor": {"kind": "binary", "n": 40, "metrics": {"auc": metric(0.91, 0.85, 0.96), "f1": metric(0.8, 0.7, 0.9)}},
        "grade": {"kind": "multiclass", "n": 60, "metrics": {"auc": metric(0.78, 0.7, 0.85),
                                                              "balanced_accuracy": metric(0.61, 0.52, 0.7)}},
        "ki67": {"kind": "regression", "n": 50, "metrics": {"pearson": metric(0.66, 0.5, 0.78),
                                                             "mae": metric(7.5, 6.1, 9.0)}},
        "os": {"kind": "survival", "n": 80, "metrics": {"c_index": metric(0.64, 0.58, float("nan"))}},
    }}
    assert performance(metrics) == [
        "tumor: AUC 0.910 (95% CI 0.850–0.960), n = 40",
        "grade: macro AUC 0.780 (95% CI 0.700–0.850); balanced accuracy 0.610 (95% CI 0.520–0.700), n = 60",
        "ki67: Pearson r 0.660 (95% CI 0.500–0.780); MAE 7.500 (95% CI 6.100–9.000), n = 50",
        "os: C-index 0.640 (95% CI 0.580–n/a), n = 80",
    ]
