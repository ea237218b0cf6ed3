"""``pathology tile --min-tissue``, ``--mask-mpp`` and ``--backend`` on a slide whose tissue is
drawn by hand, so every patch's tissue share is known from the geometry.

The slide: 2048 x 2048 px at 0.5 µm/px (a real pyramidal Aperio SVS), glass with a pink
tissue block covering x < 1216 in the top half and x < 1088 in the bottom half. Patches of
256 px at 0.5 µm/px form an 8 x 8 grid: columns 0-3 are all tissue, column 4 holds 3/4
tissue in rows 0-3 and 1/4 in rows 4-7, columns 5-7 are glass.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from pathology.cli import app
from tests.factories import DATA, stored_patches, write_pyramid_tiff

SIDE, MPP, PATCH = 2048, 0.5, 256


def tile(*args):
    return CliRunner(env={"COLUMNS": "300"}).invoke(app, ["tile", *map(str, args)])


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    root = tmp_path_factory.mktemp("block")
    tissue = np.zeros((SIDE, SIDE), bool)
    tissue[:1024, :1216] = True
    tissue[1024:, :1088] = True
    rng = np.random.default_rng(0)
    image = np.full((SIDE, SIDE, 3), (242, 242, 240), np.uint8)
    pink = np.clip(np.array([214, 140, 190]) + rng.normal(0, 12, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
    image[tissue] = pink[tissue]
    path = write_pyramid_tiff(root / "block.svs", image, downsamples=(1, 4, 16), mpp=MPP)
    return path, tissue


def expected_share(column: int, row: int) -> float:
    """Tissue share of grid patch (column, row) from the drawn geometry."""
    if column < 4:
        return 1.0
    if column == 4:
        return 0.75 if row < 4 else 0.25
    return 0.0


def bag(folder):
    with h5py.File(folder / "block.h5") as f:
        return {"coords": f["coords"][:], "tissue_fraction": f["tissue_fraction"][:],
                "patches": stored_patches(folder / "block.h5"), "mask": f["tissue_mask"][:].astype(bool),
                "thumbnail": f["thumbnail"][:],
                "tiling": json.loads(f.attrs["tiling"]), "mpp_source": f.attrs["mpp_source"]}


@pytest.mark.parametrize("min_tissue, kept", [(0.0, 64), (0.1, 40), (0.5, 36), (0.9, 32)])
def test_min_tissue_keeps_the_patches_with_at_least_that_share(block, tmp_path, min_tissue, kept):
    path, _ = block
    result = tile(path, "--out", tmp_path, "--min-tissue", min_tissue)
    assert result.exit_code == 0, result.output
    b = bag(tmp_path)
    cells = [(int(x) // PATCH, int(y) // PATCH) for x, y in b["coords"]]
    truth = {(c, r) for c in range(8) for r in range(8) if min_tissue == 0 or expected_share(c, r) >= min_tissue}
    assert len(cells) == kept and set(cells) == truth                 # 0 keeps every grid position
    assert (b["coords"] % PATCH == 0).all()
    shares = np.array([expected_share(c, r) for c, r in cells])
    # the measured share of each kept patch is the drawn one (the mask reaches ~8 µm past the drawn edge)
    np.testing.assert_allclose(b["tissue_fraction"], shares, atol=0.15)
    assert b["tiling"]["params"]["grid"]["min_tissue"] == min_tissue


@pytest.mark.parametrize("mask_mpp", [2.0, 8.0, 32.0])
def test_mask_mpp_sets_the_resolution_of_the_tissue_mask(block, tmp_path, mask_mpp):
    path, tissue = block
    result = tile(path, "--out", tmp_path, "--mask-mpp", mask_mpp)
    assert result.exit_code == 0, result.output
    b = bag(tmp_path)
    ds = int(mask_mpp / MPP)                                          # level-0 px per mask px
    assert b["mask"].shape == b["thumbnail"].shape[:2] == (SIDE // ds, SIDE // ds)
    assert b["tiling"]["mask_downsample"] == [ds, ds] and b["tiling"]["params"]["tissue"]["mask_mpp"] == mask_mpp
    # the mask is the drawn tissue at that resolution (block majority of the truth)
    truth = tissue.reshape(SIDE // ds, ds, SIDE // ds, ds).mean(axis=(1, 3)) >= 0.5
    iou = (b["mask"] & truth).sum() / (b["mask"] | truth).sum()
    assert iou > 0.93, iou
    area = b["mask"].sum() * mask_mpp ** 2                            # µm²
    assert area == pytest.approx(tissue.sum() * MPP ** 2, rel=0.05)
    assert len(b["coords"]) == 36                                     # the default --min-tissue 0.5


@pytest.mark.parametrize("backend, extra, source", [
    ("openslide", [], "openslide aperio metadata"),
    ("tiffslide", [], "tiffslide aperio metadata"),
    ("image", ["--mpp", MPP], "override"),                            # PIL knows no Aperio metadata
])
def test_backend_is_used_and_recorded_and_reads_the_same_pixels(block, tmp_path, backend, extra, source):
    path, _ = block
    result = tile(path, "--out", tmp_path, "--backend", backend, "--compression", "none", *extra)  # exact pixels
    assert result.exit_code == 0, result.output
    b = bag(tmp_path)
    assert b["tiling"]["backend"] == backend and b["mpp_source"] == source
    level0 = tifffile.imread(path, key=0)                             # an independent decoder of the same file
    assert len(b["coords"]) == 36
    for (x, y), patch in zip(b["coords"], b["patches"]):
        assert np.abs(patch.astype(np.float32) - level0[y:y + PATCH, x:x + PATCH]).mean() < 1.0


def test_image_backend_without_mpp_and_a_backend_that_cannot_read_the_file_fail_the_slide(block, tmp_path):
    path, _ = block
    result = tile(path, "--out", tmp_path / "a", "--backend", "image")
    assert result.exit_code == 1 and "no µm/px in the slide's metadata; pass --mpp" in result.output
    png = DATA / "scikit-image" / "ihc.png"
    result = tile(png, "--out", tmp_path / "b", "--backend", "openslide", "--mpp", MPP)
    assert result.exit_code == 1 and "OpenSlide cannot open it" in result.output
    assert tile(png, "--out", tmp_path / "c", "--backend", "image", "--mpp", MPP).exit_code == 0


def test_an_unknown_backend_is_bad_input(block, tmp_path):
    path, _ = block
    result = tile(path, "--out", tmp_path, "--backend", "bioformats")
    assert result.exit_code == 2 and "bioformats" in result.output and not tmp_path.joinpath("block.h5").exists()
