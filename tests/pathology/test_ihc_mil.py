"""IHC bags from ``pathology tile`` feed the MIL models: a biomarker model trained on IHC slides.

Synthetic IHC slides whose tumour nuclei are DAB-positive (``ihc-nuclear``) or not
(``ihc-nuclear-negative``), otherwise alike (tissue layout, tumour share, stain spread),
are tiled with IHC stain handling, embedded with the default ``stain-texture`` encoder
(which has DAB channels) and cross-validated with attention MIL.
"""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mil.manifest import load_manifest
from mil.train import TrainConfig, train_cross_validation
from pathology.cli import app
from pathology.synth import SynthConfig, derive_seed, write_synthetic_slide

pytestmark = pytest.mark.slow


def test_mil_learns_nuclear_ihc_status_from_tiled_synthetic_slides(tmp_path):
    slides, rows = tmp_path / "slides", []
    for i in range(12):
        positive = i % 2 == 0
        recipe = "ihc-nuclear" if positive else "ihc-nuclear-negative"
        config = SynthConfig(width=2048, height=1536, mpp=0.5, seed=derive_seed(5, i), recipe=recipe,
                             tumor_fraction=0.35, stain_variation=0.5, tile_size=256)
        write_synthetic_slide(slides / f"s{i:02d}.svs", config)
        rows.append({"slide_id": f"s{i:02d}", "patient_id": f"p{i:02d}", "er": int(positive)})
    runner = CliRunner()
    bags = tmp_path / "bags"
    tiled = runner.invoke(app, ["tile", str(slides), "--out", str(bags), "--kind", "ihc", "--patch-size", "128",
                                "--compression", "none", "-q"])
    assert tiled.exit_code == 0, tiled.output
    embedded = runner.invoke(app, ["embed", str(bags), "-q"])
    assert embedded.exit_code == 0, embedded.output
    with h5py.File(bags / "s00.h5") as f:
        assert json.loads(f.attrs["stain"])["method"] == "none"   # IHC default: DAB left as scanned
        n_patches = len(f["coords"])
        assert f["features/stain-texture"].shape == (n_patches, 110) and n_patches >= 20
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cohort = load_manifest(manifest, targets=("er",), bags_dir=bags)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_cross_validation(cohort, TrainConfig(model="abmil", targets=("er",), folds=3, epochs=12,
                                                            patience=6, hidden=32, batch_size=4, lr=5e-3,
                                                            n_bootstrap=100), tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    auc = result["tasks"]["er"]["metrics"]["auc"]
    assert auc["pooled"] >= 0.9, auc      # chance is 0.5: the model reads DAB in tumour nuclei
    assert min(auc["folds"]) >= 0.75, auc
