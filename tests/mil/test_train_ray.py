"""`mil train --executor ray` runs the folds as parallel Ray tasks and writes the run a
sequential run with the same threads per fold writes (issue 13, item 7)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mil.cli import app
from tests.factories import write_cohort

pytest.importorskip("ray", reason="the ray extra")  # CI installs it with .[test]


def test_folds_on_ray_give_the_sequential_metrics(tmp_path, local_ray):
    manifest = write_cohort(tmp_path / "c", n_patients=24)
    common = ["train", "--manifest", manifest, "--bags", tmp_path / "c" / "bags", "--target", "er", "--survival",
              "os_time,os_event", "--folds", "3", "--epochs", "4", "--hidden", "16", "--bootstrap", "50", "-q"]
    runs = {"sequential": ["--threads", "1"], "ray": ["--executor", "ray", "--cpus-per-fold", "1"]}
    for name, extra in runs.items():
        result = CliRunner().invoke(app, [str(a) for a in [*common, *extra, "--out", tmp_path / name]])
        assert result.exit_code == 0, result.output
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs}
    assert metrics["ray"] == metrics["sequential"]
    for k in range(3):  # the same weights, fold by fold
        ray_weights, sequential = (load_file(tmp_path / name / f"fold_{k}" / "model.safetensors") for name in runs)
        assert ray_weights.keys() == sequential.keys()
        assert all(torch.equal(ray_weights[key], sequential[key]) for key in ray_weights)
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert config["train"]["threads"] == 1
