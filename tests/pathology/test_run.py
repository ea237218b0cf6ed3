"""`pathology run`: a model trained on `pathology tile` + `embed` bags applied to new slides
end to end, with the training settings, per-slide results, heatmaps and a report."""

from __future__ import annotations

import csv
import json
import re
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mil.manifest import load_manifest
from mil.predict import load_run, predict_bag
from mil.train import TrainConfig, train_cross_validation
from pathology.cli import app
from pathology.synth import SynthConfig, write_synthetic_slide

runner = CliRunner()
PATCH = 128
pytestmark = pytest.mark.slow   # every test needs the trained fixture: 6 slides tiled, embedded, trained


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six small synthetic slides tiled (patch 128, Macenko), embedded, and a 2-fold ABMIL run."""
    root = tmp_path_factory.mktemp("run")
    rows = []
    for i in range(6):
        truth = write_synthetic_slide(root / "slides" / f"s{i}.svs",
                                      SynthConfig(width=4096, height=3072, seed=40 + i,
                                                  tumor_fraction=0.4 if i % 2 else 0.0))
        rows.append(f"s{i},p{i},{truth.slide},{i % 2}")
    manifest = root / "manifest.csv"
    manifest.write_text("slide_id,patient_id,slide_path,tumor\n" + "\n".join(rows) + "\n")
    result = invoke("tile", root / "slides", "--out", root / "bags", "--stain", "macenko", "--patch-size", PATCH)
    assert result.exit_code == 0, result.output
    result = invoke("embed", root / "bags")
    assert result.exit_code == 0, result.output
    cohort = load_manifest(manifest, targets=["tumor"], bags_dir=root / "bags")
    train_cross_validation(cohort, TrainConfig(model="abmil", folds=2, epochs=3, patience=3, hidden=32,
                                               n_bootstrap=20), root / "model")
    return root


def test_run_scores_new_slides_as_trained_and_writes_the_report(trained, tmp_path):
    write_synthetic_slide(tmp_path / "in" / "new.svs", SynthConfig(width=4096, height=3072, seed=99))
    (tmp_path / "in" / "broken.svs").write_bytes(b"not a slide")
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "--model", trained / "model", "--out", out)
    assert result.exit_code == 1, result.output                       # the broken slide failed, the rest went on
    with open(out / "results.csv") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["message"]
    row = rows["new"]
    assert row["status"] == "done" and int(row["patches"]) > 0
    assert row["tumor_call"] == ("positive" if float(row["tumor_score"]) >= 0.5 else "negative")
    assert float(row["tumor_threshold"]) == 0.5

    # tiled with the run's settings, and the score is the run's prediction on that bag
    bag = out / "bags" / "new.h5"
    with h5py.File(bag) as f:
        assert int(f.attrs["patch_size"]) == PATCH and json.loads(f.attrs["stain"])["method"] == "macenko"
        x = f["features/stain-texture"][:].astype(np.float32)
    scores, attention = predict_bag(load_run(trained / "model"), x)
    assert float(row["tumor_score"]) == pytest.approx(scores["tumor"], abs=1e-6)
    with h5py.File(out / "attention" / "new.h5") as f:
        np.testing.assert_allclose(f["attention/tumor"][:], attention["tumor"], atol=1e-6)

    heatmaps = out / "heatmaps" / "new"
    for name in ("tumor.heatmap.png", "tumor.montage.png", "tumor.scores.csv", "tumor.geojson"):
        assert (heatmaps / name).is_file(), name
    html = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert "bags/qc/new.png" in images and "heatmaps/new/tumor.heatmap.png" in images
    assert all((out / src).is_file() for src in images)
    assert "broken" in html and "failed" in html and "http" not in html.replace("http-equiv", "")


def test_a_rerun_reuses_bags_and_features(trained, tmp_path):
    shutil.copy(trained / "slides" / "s1.svs", tmp_path / "s1.svs")
    out = tmp_path / "out"
    assert invoke("run", tmp_path / "s1.svs", "--model", trained / "model", "--out", out).exit_code == 0
    first = (out / "results.csv").read_text()
    stamp = (out / "bags" / "s1.h5").stat().st_mtime_ns
    result = invoke("run", tmp_path / "s1.svs", "--model", trained / "model", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "bags" / "s1.h5").stat().st_mtime_ns == stamp          # neither re-tiled nor re-embedded
    assert "tile: skipped, embed: skipped, predict: done" in (out / "results.csv").read_text()
    assert first.split("\n")[1].split(",")[:4] == (out / "results.csv").read_text().split("\n")[1].split(",")[:4]


def test_a_model_is_never_applied_with_other_settings(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["bag_settings"]["features"]["weights_sha256"] = "0" * 64
    (model / "config.json").write_text(json.dumps(config))
    result = invoke("run", trained / "slides" / "s0.svs", "--model", model, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "weights" in result.output and "trained on 000000000000" in result.output
    assert not (tmp_path / "out").exists()                                # refused before any work

    config["bag_settings"] = None                                         # features made elsewhere
    (model / "config.json").write_text(json.dumps(config))
    result = invoke("run", trained / "slides" / "s0.svs", "--model", model, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "features made elsewhere" in result.output


def test_run_tiles_only_inside_the_roi(trained, tmp_path):
    """`pathology run --roi`: the slide is tiled (and scored) inside the annotation only; a bad
    annotation stops the run before any work."""
    shutil.copy(trained / "slides" / "s1.svs", tmp_path / "s1.svs")
    box = [[0, 0], [2048, 0], [2048, 3072], [0, 3072]]                        # the left half of the 4096-px slide
    roi = tmp_path / "s1.geojson"
    roi.write_text(json.dumps({"type": "Feature", "properties": {"objectType": "annotation"},
                               "geometry": {"type": "Polygon", "coordinates": [[*box, box[0]]]}}))
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "s1.svs", "--model", trained / "model", "--out", out, "--roi", roi)
    assert result.exit_code == 0, result.output
    with h5py.File(out / "bags" / "s1.h5") as f:
        coords, size0 = f["coords"][:], int(f["coords"].attrs["patch_size_level0"])
        assert json.loads(f.attrs["tiling"])["roi"]["path"] == str(roi)
    assert len(coords) and (coords[:, 0] + size0 / 2 <= 2048).all()   # over half of each patch inside the box
    with open(out / "results.csv") as fh:
        assert next(csv.DictReader(fh))["patches"] == str(len(coords))

    roi.write_text("{not json")
    bad = invoke("run", tmp_path / "s1.svs", "--model", trained / "model", "--out", tmp_path / "bad", "--roi", roi)
    assert bad.exit_code == 2 and "s1.geojson: not valid JSON" in bad.output and not (tmp_path / "bad").exists()


def test_run_reports_a_multiclass_and_a_regression_task(trained, tmp_path):
    """A run with a multi-class grade and a regression Ki-67 on the same bags: results.csv has each
    class's probability (the call is the most probable class) and the value, as `mil predict`
    scores the bag; the report shows them with one heatmap per class beside the task's."""
    manifest = tmp_path / "manifest.csv"
    rows = [f"s{i},p{i},{(1, 2, 3)[i % 3]},{10.0 + 12 * i}" for i in range(6)]     # grade 1-3, ki67 10-70
    manifest.write_text("slide_id,patient_id,grade,ki67\n" + "\n".join(rows) + "\n")
    # six whole numbers would read as six classes: the kind is given, as --kind ki67=regression does
    cohort = load_manifest(manifest, targets=["grade", "ki67"], bags_dir=trained / "bags", kinds={"ki67": "regression"})
    assert [(t.name, t.kind, t.classes) for t in cohort.tasks] == [("grade", "multiclass", ("1", "2", "3")),
                                                                   ("ki67", "regression", ())]
    train_cross_validation(cohort, TrainConfig(model="abmil", folds=2, epochs=2, patience=2, hidden=16,
                                               n_bootstrap=20), tmp_path / "model")
    out = tmp_path / "out"
    result = invoke("run", trained / "slides" / "s1.svs", "--model", tmp_path / "model", "--out", out)
    assert result.exit_code == 0, result.output
    with open(out / "results.csv") as fh:
        reader = csv.DictReader(fh)
        row = next(reader)
    assert [c for c in reader.fieldnames if c.startswith(("grade", "ki67"))] == [
        "grade_call", "grade_p_1", "grade_p_2", "grade_p_3", "ki67_value"]
    probs = [float(row[f"grade_p_{c}"]) for c in "123"]
    assert sum(probs) == pytest.approx(1, abs=1e-5) and row["grade_call"] == "123"[int(np.argmax(probs))]
    with h5py.File(out / "bags" / "s1.h5") as f:
        x = f["features/stain-texture"][:].astype(np.float32)
    scores, attention = predict_bag(load_run(tmp_path / "model"), x)
    np.testing.assert_allclose(probs, scores["grade"], atol=1e-5)
    assert float(row["ki67_value"]) == pytest.approx(scores["ki67"], abs=1e-4)
    assert {"grade", "grade=1", "grade=2", "grade=3", "ki67"} <= set(attention)
    html = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    for name in ("grade", "grade_1", "grade_2", "grade_3", "ki67"):   # a class's map: <task>=<class>, file-safe
        assert f"heatmaps/s1/{name}.heatmap.png" in images, name
    assert all((out / src).is_file() for src in images)
    assert f"{float(row['ki67_value']):.3g}" in html and f"1 {probs[0]:.2f}, 2 {probs[1]:.2f}" in html
