"""`pathology export --to trident|clam`: real bags (tiled from a real pyramidal TIFF, features
added as `pathology embed` writes them) written in the layouts CLAM's and TRIDENT's loaders read.

What the tools do with the files is checked by doing it: CLAM's patch reader reads
``read_region(coord, patch_level, (patch_size, patch_size))``; TRIDENT's reads
``patch_size × level0_magnification / target_magnification`` level-0 pixels at each coordinate
and scales them to ``patch_size``. Both must give back the patch the bag stores (the pixels the
encoder saw). The attribute names and dtypes are those of CLAM's ``Whole_Slide_Bag_FP`` and
TRIDENT's ``extract_patch_features``/``read_coords`` (read, not copied).
"""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mil.data import find_bag, read_features
from pathology.bag import read_patches
from pathology.cli import app
from pathology.slide import open_slide
from tests.factories import add_features, write_pyramid_tiff

runner = CliRunner()
PATCH = 64
DIM = 12


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """A slide at 0.25 µm/px with levels 1 and 4, tiled at 1 µm/px (read from level 1: CLAM's
    patch_level 1), and features of two encoders."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:1536, 0:2048]
    image = np.stack([150 + 60 * np.sin(xx / 37.0), 110 + 50 * np.cos(yy / 23.0), 170 + 30 * np.sin((xx + yy) / 51.0)],
                     axis=-1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    slide = write_pyramid_tiff(root / "slide.svs", image, downsamples=(1, 4), mpp=0.25)
    result = invoke("tile", slide, "--out", root / "bags", "--target-mpp", 1.0, "--patch-size", PATCH,
                    "--compression", "none")    # lossless: the comparisons below are of geometry, not of JPEG
    assert result.exit_code == 0, result.output
    path = root / "bags" / "slide.h5"
    with h5py.File(path) as f:
        n = len(f["coords"])
    add_features(path, rng.normal(0, 1, (n, DIM)), encoder="enc-a")
    add_features(path, rng.normal(0, 1, (n, DIM + 4)), encoder="enc-b", dtype=np.float32)
    return path


def bag_arrays(path, encoder):
    with h5py.File(path) as f:
        return (f["features"][encoder][:].astype(np.float32), f["coords"][:], read_patches(f, slice(None)),
                float(f["coords"].attrs["patch_size_level0"]))


def test_trident_files_hold_what_its_loader_reads(tmp_path, bag):
    out = tmp_path / "trident"
    result = invoke("export", bag, "--to", "trident", "--out", out, "--encoder", "enc-a")
    assert result.exit_code == 0, result.output
    features, coords, patches, size0 = bag_arrays(bag, "enc-a")
    with h5py.File(out / "slide.h5") as f:
        assert set(f) == {"features", "coords"}
        assert f["features"].dtype == np.float32 and f["features"].shape == features.shape
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (len(features), 2)
        np.testing.assert_array_equal(f["features"][:], features)
        np.testing.assert_array_equal(f["coords"][:], coords)
        a = dict(f["coords"].attrs)
    assert a["patch_size"] == PATCH and a["patch_size_level0"] == size0 == 4 * PATCH
    assert a["level0_magnification"] == pytest.approx(40.0) and a["target_magnification"] == pytest.approx(10.0)
    assert (a["level0_width"], a["level0_height"]) == (2048, 1536) and a["overlap"] == 0 and a["name"] == "slide"
    # TRIDENT's patch read: patch_size * level0_mag / target_mag level-0 px, scaled to patch_size
    span = round(a["patch_size"] * a["level0_magnification"] / a["target_magnification"])
    with open_slide(bag.parent.parent / "slide.svs") as slide:
        for i in (0, len(coords) // 2, len(coords) - 1):
            region = slide.read_region(tuple(int(v) for v in coords[i]), 0, (span, span))
            scaled = np.asarray(Image.fromarray(region).resize((PATCH, PATCH), Image.Resampling.BOX), np.float32)
            assert np.abs(scaled - patches[i]).mean() < 2.0


def test_clam_files_hold_what_its_loaders_read(tmp_path, bag):
    out = tmp_path / "clam"
    result = invoke("export", bag, "--to", "clam", "--out", out, "-e", "enc-b")
    assert result.exit_code == 0, result.output
    features, coords, patches, _ = bag_arrays(bag, "enc-b")
    with h5py.File(out / "h5_files" / "slide.h5") as f:
        assert set(f) == {"features", "coords"}
        assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int32
        np.testing.assert_array_equal(f["features"][:], features)
        np.testing.assert_array_equal(f["coords"][:], coords)
        level, size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
        np.testing.assert_allclose(f["coords"].attrs["downsample"], [4.0, 4.0])
    assert (level, size) == (1, PATCH)        # read from level 1 (4x), PATCH px there = 1 µm/px
    # CLAM's patch read: read_region(coord, patch_level, (patch_size, patch_size)) is the bag's patch
    with open_slide(bag.parent.parent / "slide.svs") as slide:
        for i in (0, len(coords) // 2, len(coords) - 1):
            region = slide.read_region(tuple(int(v) for v in coords[i]), level, (size, size)).astype(np.float32)
            assert np.abs(region - patches[i]).mean() < 1.0
    # CLAM's training loader: torch.load of a plain (N, D) tensor (nothing to unpickle)
    tensor = torch.load(out / "pt_files" / "slide.pt", weights_only=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), features)


def test_our_reader_reads_the_exported_files_back_identically(tmp_path, bag):
    for tool in ("trident", "clam"):
        assert invoke("export", bag.parent, "--to", tool, "--out", tmp_path / tool, "-e", "enc-a").exit_code == 0
    ours = read_features(bag, "enc-a")
    for path in (tmp_path / "trident" / "slide.h5", find_bag(tmp_path / "clam", "slide"),
                 tmp_path / "clam" / "pt_files" / "slide.pt"):
        back = read_features(path)
        np.testing.assert_array_equal(back.features, ours.features)
        if path.suffix == ".h5":
            np.testing.assert_array_equal(back.coords, ours.coords)
    assert find_bag(tmp_path / "clam", "slide") == tmp_path / "clam" / "h5_files" / "slide.h5"


def test_which_features_and_bad_bags(tmp_path, bag):
    several = invoke("export", bag, "--to", "trident", "--out", tmp_path / "a")
    assert several.exit_code == 1 and "several feature sets (enc-a, enc-b); choose one with --encoder" in \
        " ".join(several.output.split())
    missing = invoke("export", bag, "--to", "trident", "--out", tmp_path / "b", "-e", "uni")
    assert missing.exit_code == 1 and "no features of encoder 'uni'" in " ".join(missing.output.split())

    bare = tmp_path / "bare.h5"
    with h5py.File(bag) as src, h5py.File(bare, "w") as dst:       # a bag before `pathology embed`
        for key in ("coords", "tissue_fraction"):
            src.copy(key, dst)
        dst.attrs.update(src.attrs)
    good = tmp_path / "good"
    good.mkdir()
    (good / "slide.h5").write_bytes(bag.read_bytes())
    (good / "bare.h5").write_bytes(bare.read_bytes())
    (good / "junk.h5").write_bytes(b"not hdf5")
    result = invoke("export", good, "--to", "clam", "--out", tmp_path / "c", "-e", "enc-a")
    assert result.exit_code == 1
    with open(tmp_path / "c" / "status.csv") as fh:
        status = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert status["slide"]["status"] == "done"                  # the good bag went on
    assert "no features of encoder 'enc-a'" in status["bare"]["message"]
    assert "junk.h5" in status["junk"]["message"] and "not a readable bag" in status["junk"]["message"]
    assert sorted(p.name for p in (tmp_path / "c" / "h5_files").iterdir()) == ["slide.h5"]
