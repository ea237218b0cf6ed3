"""`pathology embed` end to end: features into real bags from `pathology tile`, atomically."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pathology.cli import app
from pathology.embed import run as embed_run
from pathology.encoders import get_spec
from pathology.synth import SynthConfig, write_synthetic_slide

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """One synthetic slide tiled three times (Macenko): with stored patches (JPEG, the default, and
    lossless), and coordinates only."""
    root = tmp_path_factory.mktemp("embed")
    truth = write_synthetic_slide(root / "slides" / "syn.svs", SynthConfig(width=6144, height=4608, mpp=0.25, seed=5))
    for folder, extra in (("bags", []), ("lossless", ["--compression", "none"]), ("coords_only", ["--no-patches"])):
        result = invoke("tile", truth.slide, "--out", root / folder, "--stain", "macenko", "--patch-size", "128",
                        *extra)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def bags(tiled, tmp_path):
    """Fresh copies of the tiled bags for each test."""
    for folder in ("bags", "lossless", "coords_only"):
        shutil.copytree(tiled / folder, tmp_path / folder)
    return tmp_path


def features(bag, name="stain-texture"):
    with h5py.File(bag) as f:
        return f[f"features/{name}"][:], dict(f[f"features/{name}"].attrs), len(f["coords"])


def test_features_follow_the_design(bags):
    result = invoke("embed", bags / "bags")
    assert result.exit_code == 0, result.output
    feats, attrs, n = features(bags / "bags/syn.h5")
    spec = get_spec("stain-texture")
    assert n > 20 and feats.shape == (n, spec.dim) and feats.dtype == np.float16 and np.isfinite(feats).all()
    assert attrs["encoder"] == "stain-texture" and attrs["dim"] == spec.dim and len(attrs["weights_sha256"]) == 64
    assert list(attrs["mean"]) == [0, 0, 0] and list(attrs["std"]) == [1, 1, 1] and attrs["input_size"] == -1
    assert feats.std(axis=0).max() > 0  # patches differ, so do their features
    assert not list((bags / "bags").glob("*.partial"))


def test_rerun_skips_and_overwrite_recomputes(bags):
    assert invoke("embed", bags / "bags").exit_code == 0
    before = (bags / "bags/syn.h5").read_bytes()
    again = invoke("embed", bags / "bags")
    assert again.exit_code == 0 and "skipped" in again.output
    assert (bags / "bags/syn.h5").read_bytes() == before
    redo = invoke("embed", bags / "bags", "--overwrite", "--dtype", "float32")
    assert redo.exit_code == 0 and "1 done" in redo.output
    feats, _, _ = features(bags / "bags/syn.h5")
    assert feats.dtype == np.float32


def test_coords_only_bags_read_the_slide_and_match_stored_patches(bags, tiled, tmp_path):
    """The slide is re-read and normalized with the bag's recorded stain fit: the same
    features as from the stored lossless (normalized) patches; those from the default JPEG
    patches are within cosine 0.99 of them (the acceptance bound of the storage benchmark)."""
    for folder in ("bags", "lossless"):
        assert invoke("embed", bags / folder, "--dtype", "float32").exit_code == 0
    result = invoke("embed", bags / "coords_only", "--dtype", "float32")
    assert result.exit_code == 0 and "from the slide" in result.output, result.output
    stored, _, _ = features(bags / "lossless/syn.h5")
    reread, attrs, _ = features(bags / "coords_only/syn.h5")
    assert attrs["patch_source"] == "slide" and np.array_equal(stored, reread)
    jpeg, attrs, _ = features(bags / "bags/syn.h5")
    cos = (jpeg * stored).sum(1) / np.linalg.norm(jpeg, axis=1) / np.linalg.norm(stored, axis=1)
    assert attrs["patch_source"] == "bag" and cos.mean() >= 0.99 and not np.array_equal(jpeg, stored)
    # the slide moved: --slides finds it by name; without it the error names the path
    moved = tmp_path / "moved"
    shutil.copytree(tiled / "coords_only", tmp_path / "coords_again")
    with h5py.File(tmp_path / "coords_again/syn.h5") as f:
        slide = f.attrs["slide_path"]
    moved.mkdir()
    shutil.move(slide, moved / "syn.svs")
    try:
        lost = invoke("embed", tmp_path / "coords_again")
        assert lost.exit_code == 1 and "--slides" in lost.output
        found = invoke("embed", tmp_path / "coords_again", "--slides", moved, "--dtype", "float32")
        assert found.exit_code == 0, found.output
        assert np.array_equal(features(tmp_path / "coords_again/syn.h5")[0], stored)
    finally:
        shutil.move(moved / "syn.svs", slide)


def test_an_interrupted_run_leaves_the_bag_as_it_was(bags, monkeypatch):
    bag = bags / "bags/syn.h5"
    before = bag.read_bytes()
    calls = {"n": 0}
    real = embed_run.Encoder.__call__

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(embed_run.Encoder, "__call__", failing)
    result = invoke("embed", bag, "--batch-size", "8")  # Ctrl-C after the first batch
    assert result.exit_code != 0 and calls["n"] == 2 and bag.read_bytes() == before
    assert not list(bag.parent.glob("*.partial"))


def test_a_bad_bag_is_reported_and_the_rest_go_on(bags):
    (bags / "bags/broken.h5").write_bytes(b"not hdf5")
    with h5py.File(bags / "bags/foreign.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
    result = invoke("embed", bags / "bags")
    assert result.exit_code == 1
    assert "broken" in result.output and "not a pathology bag" in result.output.replace("\n", " ")
    assert features(bags / "bags/syn.h5")[0].shape[0] > 0


def test_bad_arguments_exit_2_with_one_line(bags, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    missing = invoke("embed", bags / "bags", "--encoder", "uni")
    assert missing.exit_code == 2 and "pathology encoders fetch uni" in missing.output
    nothing = invoke("embed", tmp_path / "nope")
    assert nothing.exit_code == 2 and "no bag (.h5) found" in " ".join(nothing.output.split())


def test_loader_workers_and_batch_size_do_not_change_features(bags):
    assert invoke("embed", bags / "bags", "--dtype", "float32").exit_code == 0
    reference, _, _ = features(bags / "bags/syn.h5")
    result = invoke("embed", bags / "bags", "--dtype", "float32", "--overwrite", "--loader-workers", "1",
                    "--batch-size", "7")
    assert result.exit_code == 0, result.output
    assert "--loader-workers 1 on the CPU" in " ".join(result.output.split())  # warned: workers slow a CPU run
    assert np.array_equal(features(bags / "bags/syn.h5")[0], reference)
    files = sorted(p.name for p in (bags / "bags").iterdir() if p.is_file())
    assert files == ["status.csv", "status.embed.csv", "syn.h5"]  # no .partial/.old left


@pytest.mark.slow
def test_a_cnn_encoder_embeds_through_the_cli_beside_the_first_feature_set(bags):
    assert invoke("embed", bags / "bags").exit_code == 0
    first, first_attrs, _ = features(bags / "bags/syn.h5")
    result = invoke("embed", bags / "bags", "--encoder", "resnet50-trunc", "--random-weights", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    feats, attrs, n = features(bags / "bags/syn.h5", "resnet50-trunc")
    assert feats.shape == (n, 1024) and attrs["weights_sha256"] == "random" and attrs["input_size"] == 224
    # both feature sets now live side by side: the first is kept as it was
    with h5py.File(bags / "bags/syn.h5") as f:
        assert sorted(f["features"]) == ["resnet50-trunc", "stain-texture"]
    kept, kept_attrs, _ = features(bags / "bags/syn.h5")
    assert np.array_equal(kept, first)
    assert {k: np.asarray(v).tolist() for k, v in kept_attrs.items()} == \
           {k: np.asarray(v).tolist() for k, v in first_attrs.items()}
