"""GeoJSON regions of interest (QuPath's export): reading, rasterizing, point and box tests, and
finding each slide's file. Expected areas are the polygons' own geometry, worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pathology.errors import InputError
from pathology.roi import ROIError, read_roi, roi_source

SQUARE_WITH_HOLE = [[[100, 100], [900, 100], [900, 700], [100, 700], [100, 100]],     # 800 x 600
                    [[300, 300], [500, 300], [500, 500], [300, 500], [300, 300]]]     # hole 200 x 200
TRIANGLE = [[[1000, 1000], [1200, 1000], [1200, 1100], [1000, 1000]]]                 # legs 200, 100


def feature(geometry: dict, **props) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def qupath_file(tmp_path, features, name="slide.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def tumour_and_triangle(tmp_path, name="slide.geojson"):
    return qupath_file(tmp_path, [
        feature({"type": "Polygon", "coordinates": SQUARE_WITH_HOLE}, objectType="annotation",
                classification={"name": "Tumor", "color": [200, 0, 0]}),
        feature({"type": "MultiPolygon", "coordinates": [TRIANGLE]}, objectType="annotation",
                classification={"name": "Stroma"}),
        feature({"type": "Point", "coordinates": [5, 5]}, objectType="annotation"),
        feature({"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 0]]]}, objectType="detection"),
    ], name)


def test_polygons_holes_and_multipolygons_rasterize_to_their_area(tmp_path):
    roi = read_roi(tumour_and_triangle(tmp_path))
    # the point has no area and the detection is not a region: two polygons remain
    assert len(roi.polygons) == 2 and len(roi.polygons[0].holes) == 1
    expected = 800 * 600 - 200 * 200 + 200 * 100 / 2
    assert roi.area_px() == pytest.approx(expected)
    # axis-aligned edges on multiples of 4: exact at downsample 1 and 4 for the square with its hole
    square = read_roi(qupath_file(tmp_path, [feature({"type": "Polygon", "coordinates": SQUARE_WITH_HOLE})], "s.json"))
    assert square.mask((1300, 1200), 1).sum() == 800 * 600 - 200 * 200
    assert square.mask((1300, 1200), 4).sum() * 16 == 800 * 600 - 200 * 200
    # the triangle's slanted edge: within one pixel per pixel of perimeter
    full = roi.mask((1300, 1200), 1)
    perimeter = 200 + 100 + math.hypot(200, 100)
    assert abs(full.sum() - expected) <= perimeter
    assert roi.describe()["classes"] == ["Stroma", "Tumor"] and len(roi.sha256) == 64


def test_points_and_boxes(tmp_path):
    roi = read_roi(tumour_and_triangle(tmp_path))
    x = np.array([50, 150, 400, 899, 1150, 1190, 1100])
    y = np.array([50, 150, 400, 699, 1040, 1090, 1080])
    # outside, inside, in the hole, inside at the corner, in the triangle, in it, below its hypotenuse
    assert roi.contains(x, y).tolist() == [False, True, False, True, True, True, False]
    boxes = np.array([[100, 100], [300, 300], [0, 0], [200, 200]])
    fractions = roi.box_fractions(boxes, (200, 200), 4)
    assert fractions.tolist() == pytest.approx([1.0, 0.0, 0.25, 0.75])
    # a box mask at any origin and downsample agrees with the point test at its pixel centres
    mask = roi.box_mask(250, 250, 100, 60, (3.0, 2.0))
    cols, rows = np.meshgrid(250 + (np.arange(100) + 0.5) * 3, 250 + (np.arange(60) + 0.5) * 2)
    assert (mask == roi.contains(cols, rows)).all() and 0 < mask.mean() < 1


def test_other_geojson_shapes_and_class_filter(tmp_path):
    geometry = {"type": "Polygon", "coordinates": SQUARE_WITH_HOLE}
    bare_list = tmp_path / "list.geojson"          # older QuPath exports: a JSON array of features
    bare_list.write_text(json.dumps([feature(geometry)]))
    bare_geometry = tmp_path / "geometry.geojson"
    bare_geometry.write_text(json.dumps({"type": "GeometryCollection", "geometries": [geometry]}))
    single = tmp_path / "feature.geojson"
    single.write_text(json.dumps(feature(geometry)))
    for path in (bare_list, bare_geometry, single):
        assert read_roi(path).area_px() == pytest.approx(800 * 600 - 200 * 200)
    both = tumour_and_triangle(tmp_path)
    assert read_roi(both, classes=["tumor"]).area_px() == pytest.approx(800 * 600 - 200 * 200)
    with pytest.raises(ROIError, match="of class Necrosis"):
        read_roi(both, classes=["Necrosis"])


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "feature 0 is not a GeoJSON object"),
    ('"text"', "not GeoJSON"),
    ('{"type": "Topology"}', "unknown GeoJSON type 'Topology'"),
    ('{"type": "FeatureCollection"}', "without a 'features' list"),
    ('{"type": "Feature", "geometry": null, "properties": {}}', "has no geometry"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}', "at least 3 distinct points"),
    ('{"type": "Polygon", "coordinates": [[["a", 0], [1, 1], [2, 0]]]}', r"not \[x, y\] number pairs"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1e999, 1], [2, 0]]]}', "NaN or infinity"),
    ('{"type": "MultiPolygon", "coordinates": []}', "MultiPolygon without coordinates"),
    ('{"type": "LineString", "coordinates": [[0, 0], [5, 5]]}', "holds no Polygon or MultiPolygon"),
])
def test_bad_geojson_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(ROIError, match=message) as err:
        read_roi(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_roi_outside_the_slide_is_refused(tmp_path):
    roi = read_roi(tumour_and_triangle(tmp_path))
    roi.check_within((2000, 2000))
    with pytest.raises(ROIError, match="lies outside the slide"):
        roi.check_within((90, 90))


def test_each_slide_finds_its_roi(tmp_path):
    rois = tmp_path / "rois"
    rois.mkdir()
    one = tumour_and_triangle(rois, "a.geojson")
    # one file for one slide
    assert roi_source(one, ["a.svs"], ["a"]).path_for("a") == one
    with pytest.raises(InputError, match="one file for 2 slides"):
        roi_source(one, ["a.svs", "b.svs"], ["a", "b"])
    # a folder of <slide_id>.geojson: every slide must have one
    assert roi_source(rois, ["x"], ["a"]).path_for("a") == one
    with pytest.raises(InputError, match="no b.geojson for slide 'b'"):
        roi_source(rois, ["x"], ["a", "b"])
    # a manifest's roi_path column, relative to the manifest; an empty cell means no ROI
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,slide_path,roi_path\na,a.svs,rois/a.geojson\nb,b.svs,\n")
    source = roi_source(None, [str(manifest)], ["a", "b"])
    assert source.path_for("a") == one and source.path_for("b") is None and source.load("b") is None
    assert source.load("a").area_px() == pytest.approx(800 * 600 - 200 * 200 + 200 * 100 / 2)
    with pytest.raises(InputError, match="both name ROIs"):
        roi_source(rois, [str(manifest)], ["a", "b"])
    manifest.write_text("slide_id,slide_path,roi_path\na,a.svs,rois/missing.geojson\n")
    with pytest.raises(InputError, match=r"manifest.csv row 2, column 'roi_path': ROI file 'rois/missing.geojson' "):
        roi_source(None, [str(manifest)], ["a"])
