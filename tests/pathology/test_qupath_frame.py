"""QuPath-exact coordinates for slides whose level 0 does not start at the origin.

The slide is a real generic tiled TIFF whose first tile column and row pair are unwritten: OpenSlide
reports ``openslide.bounds-x/y`` for it (tests/factories.py, write_offset_tiff), as it does for
MIRAX. QuPath's OpenSlide server crops to those bounds (OpenslideImageServer.java: ``readTile``
adds boundsX/boundsY), so QuPath's pixel (x, y) is OpenSlide's (x + bounds-x, y + bounds-y): the
tests read "what QuPath shows" that way, with OpenSlide, and check that each GeoJSON patch lands
on the pixels it was cut from."""

from __future__ import annotations

import json

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from typer.testing import CliRunner

from pathology.cli import app
from pathology.heatmap.geojson import tissue_features
from pathology.roi import ROI, Polygon
from pathology.slide import open_slide
from pathology.slide.qupath import origin_from_properties
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field
from tests.factories import write_offset_tiff, write_ome_tiff

runner = CliRunner()
BOUNDS = (512, 256)  # 2 columns and 1 row of 256-px tiles missing


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("qupath")
    truth = write_synthetic_slide(root / "src.svs", SynthConfig(width=4096, height=3072, mpp=0.25, seed=2))
    with tifffile.TiffFile(truth.slide) as tif:
        pixels = tif.series[0].levels[0].asarray()
    (root / "in").mkdir()
    offset = write_offset_tiff(root / "in" / "mrxs-like.tif", pixels, columns=2, rows=1)
    return root, offset, pixels


def qupath_pixels(path, x: float, y: float, w: int, h: int) -> np.ndarray:
    """What QuPath shows at its (x, y): OpenSlide's level 0 at (x + bounds-x, y + bounds-y)."""
    with openslide.OpenSlide(str(path)) as osr:
        bx, by = int(osr.properties["openslide.bounds-x"]), int(osr.properties["openslide.bounds-y"])
        return np.asarray(osr.read_region((int(x) + bx, int(y) + by), 0, (w, h)).convert("RGB"))


def test_the_offset_is_openslides_bounds_whoever_reads_the_file(slides, tmp_path):
    _, offset, pixels = slides
    with openslide.OpenSlide(str(offset)) as osr:
        assert (osr.properties["openslide.bounds-x"], osr.properties["openslide.bounds-y"]) == ("512", "256")
    for backend in ("auto", "openslide", "tiffslide"):
        with open_slide(offset, backend=backend) as slide:
            assert slide.qupath_origin == BOUNDS, backend
    # QuPath reads OME-TIFF with Bio-Formats: no offset
    with open_slide(write_ome_tiff(tmp_path / "o.ome.tif", pixels[:1024, :1024], (1, 4))) as slide:
        assert slide.qupath_origin == (0, 0)


@pytest.mark.parametrize(("props", "origin"), [
    ({"openslide.bounds-x": "10", "openslide.bounds-y": "20", "openslide.bounds-width": "5",
      "openslide.bounds-height": "6"}, (10, 20)),
    ({"openslide.bounds-x": "10", "openslide.bounds-y": "20", "openslide.bounds-width": "5"}, (0, 0)),  # all four
    ({"openslide.bounds-x": "10.5", "openslide.bounds-y": "20", "openslide.bounds-width": "5",
      "openslide.bounds-height": "6"}, (0, 0)),  # Integer.parseInt fails: QuPath falls back to no offset
])
def test_origin_follows_qupaths_rule(props, origin):
    assert origin_from_properties(props) == origin


def test_heatmap_geojson_lands_on_the_patches_pixels_in_qupath(slides, tmp_path):
    _, offset, _ = slides
    bags = tmp_path / "bags"
    result = runner.invoke(app, ["tile", str(offset), "--out", str(bags), "--target-mpp", "0.25",
                                 "--patch-size", "256", "--compression", "none", "-q"])  # lossless: pixels compared
    assert result.exit_code == 0, result.output
    bag = bags / "mrxs-like.h5"
    with h5py.File(bag) as f:
        coords, patches = f["coords"][:], f["patches"][:]
        assert json.loads(f.attrs["tiling"])["qupath_origin"] == list(BOUNDS)
    assert len(coords) > 10 and coords[:, 0].min() >= BOUNDS[0] and coords[:, 1].min() >= BOUNDS[1]
    attention = tmp_path / "attention.h5"
    with h5py.File(attention, "w") as f:
        f["coords"] = coords
        f["attention/tumor"] = np.linspace(0, 1, len(coords), dtype=np.float32)
    result = runner.invoke(app, ["heatmap", "--bag", str(bag), "--attention", str(attention), "--out",
                                 str(tmp_path / "maps"), "--top-k", "0"])
    assert result.exit_code == 0, result.output
    geo = json.loads((tmp_path / "maps" / "mrxs-like" / "tumor.geojson").read_text())
    detections = [f for f in geo["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == len(coords)
    for feature, patch, (x, y) in list(zip(detections, patches, coords))[:: max(1, len(coords) // 8)]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        qx, qy = ring[:, 0].min(), ring[:, 1].min()
        assert (qx, qy) == (x - BOUNDS[0], y - BOUNDS[1])
        # the pixels QuPath shows under the detection are the patch's
        np.testing.assert_array_equal(qupath_pixels(offset, qx, qy, 256, 256), patch)
    # the tissue outline is in the same frame: the file-frame outline moved by the bounds
    shown = [f["geometry"]["coordinates"] for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    with h5py.File(bag) as f:
        file_frame = tissue_features(f["tissue_mask"][:].astype(bool), np.asarray(f["thumbnail"].attrs["downsample"]))
    assert len(shown) == len(file_frame) > 0
    for rings, feature in zip(shown, file_frame, strict=True):
        for ring, truth in zip(rings, feature["geometry"]["coordinates"], strict=True):
            np.testing.assert_allclose(np.asarray(ring) + BOUNDS, truth, atol=0.11)


def test_tiling_keeps_the_patches_under_an_roi_drawn_in_qupath(slides, tmp_path):
    """A rectangle drawn in QuPath (its frame) on the offset slide: every kept patch, moved into
    QuPath's frame, lies inside it, and the patches just outside it are not kept."""
    _, offset, _ = slides
    x0, y0, x1, y1 = 1024, 512, 2560, 1792          # QuPath pixels, on 256-px patch boundaries of the file frame
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}))
    bags = tmp_path / "bags"
    result = runner.invoke(app, ["tile", str(offset), "--out", str(bags), "--target-mpp", "0.25",
                                 "--patch-size", "256", "--min-tissue", "0.9", "--roi", str(roi), "-q"])
    assert result.exit_code == 0, result.output
    with h5py.File(bags / "mrxs-like.h5") as f:
        coords = f["coords"][:] - np.asarray(BOUNDS)  # QuPath's frame
    assert len(coords) > 0
    assert coords[:, 0].min() >= x0 and coords[:, 1].min() >= y0
    assert (coords[:, 0] + 256).max() <= x1 and (coords[:, 1] + 256).max() <= y1


def test_an_roi_drawn_in_qupath_is_moved_to_the_files_level_0():
    square = np.array([[0, 0], [100, 0], [100, 50], [0, 50]], np.float64)
    roi = ROI((Polygon(square, (square / 10 + 20,)),), source="a.geojson", sha256="x")
    moved = roi.translated(*BOUNDS)
    assert moved.bounds == (512, 256, 612, 306) and moved.sha256 == "x"
    np.testing.assert_array_equal(moved.polygons[0].holes[0], square / 10 + 20 + BOUNDS)
    assert roi.translated(0, 0) is roi


def test_ihc_reads_a_qupath_roi_and_writes_qupath_nuclei_in_the_same_frame(tmp_path):
    """A ROI drawn in QuPath on the offset slide (QuPath's pixels) scores the cells under it; the
    nuclei GeoJSON comes back in QuPath's frame, the cells table in the file's level 0."""
    cfg = CellFieldConfig(width=1024, height=1024, mpp=0.5, seed=4, layout="field")
    write_cell_field(tmp_path / "src.svs", cfg)
    with tifffile.TiffFile(tmp_path / "src.svs") as tif:
        pixels = tif.series[0].levels[0].asarray()
    slide = write_offset_tiff(tmp_path / "field.tif", pixels, columns=1, rows=1, mpp=0.5)  # bounds (256, 256)
    roi = tmp_path / "field.geojson"   # QuPath's (0, 0)-(400, 400): the file's (256, 256)-(656, 656)
    roi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]]}}]}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["ihc", str(slide), "--marker", "ki67", "-o", str(out), "--roi", str(roi)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "field.json").read_text())
    assert record["qupath_origin"] == [256, 256] and record["roi"]["bounds_level0"] == [256, 256, 656, 656]
    with open(out / "cells" / "field.csv") as fh:
        cells = np.array([[float(v) for v in line.split(",")[:2]] for line in fh.read().splitlines()[1:]])
    assert len(cells) > 20
    assert cells.min() >= 255 and cells.max() <= 657              # the file's level 0, inside the moved ROI
    geo = json.loads((out / "cells" / "field.geojson").read_text())
    centres = np.array([np.asarray(f["geometry"]["coordinates"][0])[:-1].mean(0) for f in geo["features"]])
    np.testing.assert_allclose(np.sort(centres, 0), np.sort(cells - 256, 0), atol=0.2)  # QuPath's frame
