"""`pathology heatmap` over CLAM and TRIDENT feature files, given their slide: a bag exported with
`pathology export` draws the same heatmap (picture, per-patch scores, GeoJSON) as the bag itself."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_model
from typer.testing import CliRunner

from mil.models import Head, create_model
from pathology.cli import app
from pathology.synth import SynthConfig, write_synthetic_slide
from tests.factories import add_features

runner = CliRunner()
DIM = 8


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A synthetic SVS tiled (default tissue detection), features added, exported for both tools,
    and a one-fold ABMIL run over those features."""
    root = tmp_path_factory.mktemp("foreign")
    truth = write_synthetic_slide(root / "slides" / "syn.svs",
                                  SynthConfig(width=3072, height=2048, mpp=0.5, seed=5, tumor_fraction=0.3))
    result = invoke("tile", truth.slide, "--out", root / "bags", "--target-mpp", 1.0, "--patch-size", 64, "-q")
    assert result.exit_code == 0, result.output
    bag = root / "bags" / "syn.h5"
    with h5py.File(bag) as f:
        n = len(f["coords"])
    add_features(bag, np.random.default_rng(1).normal(size=(n, DIM)), encoder="toy", dtype=None)
    for tool in ("trident", "clam"):
        assert invoke("export", bag, "--to", tool, "--out", root / tool).exit_code == 0
    run_dir = root / "run"
    (run_dir / "fold_0").mkdir(parents=True)
    save_model(create_model("abmil", DIM, [Head("er", 1)], hidden=16, dropout=0.0),
               str(run_dir / "fold_0" / "model.safetensors"))
    (run_dir / "config.json").write_text(json.dumps({
        "model": {"name": "abmil", "hidden": 16, "dropout": 0.0},
        "heads": [{"name": "er", "n_outputs": 1, "kind": "binary"}], "folds": [{"fold": 0}], "in_dim": DIM,
        "features": "toy"}))
    return {"root": root, "slide": truth.slide, "bag": bag, "run": run_dir,
            "trident": root / "trident" / "syn.h5", "clam": root / "clam" / "h5_files" / "syn.h5"}


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("tool", ["trident", "clam"])
def test_an_exported_file_draws_the_heatmap_of_its_bag(made, tmp_path, tool):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert invoke("heatmap", "--bag", made["bag"], "--model", made["run"], "--out", ours, "--top-k", 3).exit_code == 0
    result = invoke("heatmap", "--bag", made[tool], "--model", made["run"], "--out", theirs, "--top-k", 3,
                    "--slide", made["slide"].parent)          # a folder of slides: found by the file's name
    assert result.exit_code == 0, result.output
    a, b = ours / "syn", theirs / "syn"
    assert (a / "er.scores.csv").read_text() == (b / "er.scores.csv").read_text()   # tissue share included
    assert json.loads((a / "er.geojson").read_text()) == json.loads((b / "er.geojson").read_text())
    np.testing.assert_array_equal(pixels(a / "er.heatmap.png"), pixels(b / "er.heatmap.png"))
    # the montage: ours shows the stored patches (64 px), theirs re-reads them from the slide (CLAM: its
    # 128-px read at patch_level, shown without the tiler's downscale): the same patches, a little sharper
    mine, other = pixels(a / "er.montage.png"), pixels(b / "er.montage.png")
    assert mine.shape == other.shape and np.abs(mine.astype(int) - other).mean() < 4.0
    shuffled = np.abs(mine.astype(int) - np.roll(other, 200, axis=1)).mean()     # other patches in those places
    assert shuffled > 3 * np.abs(mine.astype(int) - other).mean()


def test_attention_files_and_errors_over_a_feature_file(made, tmp_path):
    with h5py.File(made["bag"]) as f:
        coords = f["coords"][:]
    attention = tmp_path / "syn.h5"
    with h5py.File(attention, "w") as f:
        f["coords"] = coords
        f["attention/er"] = np.linspace(0, 1, len(coords), dtype=np.float32)
    ok = invoke("heatmap", "--bag", made["trident"], "--attention", attention, "--out", tmp_path / "a",
                "--slide", made["slide"], "--top-k", 0)
    assert ok.exit_code == 0, ok.output
    assert len((tmp_path / "a" / "syn" / "er.scores.csv").read_text().splitlines()) == len(coords) + 1

    no_slide = invoke("heatmap", "--bag", made["clam"], "--attention", attention, "--out", tmp_path / "b")
    assert no_slide.exit_code == 1 and "records no slide; pass --slide" in " ".join(no_slide.output.split())
    bare = tmp_path / "bare" / "syn.h5"                         # CLAM's own feature files carry no geometry
    bare.parent.mkdir()
    with h5py.File(bare, "w") as f:
        f["features"] = np.zeros((len(coords), DIM), np.float32)
        f["coords"] = coords
    result = invoke("heatmap", "--bag", bare, "--attention", attention, "--out", tmp_path / "c", "--slide",
                    made["slide"])
    assert result.exit_code == 1 and "carry no patch geometry" in " ".join(result.output.split())
