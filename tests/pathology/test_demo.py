"""`pathology demo --small`: the README's first command, end to end on its synthetic cohort."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from pathology.cli import app


@pytest.mark.slow
@pytest.mark.timeout(900)   # ~1 min alone on 2 cores; the default 300 s is too close on a busy CI runner
def test_small_demo_learns_the_cohort_and_finds_the_tumour(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--small", "--out", str(out)])
    assert result.exit_code == 0, result.output
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
    assert "Out-of-fold metrics" in result.output and "report.html" in result.output
