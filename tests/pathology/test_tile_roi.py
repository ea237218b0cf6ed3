"""`pathology tile --roi` and the manifest's per-slide columns (`roi_path`, `mpp`) on real files.

The slides are real pyramidal TIFFs covered with tissue everywhere, so what the tiler keeps is
decided by the ROI alone; the expected patches come from the polygon geometry, measured by a
second implementation (matplotlib's point-in-polygon test on a fine grid of points in each
patch), not by the rasterization the tiler uses.
"""

from __future__ import annotations

import csv
import hashlib
import json

import h5py
import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image
from typer.testing import CliRunner

from pathology.bag import read_attrs
from pathology.cli import app
from pathology.qc import ROI_COLOUR
from tests.factories import write_pyramid_tiff

runner = CliRunner()
SIDE = 2048          # level-0 pixels, 0.5 µm/px
PATCH = 128          # patch side at 0.5 µm/px = level-0 pixels


def tile(*args):
    return runner.invoke(app, ["tile", *map(str, args)])


def tissue_slide(path, seed=0, side=SIDE, mpp=0.5):
    """A pink, textured slide: tissue everywhere (the tissue detector keeps all of it)."""
    rng = np.random.default_rng(seed)
    image = np.empty((side, side, 3), np.uint8)
    image[...] = (200, 120, 170)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    return write_pyramid_tiff(path, image, downsamples=(1, 4), mpp=mpp)


def roi_file(path, *polygons):
    """A QuPath export: one annotation per polygon, each a list of rings (outer ring, then holes)."""
    features = [{"type": "Feature", "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
                 "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]] for ring in rings]}}
                for rings in polygons]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def share_inside(corners, polygons, size=PATCH, k=32):
    """Share of each patch inside the polygons (holes excluded), from k x k sample points."""
    offsets = (np.arange(k) + 0.5) * size / k
    gx, gy = np.meshgrid(offsets, offsets)
    shares = []
    for x, y in corners:
        pts = np.column_stack([x + gx.ravel(), y + gy.ravel()])
        inside = np.zeros(len(pts), bool)
        for outer, *holes in polygons:
            hit = MplPath(outer).contains_points(pts)
            for hole in holes:
                hit &= ~MplPath(hole).contains_points(pts)
            inside |= hit
        shares.append(inside.mean())
    return np.array(shares)


def all_corners(side=SIDE):
    return np.array([(x, y) for y in range(0, side - PATCH + 1, PATCH) for x in range(0, side - PATCH + 1, PATCH)])


# A slanted pentagon with a square hole, and a separate triangle: level-0 pixels, off the patch grid.
PENTAGON = [[300, 250], [1500, 180], [1700, 1100], [900, 1500], [250, 1000]]
HOLE = [[700, 500], [1150, 500], [1150, 950], [700, 950]]
TRIANGLE = [[1300, 1500], [1950, 1600], [1400, 2000]]
POLYGONS = [[PENTAGON, HOLE], [TRIANGLE]]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return tissue_slide(tmp_path_factory.mktemp("roi") / "slide.tiff")


def kept(bag):
    with h5py.File(bag) as f:
        return f["coords"][:], f["tissue_fraction"][:]


def test_only_patches_inside_the_roi_are_kept_and_holes_are_left_out(tmp_path, slide):
    roi = roi_file(tmp_path / "slide.geojson", *POLYGONS)
    out = tmp_path / "bags"
    result = tile(slide, "--out", out, "--roi", roi, "--patch-size", PATCH, "--min-tissue", 0.5)
    assert result.exit_code == 0, result.output
    coords, fractions = kept(out / "slide.h5")
    truth = share_inside(all_corners(), POLYGONS)
    expected = {tuple(c) for c, s in zip(all_corners(), truth) if s >= 0.6}
    excluded = {tuple(c) for c, s in zip(all_corners(), truth) if s < 0.4}
    got = {tuple(c) for c in coords}
    assert expected <= got, sorted(expected - got)          # every patch well inside is kept ...
    assert not got & excluded, sorted(got & excluded)        # ... none well outside, nor in the hole
    assert len(expected) > 30
    hole_patches = {tuple(c) for c in all_corners() if 700 <= c[0] <= 1150 - PATCH and 500 <= c[1] <= 950 - PATCH}
    assert hole_patches and not got & hole_patches           # the hole holds whole patches: none kept
    # the stored tissue share is the share of tissue inside the ROI
    by_corner = dict(zip(map(tuple, all_corners()), truth))
    np.testing.assert_allclose(fractions, [by_corner[tuple(c)] for c in coords], atol=0.08)

    attrs = read_attrs(out / "slide.h5")
    recorded = attrs["tiling"]["roi"]
    assert recorded["path"] == str(roi) and recorded["sha256"] == hashlib.sha256(roi.read_bytes()).hexdigest()
    assert recorded["polygons"] == 2 and recorded["holes"] == 1

    picture = np.asarray(Image.open(out / "qc" / "slide.png").convert("RGB"))
    assert np.all(picture == ROI_COLOUR, axis=-1).sum() > 500    # the ROI is drawn on the QC picture

    # no ROI: the whole slide is tissue, every patch kept
    whole = tile(slide, "--out", tmp_path / "whole", "--patch-size", PATCH)
    assert whole.exit_code == 0, whole.output
    assert len(kept(tmp_path / "whole" / "slide.h5")[0]) == len(all_corners())


def test_min_tissue_zero_keeps_every_patch_touching_the_roi(tmp_path, slide):
    roi = roi_file(tmp_path / "slide.geojson", [TRIANGLE])
    out = tmp_path / "bags"
    assert tile(slide, "--out", out, "--roi", roi, "--patch-size", PATCH, "--min-tissue", 0).exit_code == 0
    got = {tuple(c) for c in kept(out / "slide.h5")[0]}
    truth = share_inside(all_corners(), [[TRIANGLE]])
    assert {tuple(c) for c, s in zip(all_corners(), truth) if s > 0.05} <= got
    assert not got & {tuple(c) for c, s in zip(all_corners(), truth) if s == 0 and _far(c, TRIANGLE)}


def _far(corner, ring, margin=40):
    """Whether a patch lies more than ``margin`` px outside the ring's bounding box (no rasterization doubt)."""
    xs, ys = zip(*ring)
    x, y = corner
    return x + PATCH < min(xs) - margin or x > max(xs) + margin or y + PATCH < min(ys) - margin or y > max(ys) + margin


def test_a_rerun_skips_the_same_roi_and_retiles_another(tmp_path, slide):
    roi = roi_file(tmp_path / "slide.geojson", *POLYGONS)
    out = tmp_path / "bags"
    args = (slide, "--out", out, "--roi", roi, "--patch-size", PATCH)
    assert tile(*args).exit_code == 0
    first = kept(out / "slide.h5")[0]
    roi.write_text(json.dumps(json.loads(roi.read_text()), indent=2))       # same geometry, other bytes
    assert "0 done, 1 skipped" in tile(*args).output
    roi_file(roi, [TRIANGLE])                                                # another ROI
    again = tile(*args)
    assert "1 done, 0 skipped" in again.output, again.output
    second = kept(out / "slide.h5")[0]
    assert len(second) < len(first) and read_attrs(out / "slide.h5")["tiling"]["roi"]["polygons"] == 1
    assert "1 done, 0 skipped" in tile(slide, "--out", out, "--patch-size", PATCH).output   # ROI removed
    assert len(kept(out / "slide.h5")[0]) == len(all_corners())


def test_rois_from_a_folder_and_from_a_manifest_column(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i, name in enumerate(("a", "b")):
        tissue_slide(slides / f"{name}.tiff", seed=i, side=1024)
    left = [[0, 0], [500, 0], [500, 1024], [0, 1024]]            # patches with x < 512 (x + 128 <= 500: 3 columns)
    bottom = [[0, 600], [1024, 600], [1024, 1024], [0, 1024]]    # patches with y >= 640
    rois = tmp_path / "rois"
    rois.mkdir()
    roi_file(rois / "a.geojson", [left])
    roi_file(rois / "b.geojson", [bottom])
    out = tmp_path / "bags"
    result = tile(slides, "--out", out, "--roi", rois, "--patch-size", PATCH)
    assert result.exit_code == 0, result.output
    a, b = kept(out / "a.h5")[0], kept(out / "b.h5")[0]
    assert set(a[:, 0]) == {0, 128, 256, 384} and len(a) == 4 * 8        # x 384-512: 116/128 inside
    assert set(b[:, 1]) == {640, 768, 896} and len(b) == 3 * 8           # y 512-640: 40/128 inside, dropped

    # a manifest's roi_path column (relative to the manifest); an empty cell tiles the whole slide
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,slide_path,roi_path\na,slides/a.tiff,rois/b.geojson\nb,slides/b.tiff,\n")
    result = tile(manifest, "--out", tmp_path / "m", "--patch-size", PATCH)
    assert result.exit_code == 0, result.output
    assert set(kept(tmp_path / "m" / "a.h5")[0][:, 1]) == {640, 768, 896}
    assert len(kept(tmp_path / "m" / "b.h5")[0]) == 64

    # a folder without one slide's file, or one file for two slides: one line each, nothing done
    (rois / "b.geojson").unlink()
    missing = tile(slides, "--out", tmp_path / "x", "--roi", rois)
    assert missing.exit_code == 2 and "no b.geojson for slide 'b'" in missing.output
    one = tile(slides, "--out", tmp_path / "x", "--roi", rois / "a.geojson")
    assert one.exit_code == 2 and "is one file for 2 slides" in " ".join(one.output.split())
    assert not (tmp_path / "x").exists()


def test_bad_rois_are_one_line_naming_the_file(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i, name in enumerate(("a", "b")):
        tissue_slide(slides / f"{name}.tiff", seed=i, side=1024)
    rois = tmp_path / "rois"
    rois.mkdir()
    roi_file(rois / "a.geojson", [[[0, 0], [500, 0], [500, 500]]])
    (rois / "b.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                    '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 9]]]}}]}')
    bad = tile(slides, "--out", tmp_path / "out", "--roi", rois)
    assert bad.exit_code == 2 and not (tmp_path / "out").exists()       # stopped before any slide
    lines = [line for line in bad.output.splitlines() if "b.geojson" in line]
    assert len(lines) == 1 and "at least 3 distinct points" in lines[0]

    roi_file(rois / "b.geojson", [[[5000, 5000], [6000, 5000], [6000, 6000]]])   # beyond the 1024-px slide
    outside = tile(slides, "--out", tmp_path / "out", "--roi", rois)
    assert outside.exit_code == 1, outside.output                      # that slide failed, the other went on
    with open(tmp_path / "out" / "status.csv") as fh:
        status = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert status["a"]["status"] == "done" and status["b"]["status"] == "failed"
    assert "b.geojson" in status["b"]["message"] and "lies outside the slide (1024x1024 px)" in status["b"]["message"]
    assert not (tmp_path / "out" / "b.h5").exists()


def test_the_manifest_mpp_column_sets_each_slide_resolution(tmp_path):
    rng = np.random.default_rng(0)
    image = np.clip(np.array((200, 120, 170)) + rng.normal(0, 12, (600, 800, 3)), 0, 255).astype(np.uint8)
    for name in ("p", "q"):
        Image.fromarray(image).save(tmp_path / f"{name}.png")                  # plain images: no µm/px
    no_mpp = tile(tmp_path / "p.png", "--out", tmp_path / "none")
    assert no_mpp.exit_code == 1 and "mpp column in the manifest" in " ".join(no_mpp.output.split())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,slide_path,mpp\np,p.png,0.5\nq,q.png,0.25\n")
    result = tile(manifest, "--out", tmp_path / "bags", "--patch-size", PATCH, "--mpp", 1.0)
    assert result.exit_code == 0, result.output
    for name, mpp in (("p", 0.5), ("q", 0.25)):              # the slide's own value wins over --mpp
        attrs = read_attrs(tmp_path / "bags" / f"{name}.h5")
        assert attrs["mpp_level0"] == mpp and attrs["tiling"]["params"]["mpp"] == mpp
        with h5py.File(tmp_path / "bags" / f"{name}.h5") as f:
            assert f["coords"].attrs["patch_size_level0"] == round(PATCH * 0.5 / mpp)

    manifest.write_text("slide_id,slide_path,mpp\np,p.png,0.5\nq,q.png,fast\n")
    bad = tile(manifest, "--out", tmp_path / "bad")
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if "manifest.csv" in line]
    assert len(lines) == 1 and "manifest.csv row 3, column 'mpp': 'fast' is not a number" in lines[0]
    manifest.write_text('slide_id,slide_path,mpp\np,p.png,-1\nq,q.png,"0,25"\n')   # a decimal comma is read
    bad = tile(manifest, "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "row 2, column 'mpp': '-1' is not a plausible µm/px" in bad.output
    assert "row 3" not in bad.output
    assert not (tmp_path / "bad").exists()
