"""`pathology view` of IHC results over HTTP: the nuclei-by-class overlay tiles (on the slide's own
DeepZoom grid), the Ki-67 hotspot and the scored ROI.

Where the nuclei are comes from two independent sources: a cells table written by hand (exact
pixels: each nucleus is drawn at its place, in its class colour, the higher class on top), and the
synthetic field generator's own record of every cell it drew, through `pathology ihc` (the
overlay shows each true nucleus in its true class, as far as the scorer got it right)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree
from skimage.draw import polygon as fill_polygon
from typer.testing import CliRunner

from pathology.cli import app
from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field
from pathology.view.server import ViewServer
from tests.pathology.test_view import get, make_ihc_folder

# the IHC QC picture's class colours (pathology/ihc/report/qc.py), written out: the overlay must use these
NEGATIVE, WEAK, MODERATE, STRONG = (30, 90, 255), (255, 230, 0), (255, 140, 0), (230, 0, 30)
COLOURS = [NEGATIVE, WEAK, MODERATE, STRONG]
MPP = 0.5                       # CellFieldConfig's default
AREA = 50.0                     # µm²: a radius of sqrt(50 / pi) / 0.5 = 7.98 level-0 px
HAND = [                        # x, y, class of hand-placed nuclei
    (60.5, 40.5, 0), (120.5, 40.5, 1), (180.5, 40.5, 2), (60.5, 140.5, 3),
    (300.5, 100.5, 0), (303.5, 100.5, 3),       # overlapping: 3+ drawn over the negative
    (700.3, 430.8, 3),                          # in tile 2_1 of the finest level
    (1500.2, 1000.7, 1),                        # in the last tile
]
ISOLATED = [n for n in HAND if n[0] not in (300.5, 303.5)]


def write_cells(path: Path, nuclei: list[tuple[float, float, int]], area: float = AREA) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y", "class", "dab_od", "area_um2"])
        writer.writerows([x, y, k, 0.1 * k, area] for x, y, k in nuclei)


def png(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


@pytest.fixture(scope="module")
def ihc_dir(tmp_path_factory):
    return make_ihc_folder(tmp_path_factory.mktemp("ihc"))


@pytest.fixture(scope="module")
def hand_dir(ihc_dir, tmp_path_factory):
    """The IHC folder with its cells table replaced by :data:`HAND`."""
    out = tmp_path_factory.mktemp("hand") / "out"
    shutil.copytree(ihc_dir, out)
    write_cells(out / "cells" / "field.csv", HAND)
    return out


@pytest.fixture(scope="module")
def hand(hand_dir):
    with ViewServer(hand_dir, port=0) as server:
        yield server


def levels(server: ViewServer, slide: str = "field") -> tuple[int, int, int]:
    """(DeepZoom levels, width, height) from the nuclei overlay's descriptor."""
    status, headers, body = get(server, f"/api/slides/{slide}/nuclei.dzi")
    assert status == 200 and headers["Content-Type"] == "application/xml"
    image = ET.fromstring(body)
    size = image.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (image.get("TileSize"), image.get("Overlap"), image.get("Format")) == ("254", "1", "png")
    w, h = int(size.get("Width")), int(size.get("Height"))
    return math.ceil(math.log2(max(w, h))) + 1, w, h


def tile(server: ViewServer, level: int, col: int, row: int, slide: str = "field") -> np.ndarray:
    status, headers, body = get(server, f"/api/slides/{slide}/nuclei_files/{level}/{col}_{row}.png")
    assert status == 200, body
    assert headers["Content-Type"] == "image/png" and headers["Cache-Control"] == "max-age=3600"
    return png(body)


def test_the_overlay_has_the_slides_own_tile_grid(hand):
    count, w, h = levels(hand)
    assert (w, h) == (1536, 1024)                                   # the synthetic field's level 0
    slide = ET.fromstring(get(hand, "/slides/field.dzi")[2])
    assert slide[0].get("Width") == "1536" and slide[0].get("Height") == "1024"
    for level, d in ((count - 1, 1), (count - 3, 4), (0, 2 ** (count - 1))):
        zw, zh = math.ceil(w / d), math.ceil(h / d)
        cols, rows = math.ceil(zw / 254), math.ceil(zh / 254)
        # the last tile is the slide's last tile, overlap included; one more is none
        assert tile(hand, level, cols - 1, rows - 1).shape[:2] == (zh - (rows - 1) * 254 + (rows > 1),
                                                                   zw - (cols - 1) * 254 + (cols > 1))
        assert get(hand, f"/api/slides/field/nuclei_files/{level}/{cols}_0.png")[0] == 404
    assert get(hand, f"/api/slides/field/nuclei_files/{count}/0_0.png")[0] == 404


def test_zoomed_in_each_nucleus_is_a_ring_just_outside_it_in_its_class_colour(hand):
    """The finest level (1 level-0 px per pixel): a nucleus of radius 8 px is a ring 8 to 10 px from
    its centre pixel; the nucleus itself stays clear so its stain shows."""
    top = levels(hand)[0] - 1
    for x, y, k in ISOLATED:
        col, row = int(x // 254), int(y // 254)
        x0, y0 = col * 254 - (col > 0), row * 254 - (row > 0)       # the tile's first pixel, overlap included
        pixels = tile(hand, top, col, row)
        cx, cy = int(x - x0), int(y - y0)
        assert pixels[cy, cx, 3] == 0, (x, y)                       # the nucleus: clear
        for dx, dy in ((9, 0), (-9, 0), (0, 9), (0, -9)):           # its ring, on every side
            assert tuple(pixels[cy + dy, cx + dx]) == (*COLOURS[k], 255), (x, y, dx, dy)
        assert pixels[cy, cx + 12, 3] == 0                          # and nothing beyond it


def test_zoomed_out_nuclei_are_discs_where_the_table_puts_them(hand):
    """At 4 level-0 px per pixel a nucleus of radius 8 px is a disc about 2 px in radius around the
    pixel holding its centre: that pixel and its four neighbours are painted, nothing is painted
    farther than 2.5 px from a nucleus, and each painted pixel has the colour of the highest
    class among the nuclei that near it (the higher class is drawn on top)."""
    level = levels(hand)[0] - 3
    pixels = tile(hand, level, 0, 0)
    h, w = pixels.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w]
    top = np.full((h, w), -1)                                       # the highest class within 2.5 px
    for x, y, k in HAND:
        near = np.hypot(cols - x // 4, rows - y // 4) <= 2.5
        top[near] = np.maximum(top[near], k)
    painted = pixels[..., 3] == 255
    assert set(np.unique(pixels[..., 3])) == {0, 255}
    assert painted.any() and not (painted & (top < 0)).any()
    for k, colour in enumerate(COLOURS):
        assert (pixels[painted & (top == k), :3] == colour).all(), k
    for x, y, _ in HAND:
        col, row = int(x // 4), int(y // 4)
        if col < w and row < h:
            assert all(painted[row + dy, col + dx] for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)))
    assert tuple(pixels[int(100.5 // 4), int(300.5 // 4)]) == (*STRONG, 255)    # the pair's shared pixel


@pytest.mark.parametrize("downsample", [32, 512, 2048])
def test_zoomed_far_out_a_pixel_mixes_the_classes_of_its_nuclei(hand, downsample):
    """Where nuclei are under a pixel, a pixel holding nuclei has their class colours averaged by
    count, more opaque the more of it they cover, and the others are clear: at 32 level-0 px per
    pixel (nuclei visited one by one), 512 and 2048 (the whole slide in one pixel; per-bucket sums
    added up)."""
    count, w, h = levels(hand)
    pixels = tile(hand, count - 1 - int(math.log2(downsample)), 0, 0)
    assert pixels.shape[:2] == (math.ceil(h / downsample), math.ceil(w / downsample))
    inside: dict[tuple[int, int], list[int]] = {}
    for x, y, k in HAND:
        inside.setdefault((int(y // downsample), int(x // downsample)), []).append(k)
    for (row, col), classes in inside.items():
        mean = np.mean([COLOURS[k] for k in classes], axis=0)
        assert np.abs(pixels[row, col, :3].astype(float) - mean).max() <= 1, (row, col)
        assert pixels[row, col, 3] > 0
    if downsample == 32:                       # the overlapping pair covers more of its pixel than a lone nucleus
        assert pixels[int(100.5 // 32), int(300.5 // 32), 3] > pixels[int(40.5 // 32), int(180.5 // 32), 3]
    else:                                      # eight nuclei cover under 1 % of a pixel: faint
        assert pixels[0, 0, 3] < 255
    clear = np.ones(pixels.shape[:2], bool)
    clear[tuple(np.array(list(inside)).T)] = False
    assert not pixels[clear, 3].any()


def test_the_overlay_shows_the_generators_nuclei_in_their_true_classes(ihc_dir):
    """The finest level over the whole field, put together from its tiles (neighbours agree where
    they overlap), against the synthetic generator's truth: the ring nearest each true nucleus has
    that nucleus's true class colour, for all but the few the scorer missed or got wrong. The same truth
    moved by half a cell (between nuclei) matches by chance only (0.999 and 0.30 when written)."""
    truth = json.loads((ihc_dir.parent / "slides" / "field.json").read_text())
    with ViewServer(ihc_dir, port=0) as server:
        count, w, h = levels(server)
        whole = np.zeros((h, w, 4), np.uint8)
        for row in range(math.ceil(h / 254)):
            for col in range(math.ceil(w / 254)):
                pixels = tile(server, count - 1, col, row)
                x0, y0 = col * 254 - (col > 0), row * 254 - (row > 0)
                th, tw = pixels.shape[:2]
                if col or row:                                       # the overlap equals the neighbour's pixels
                    seen = whole[y0:y0 + th, x0:x0 + tw]
                    drawn = (np.arange(th)[:, None] < (row > 0)) | (np.arange(tw)[None, :] < (col > 0))
                    assert np.array_equal(seen[drawn], pixels[drawn])
                whole[y0:y0 + th, x0:x0 + tw] = pixels
        info = json.loads(get(server, "/api/slides/field")[2])
    with open(ihc_dir / "cells" / "field.csv") as fh:
        classes = np.array([int(r["class"]) for r in csv.DictReader(fh)])
    record = json.loads((ihc_dir / "field.json").read_text())
    assert [c["count"] for c in info["nuclei"]["classes"]] == np.bincount(classes, minlength=4).tolist() \
        == list(record["class_counts"].values())
    assert [c["colour"] for c in info["nuclei"]["classes"]] == ["#{:02x}{:02x}{:02x}".format(*c) for c in COLOURS]

    painted = np.argwhere(whole[..., 3] == 255) + 0.5                 # pixel centres, (row, col)
    nearest = cKDTree(painted)
    colour_class = {c: k for k, c in enumerate(COLOURS)}
    centres, true_class = np.array(truth["centres"]), np.array(truth["classes"])

    def agreement(shift: float) -> float:
        """Share of true nuclei whose nearest painted pixel (within 14 px: its own ring) has their class colour."""
        distance, i = nearest.query((centres + shift)[:, ::-1], distance_upper_bound=14)
        found = np.isfinite(distance)
        r, c = painted[i[found]].astype(int).T
        shown = np.array([colour_class.get(tuple(rgb), -1) for rgb in whole[r, c, :3].tolist()])
        return float((shown == true_class[found]).sum() / len(centres))

    cell_px = 14.0 / MPP                                             # CellFieldConfig's cell_um
    assert agreement(0.0) >= 0.95
    assert agreement(cell_px / 2) < 0.6


def test_the_tissue_outline_is_the_ihc_tissue_mask_of_the_record(ihc_dir, tmp_path):
    """With the record's tissue parameters made to treat the 768 µm field as a slide (field_um
    100 µm), the outline is the IHC tissue mask: the generator's patch of cells, an ellipse of
    0.44 x the image's width and height about its centre (IoU 0.94 when written); the real record is a field of
    view, scored whole, with no outline (test_view.py)."""
    out = tmp_path / "out"
    shutil.copytree(ihc_dir, out)
    record = json.loads((out / "field.json").read_text())
    record["params"]["tissue"]["field_um"] = 100.0
    (out / "field.json").write_text(json.dumps(record))
    with ViewServer(out, port=0) as server:
        rings = json.loads(get(server, "/api/slides/field")[2])["tissue"]
    assert rings
    scale = 4                                                       # level-0 px per test-mask px
    h, w = 1024 // scale, 1536 // scale
    outline = np.zeros((h, w), bool)
    for ring in rings:                                              # outlines and holes, by even-odd filling
        r = np.asarray(ring) / scale
        rr, cc = fill_polygon(r[:, 1], r[:, 0], (h, w))
        outline[rr, cc] ^= True
    yy, xx = (np.mgrid[0:h, 0:w] + 0.5) * scale
    patch = ((xx - 768) / (0.44 * 1536)) ** 2 + ((yy - 512) / (0.44 * 1024)) ** 2 < 1
    iou = (outline & patch).sum() / (outline | patch).sum()
    assert iou > 0.85, iou


@pytest.mark.parametrize("table, problem", [
    ("x,y,class\n1,2,0\n", "no area_um2 column"),
    ("x,y,class,dab_od,area_um2\n1,2,0,0.1,30\n1,2,7,0.1,30\n", "line 3"),
    ("x,y,class,dab_od,area_um2\n1,2,0,0.1,30\n1,nope,0,0.1,30\n", "nope"),
])
def test_a_cells_table_it_cannot_read_is_refused_with_its_reason(ihc_dir, tmp_path, table, problem):
    out = tmp_path / "out"
    shutil.copytree(ihc_dir, out)
    (out / "cells" / "field.csv").write_text(table)
    with ViewServer(out, port=0) as server:
        status, _, body = get(server, "/api/slides/field/nuclei.dzi")
        assert status == 404 and "field.csv" in body.decode() and problem in body.decode()
        assert get(server, "/api/slides/field/nuclei_files/0/0_0.png")[0] == 404
        assert get(server, "/api/slides/field")[0] == 200            # the rest of the slide still shows


def test_an_empty_cells_table_draws_nothing(ihc_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ihc_dir, out)
    write_cells(out / "cells" / "field.csv", [])
    with ViewServer(out, port=0) as server:
        count = levels(server)[0]
        assert not tile(server, count - 1, 0, 0)[..., 3].any() and not tile(server, 0, 0, 0)[..., 3].any()


def test_only_the_records_own_cells_table_inside_the_folder_is_drawn(hand, hand_dir, tmp_path):
    refused = ["/api/slides/nope/nuclei.dzi", "/api/slides/nope/nuclei_files/0/0_0.png",
               "/api/slides/field/nuclei_files/0/0_0.jpeg", "/api/slides/field/nuclei_files/-1/0_0.png",
               "/api/slides/field/nuclei_files/0/0_0_0.png", "/api/slides/field/nuclei_files/0/%C2%B2_0.png",
               "/api/slides/field/nuclei_files/..%2f0/0_0.png", "/api/slides/..%2ffield/nuclei.dzi",
               "/api/slides/field/nuclei_files/0/0_1.png", "/api/slides/field/nuclei/0/0_0.png"]
    assert {path: get(hand, path)[0] for path in refused} == dict.fromkeys(refused, 404)
    # a record naming a cells table outside the folder: no nuclei layer at all
    out = tmp_path / "out"
    shutil.copytree(hand_dir, out)
    outside = tmp_path / "secret.csv"
    write_cells(outside, HAND)
    record = json.loads((out / "field.json").read_text())
    for name in ("../secret.csv", str(outside)):
        record["outputs"]["cells"] = name
        (out / "field.json").write_text(json.dumps(record))
        with ViewServer(out, port=0) as server:
            assert json.loads(get(server, "/api/slides/field")[2])["nuclei"] is None
            assert get(server, "/api/slides/field/nuclei.dzi")[0] == 404
            assert get(server, "/api/slides/field/nuclei_files/11/0_0.png")[0] == 404


# -- Ki-67: the hotspot and the ROI ---------------------------------------------------------------------------
ROI_SQUARE = [[100, 100], [1100, 100], [1100, 1100], [100, 1100]]


def make_ki67_folder(root: Path) -> Path:
    """`pathology ihc --marker ki67 --roi` on a 1 x 0.8 mm field, 10 % positive, with a 50 %-positive
    circle of 250 µm radius around (300, 300) µm, scored inside a 500 µm square ROI
    (``root/slide.geojson``): into ``root/out``."""
    write_cell_field(root / "slides" / "slide.svs",
                     CellFieldConfig(width=2000, height=1600, mpp=MPP, seed=3, fractions=(0.9, 0.05, 0.03, 0.02),
                                     layout="field", hotspot=(300.0, 300.0, 250.0),
                                     hotspot_fractions=(0.5, 0.2, 0.2, 0.1)))
    (root / "slide.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ROI_SQUARE, ROI_SQUARE[0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}]}))
    out = root / "out"
    result = CliRunner().invoke(app, ["ihc", str(root / "slides"), "--marker", "ki67", "--out", str(out),
                                      "--roi", str(root / "slide.geojson")])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ki67_dir(tmp_path_factory):
    return make_ki67_folder(tmp_path_factory.mktemp("ki67"))


def test_hotspot_and_roi_are_where_the_record_puts_them(ki67_dir):
    record = json.loads((ki67_dir / "slide.json").read_text())
    spot = record["hotspot"]
    with ViewServer(ki67_dir, port=0) as server:
        info = json.loads(get(server, "/api/slides/slide")[2])
    shown = info["ihc"]["hotspot"]
    assert [shown["x"], shown["y"]] == spot["centre_level0"]
    # 0.2 mm² is a circle of 252.3 µm radius: 504.6 level-0 px at 0.5 µm/px
    assert shown["r"] == pytest.approx(math.sqrt(0.2e6 / math.pi) / MPP, abs=0.2)
    assert (shown["index"], shown["cells"], shown["positive"]) == (spot["index"], spot["cells"], spot["positive"])
    assert shown["colour"] == "#e600c8"                             # the QC picture's magenta
    assert info["roi"]["rings"] == [ROI_SQUARE] and info["roi"]["colour"] == "#00c83c" and not info["notes"]
    assert info["nuclei"]["classes"][3]["count"] == record["class_counts"]["strong_3plus"]


def test_the_roi_outline_is_the_file_scored_or_none(ki67_dir, tmp_path):
    """The ROI file is read again only if it is the very file scored (SHA-256); it may have moved
    into --slide DIR; it is never served."""
    root = tmp_path / "copy"
    shutil.copytree(ki67_dir.parent, root)
    out, roi = root / "out", root / "slide.geojson"
    record = json.loads((out / "slide.json").read_text())
    record["roi"]["path"] = str(roi)                                 # the copy's own ROI file
    (out / "slide.json").write_text(json.dumps(record))
    text = roi.read_text()
    roi.write_text(text.replace("1100", "1200"))                     # edited since it was scored
    with ViewServer(out, port=0) as server:
        info = json.loads(get(server, "/api/slides/slide")[2])
        assert info["roi"] is None and any("SHA-256 differs" in n for n in info["notes"])
    roi.write_text(text)
    shutil.move(roi, root / "slides" / "slide.geojson")              # moved beside the slides
    with ViewServer(out, port=0) as server:
        assert json.loads(get(server, "/api/slides/slide")[2])["roi"] is None
    with ViewServer(out, port=0, slides_dir=root / "slides") as server:
        assert json.loads(get(server, "/api/slides/slide")[2])["roi"]["rings"] == [ROI_SQUARE]
        assert get(server, "/slide.geojson")[0] == 404 and get(server, "/slides/slide.geojson")[0] == 404


# -- pathology ihc's QuPath detections: the nuclei the viewer draws, for QuPath ------------------------------------
def test_pathology_ihc_writes_the_nuclei_as_qupath_detections(ihc_dir):
    """`cells/<slide>.geojson`: one QuPath detection per row of the cells table, a polygon of the
    nucleus's area centred on it, classified Negative / 1+ / 2+ / 3+ in the class colours; the
    viewer draws these nuclei as its tiled layer, not as shapes."""
    record = json.loads((ihc_dir / "field.json").read_text())
    assert record["outputs"]["cells_geojson"] == "cells/field.geojson"
    with open(ihc_dir / "cells" / "field.csv") as fh:
        cells = list(csv.DictReader(fh))
    features = json.loads((ihc_dir / "cells" / "field.geojson").read_text(encoding="utf-8"))["features"]
    assert len(features) == len(cells) == record["cells"] > 0
    for cell, feature in zip(cells, features, strict=True):
        props, ring = feature["properties"], np.array(feature["geometry"]["coordinates"][0])
        assert props["objectType"] == "detection" and feature["geometry"]["type"] == "Polygon"
        k = int(cell["class"])
        assert props["classification"] == {"name": ["Negative", "1+", "2+", "3+"][k], "color": list(COLOURS[k])}
        assert props["measurements"] == {"Nucleus: DAB OD (own)": float(cell["dab_od"]),
                                         "Nucleus: Area µm^2": float(cell["area_um2"])}
        assert np.array_equal(ring[0], ring[-1])                                  # closed
        assert np.allclose(ring[:-1].mean(axis=0), [float(cell["x"]), float(cell["y"])], atol=0.2)
        x, y = ring.T                                                             # shoelace area, µm²
        area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) * MPP * MPP
        assert area == pytest.approx(float(cell["area_um2"]), rel=0.03, abs=0.5)
    with ViewServer(ihc_dir, port=0) as server:
        assert [s["name"] for s in json.loads(get(server, "/api/slides/field")[2])["shapes"]] == ["review"]


def test_too_many_nuclei_for_qupath_leave_the_cells_table_only(tmp_path, monkeypatch):
    """Over the limit no GeoJSON is written, and an earlier run's is removed (it would be stale)."""
    write_cell_field(tmp_path / "slides" / "field.svs", CellFieldConfig(width=768, height=768, seed=2))
    out = tmp_path / "out"
    stale = out / "cells" / "field.geojson"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    monkeypatch.setattr("pathology.ihc.pipeline.MAX_NUCLEI", 10)
    result = CliRunner().invoke(app, ["ihc", str(tmp_path / "slides"), "--marker", "er", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "field.json").read_text())
    assert record["cells"] > 10 and "cells_geojson" not in record["outputs"] and not stale.exists()
    assert (out / "cells" / "field.csv").is_file()
