"""The shell examples run end to end, as a user runs them (``bash examples/<script>.sh`` in an
empty folder, with the installed ``pathology`` and ``mil`` commands), on smaller synthetic
cohorts: SLIDES=12 FOLDS=3 EPOCHS=5, the knobs each script documents. ~2-3 minutes in all.

Each test checks what the script promises in its comments (files, warnings, calls) against
independent truth: the generated manifests' labels, the real IHC image's known HER2 3+, and
the trained run's own prediction for a scored bag.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
QUICK = {"SLIDES": "12", "FOLDS": "3", "EPOCHS": "5"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("column") is None, reason="the examples print tables with `column`")]


def run_example(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``bash examples/<script>`` in ``cwd`` with this interpreter's ``pathology`` / ``mil`` first on PATH
    and this checkout's packages importable."""
    cwd.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **QUICK, **env,
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLES.parent), os.environ.get("PYTHONPATH")])),
                   "COLUMNS": "200"}
    done = subprocess.run(["bash", str(EXAMPLES / script)], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def known_labels(manifest: Path, column: str) -> int:
    return int(pd.read_csv(manifest, dtype=str, keep_default_na=False)[column].str.strip().ne("").sum())


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("lab")
    return folder, run_example("lab_receptor_status.sh", folder)


def test_lab_receptor_status(lab):
    folder, done = lab
    manifest = folder / "lab_cohort" / "manifest.csv"
    assert len(pd.read_csv(manifest)) == 12
    metrics = json.loads((folder / "lab_run" / "metrics.json").read_text())
    assert {t: m["n"] for t, m in metrics["tasks"].items()} == {
        t: known_labels(manifest, t) for t in ("er", "pr", "her2")}
    assert metrics["n_folds"] == 3 and all(r["epochs_run"] <= 5 for r in metrics["training"])
    # ihc.png (scikit-image's IHC sample) has complete, intense membranes: HER2 3+
    her2 = json.loads((folder / "lab_ihc_her2" / "ihc.json").read_text())
    assert her2["call"]["value"] == 3
    # "warns: this DAB is membranous": scored as ER, the result carries the warning
    er = json.loads((folder / "lab_ihc_er" / "ihc.json").read_text())
    assert len(er["warnings"]) == 1 and "membranous" in er["warnings"][0]
    # the last line prints the HER2 scores table
    assert "h_score" in done.stdout and "3+ (positive)" in done.stdout


def test_pathologist_scores_slides_with_a_trained_run(lab, tmp_path):
    """DEMO points at a folder whose run/ is the lab's trained run (instead of `pathology demo
    --small`, which test_demo.py runs), as a user points it at their own run."""
    folder, _ = lab
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run").symlink_to(folder / "lab_run", target_is_directory=True)
    done = run_example("pathologist_score_slides.sh", tmp_path, DEMO=str(tmp_path / "demo"))
    scored = tmp_path / "scored"
    with open(scored / "results.csv") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["synthetic_000", "synthetic_001", "synthetic_002"]
    from mil.predict import load_run, predict_bag
    run = load_run(folder / "lab_run")
    for slide, row in rows.items():
        assert row["status"] == "done" and int(row["patches"]) > 0
        with h5py.File(scored / "bags" / f"{slide}.h5") as f:
            scores, _ = predict_bag(run, f["features/stain-texture"][:].astype(np.float32))
        for task in ("er", "pr", "her2"):
            assert float(row[f"{task}_score"]) == pytest.approx(scores[task], abs=2e-6)
            assert row[f"{task}_call"] == ("positive" if scores[task] >= 0.5 else "negative")
            assert (scored / "heatmaps" / slide / f"{task}.heatmap.png").is_file()
    assert "synthetic_000" in (scored / "report.html").read_text()
    assert "open scored/report.html" in done.stdout


def test_researcher_trains_and_evaluates_on_an_external_cohort(tmp_path):
    done = run_example("researcher_train_evaluate.sh", tmp_path)
    external = tmp_path / "cohort_external" / "manifest.csv"
    # "ls external_eval  # metrics.json, roc_*.png, km_survival.png"
    listed = done.stdout.split()
    assert {"metrics.json", "roc_tumor.png", "roc_er.png", "km_survival.png"} <= set(listed)
    metrics = json.loads((tmp_path / "external_eval" / "metrics.json").read_text())
    assert {t: m["n"] for t, m in metrics["tasks"].items() if t != "survival"} == {
        t: known_labels(external, t) for t in ("tumor", "er")}
    predictions = pd.read_csv(tmp_path / "external_pred" / "predictions.csv")
    assert len(predictions) == 3 * 12 and predictions["fold"].isna().all()   # every fold model averaged
    config = json.loads((tmp_path / "run_cv" / "config.json").read_text())
    assert config["model"]["name"] == "gated-abmil" and len(config["folds"]) == 3
    assert config["manifest"]["path"] == str((tmp_path / "cohort_train" / "manifest.csv").resolve())
