"""`pathology view` over HTTP: a server bound to 127.0.0.1 on a free port, started and stopped by
the tests, serving a run folder made by the real tiler (a synthetic SVS) with attention written
as `mil predict` writes it, an IHC folder scored by `pathology ihc`, and a list of a thousand
slides. Tiles are checked against the slide's own pixels read by OpenSlide and against
OpenSlide's DeepZoomGenerator; nothing outside the folder, and no label or macro image, is served."""

from __future__ import annotations

import csv
import html
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image
from skimage.draw import polygon as fill_polygon
from typer.testing import CliRunner

from pathology.cli import app
from pathology.heatmap import HeatmapOptions, attention_file, heatmap_slide
from pathology.run.report import SlideReport, TaskResult, write_report
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field
from pathology.tiling.grid import GridSpec
from pathology.tiling.pipeline import TileOptions, tile_slide
from pathology.view.cache import Memo
from pathology.view.catalog import read_catalog
from pathology.view.server import ViewServer

PATCH = 128          # at 0.5 µm/px on a 0.25 µm/px slide: 256 level-0 px
SLIDE_ID = "case 1"  # a space: every URL must quote it
QUOTED = "case%201"


def get(server: ViewServer, path: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request sent as written (no client-side normalization)."""
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def write_attention(path: Path, coords: np.ndarray, tasks: dict[str, np.ndarray]) -> None:
    """An attention file as `mil predict` writes it: coords and attention/<task>."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=coords.astype(np.int64))
        for task, values in tasks.items():
            f.create_dataset(f"attention/{task}", data=values.astype(np.float32))


def make_run_folder(root: Path) -> Path:
    """A `pathology run` output folder in ``root/out`` (the slide in ``root/slides``): the bag of a
    synthetic slide, attention that rises from left to right for `tumor` and falls for `er`, real
    heatmaps, results.csv with a failed slide, report.html."""
    truth = write_synthetic_slide(root / "slides" / f"{SLIDE_ID}.svs",
                                  SynthConfig(width=4096, height=3072, seed=7, tumor_fraction=0.4))
    out = root / "out"
    tile_slide(truth.slide, SLIDE_ID, out / "bags", TileOptions(grid=GridSpec(patch_size=PATCH)), threads=2)
    with h5py.File(out / "bags" / f"{SLIDE_ID}.h5") as f:
        coords = f["coords"][:]
    rise = (coords[:, 0] - coords[:, 0].min()) / np.ptp(coords[:, 0])
    write_attention(out / "attention" / f"{SLIDE_ID}.h5", coords, {"tumor": rise, "er": 1 - rise})
    heatmap_slide(out / "bags" / f"{SLIDE_ID}.h5", attention_file(out / "attention"), out / "heatmaps",
                  HeatmapOptions(max_size=256, top_k=2))
    header = ["slide_id", "status", "patches", "tumor_score", "tumor_call", "tumor_threshold", "er_score", "er_call",
              "er_threshold", "message"]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerow([SLIDE_ID, "done", len(coords), "0.910000", "positive", 0.5, "0.200000", "negative", 0.5, ""])
        writer.writerow(["broken", "failed", 0, "", "", "", "", "", "", "broken.svs: not a slide"])
    write_report([SlideReport(SLIDE_ID, "done", len(coords), thumbnail=out / "bags" / "qc" / f"{SLIDE_ID}.png",
                              tasks=[TaskResult("tumor", "binary", 0.91, 0.5,
                                                out / "heatmaps" / SLIDE_ID / "tumor.heatmap.png")]),
                  SlideReport("broken", "failed", message="not a slide")], out, title="run", model="m")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    make_run_folder(root)
    return root


@pytest.fixture(scope="module")
def server(run_dir):
    with ViewServer(run_dir / "out", port=0) as server:
        yield server


def test_the_slide_list_shows_each_slide_with_its_calls(server):
    status, headers, body = get(server, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert f'<a href="/view/{QUOTED}">{SLIDE_ID}</a>' in page
    assert '<td class="pos">positive 0.910</td>' in page and '<td class="neg">negative 0.200</td>' in page
    assert "broken.svs: not a slide" in page and "/view/broken" not in page    # a failed slide has nothing to view
    assert '<a href="/report.html">report</a>' in page
    status, _, body = get(server, f"/view/{QUOTED}")
    assert status == 200 and b"openseadragon.min.js" in body and SLIDE_ID.encode() in body
    for path in ("/static/openseadragon/openseadragon.min.js", "/static/openseadragon/LICENSE.txt",
                 "/static/openseadragon/images/zoomin_rest.png", "/static/viewer.js", "/static/viewer.css"):
        assert get(server, path)[0] == 200, path


def test_the_slide_list_shows_every_task_kind(tmp_path):
    """results.csv as pathology run writes it for a binary, a multiclass, a regression and a
    survival task: each is a column of the slide list, with the call, the class's probability,
    the value and the risk."""
    header = ["slide_id", "status", "patches", "tumor_score", "tumor_call", "tumor_threshold", "grade_call",
              "grade_p_1", "grade_p_2", "grade_p_3", "ki67_value", "os_risk", "message"]
    rows = [["a", "done", 10, "0.912", "positive", 0.5, "3", "0.1", "0.2", "0.7", "23.456", "0.61", ""],
            ["b", "failed", 0, "", "", "", "", "", "", "", "", "", "unreadable"]]
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    catalog = read_catalog(tmp_path)
    assert catalog.columns == ["tumor", "grade", "ki67", "os"]
    assert [(c.name, c.text) for c in catalog.entries["a"].calls] == [
        ("tumor", "positive 0.912"), ("grade", "3 · p 0.700"), ("ki67", "23.5"), ("os", "risk 0.610")]
    assert catalog.entries["b"].calls == () and catalog.entries["b"].message == "unreadable"
    with ViewServer(tmp_path, port=0) as server:
        page = get(server, "/")[2].decode()
    assert all(text in page for text in ("grade", "3 · p 0.700", "ki67", "23.5", "risk 0.610"))


def test_a_thousand_slides_page_and_search(tmp_path):
    rows = [[f"case-{i:04d}", "done", 100, f"{(i % 10) / 10 + 0.05:.6f}",
             "positive" if i % 10 >= 5 else "negative", 0.5, ""] for i in range(1000)]
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["slide_id", "status", "patches", "tumor_score", "tumor_call", "tumor_threshold",
                                   "message"], *rows])
    with ViewServer(tmp_path, port=0) as server:
        def listed(query: str) -> tuple[list[str], str]:
            page = get(server, query)[2].decode()
            return re.findall(r'<a href="/view/(case-\d+)">', page), page

        first, page = listed("/")
        assert first == [f"case-{i:04d}" for i in range(50)] and "page 1 of 20" in page
        last, page = listed("/?page=20")
        assert last == [f"case-{i:04d}" for i in range(950, 1000)] and "next" not in page
        assert listed("/?q=case-0123")[0] == ["case-0123"]
        positives, page = listed("/?q=positive")
        assert "500 of 1000 slides match" in page and len(positives) == 50     # every other tenth is positive
        assert get(server, "/view/case-0123")[0] == 200
        assert get(server, "/api/slides/case-0123")[0] == 404                 # listed, but no bag: nothing to draw


def test_dzi_descriptor(server):
    status, headers, body = get(server, f"/slides/{QUOTED}.dzi")
    assert status == 200 and headers["Content-Type"] == "application/xml"
    image = ET.fromstring(body)
    size = image.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert image.get("TileSize") == "254" and image.get("Overlap") == "1" and image.get("Format") == "jpeg"
    assert (size.get("Width"), size.get("Height")) == ("4096", "3072")     # the synthetic slide's level 0


def tile_box(z_size: tuple[int, int], col: int, row: int) -> tuple[int, int, int, int]:
    """The DeepZoom convention: tile (col, row) covers 254 px of its level plus 1 px of each
    neighbour (none past the image's edge)."""
    x0, y0 = col * 254 - (col > 0), row * 254 - (row > 0)
    return x0, y0, min((col + 1) * 254 + 1, z_size[0]), min((row + 1) * 254 + 1, z_size[1])


def decode(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB")).astype(np.float64)


@pytest.mark.parametrize("downsample", [1, 2, 4, 16])
def test_tiles_are_the_slides_pixels_at_their_level(server, run_dir, downsample):
    """A tile equals the slide's region read by OpenSlide itself: at the pyramid level of the same
    downsample (1, 4, 16), or at level 0 averaged over 2×2 blocks (downsample 2, no such level),
    within JPEG's error (what encoding that region at quality 75 itself loses); the same region
    shifted by 3 px is far off, so the test can tell."""
    slide = run_dir / "slides" / f"{SLIDE_ID}.svs"
    with openslide.OpenSlide(slide) as osr:
        w, h = osr.dimensions
        z = int(np.ceil(np.log2(max(w, h)))) - int(np.log2(downsample))     # DeepZoom level of this downsample
        z_size = (int(np.ceil(w / downsample)), int(np.ceil(h / downsample)))
        with h5py.File(run_dir / "out" / "bags" / f"{SLIDE_ID}.h5") as f:
            x, y = f["coords"][len(f["coords"]) // 2]                         # a patch: there is tissue
        col, row = int(x // downsample // 254), int(y // downsample // 254)
        x0, y0, x1, y1 = tile_box(z_size, col, row)
        status, headers, body = get(server, f"/slides/{QUOTED}_files/{z}/{col}_{row}.jpeg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        tile = decode(body)
        assert tile.shape[:2] == (y1 - y0, x1 - x0)

        def expected(dx: int) -> np.ndarray:
            if downsample in (1, 4, 16):
                level = [round(d) for d in osr.level_downsamples].index(downsample)
                region = osr.read_region(((x0 + dx) * downsample, y0 * downsample), level, (x1 - x0, y1 - y0))
                return np.asarray(region.convert("RGB")).astype(np.float64)
            region = np.asarray(osr.read_region(((x0 + dx) * 2, y0 * 2), 0, (2 * (x1 - x0), 2 * (y1 - y0)))
                                .convert("RGB")).astype(np.float64)
            return region.reshape(y1 - y0, 2, x1 - x0, 2, 3).mean(axis=(1, 3))

        truth = expected(0)
        buffer = io.BytesIO()
        Image.fromarray(np.rint(truth).astype(np.uint8)).save(buffer, format="JPEG", quality=75)
        jpeg_loss = np.abs(decode(buffer.getvalue()) - truth).mean()
        error, shifted = np.abs(tile - truth).mean(), np.abs(tile - expected(3)).mean()
    assert error <= 1.1 * jpeg_loss + 0.5 and shifted > 3 * error, (error, jpeg_loss, shifted)


def test_tile_grid_is_openslides_deepzoom_grid(server, run_dir):
    """Every level's tile grid and every edge tile's size are those of OpenSlide's own
    DeepZoomGenerator on the slide; one level past the last, or one tile past the edge, is a 404."""
    with openslide.OpenSlide(run_dir / "slides" / f"{SLIDE_ID}.svs") as osr:
        reference = DeepZoomGenerator(osr, tile_size=254, overlap=1, limit_bounds=False)
        for level in range(reference.level_count):
            cols, rows = reference.level_tiles[level]
            for address in {(cols - 1, rows - 1), (0, rows - 1), (cols - 1, 0)}:
                status, _, body = get(server, f"/slides/{QUOTED}_files/{level}/{address[0]}_{address[1]}.jpeg")
                assert status == 200, (level, address)
                assert Image.open(io.BytesIO(body)).size == reference.get_tile_dimensions(level, address)
            assert get(server, f"/slides/{QUOTED}_files/{level}/{cols}_0.jpeg")[0] == 404
        assert get(server, f"/slides/{QUOTED}_files/{reference.level_count}/0_0.jpeg")[0] == 404


def test_attention_overlay_follows_the_attention_file(server, run_dir):
    status, _, body = get(server, f"/api/slides/{QUOTED}")
    assert status == 200
    info = json.loads(body)
    assert info["dimensions"] == [4096, 3072] and info["mpp"] == pytest.approx(0.25)
    assert [c["text"] for c in info["calls"]] == ["positive 0.910", "negative 0.200"]
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert set(layers) == {"tumor", "er"} and all(layer["group"] == "attention" for layer in layers.values())
    with h5py.File(run_dir / "out" / "attention" / f"{SLIDE_ID}.h5") as f:
        coords = f["coords"][:]
        attention = {task: f[f"attention/{task}"][:] for task in ("tumor", "er")}
    size = 2 * PATCH                                                     # level-0 px of a patch
    for task, layer in layers.items():
        at = {(int(x), int(y)): float(a) for (x, y), a in zip(coords, attention[task])}
        # the listed boxes are patches of the file, with their attention: the 8 highest, the 8 lowest
        assert [at[(b["x"], b["y"])] for b in layer["top"]] == pytest.approx(sorted(at.values(), reverse=True)[:8])
        assert [at[(b["x"], b["y"])] for b in layer["bottom"]] == pytest.approx(sorted(at.values())[:8])
        assert all(b["w"] == b["h"] == size for b in layer["top"] + layer["bottom"])
        assert [b["rank"] for b in layer["top"]] == list(range(1, 9))

        # coloured as `pathology heatmap` colours: linear between the slide's percentiles, or by rank
        assert [scale["name"] for scale in layer["scales"]] == ["percentile", "rank"]
        status, headers, body = get(server, layer["scales"][0]["picture"])
        assert status == 200 and headers["Content-Type"] == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(body)))
        cell = layer["width0"] / picture.shape[1]
        assert picture.shape[2] == 4 and cell * picture.shape[0] >= 3072
        # a cell is painted if and only if its centre lies in a patch
        cx, cy = (np.arange(picture.shape[1]) + 0.5) * cell, (np.arange(picture.shape[0]) + 0.5) * cell
        painted = np.zeros(picture.shape[:2], bool)
        for x, y in coords:
            painted |= ((cy >= y) & (cy < y + size))[:, None] & ((cx >= x) & (cx < x + size))[None, :]
        assert np.array_equal(picture[..., 3] == 255, painted)
        assert set(np.unique(picture[..., 3])) == {0, 255}
        # jet: the highest attention is red, the lowest blue; tumor rises to the right, er falls
        right = picture[int(coords[np.argmax(coords[:, 0]), 1] // cell), int(coords[:, 0].max() // cell), :3]
        left = picture[int(coords[np.argmin(coords[:, 0]), 1] // cell), int(coords[:, 0].min() // cell), :3]
        red, blue = (right, left) if task == "tumor" else (left, right)
        assert red[0] > 120 > red[2] and blue[2] > 120 > blue[0], (task, red, blue)
        assert get(server, layer["scales"][0]["picture"].replace("percentile", "nope"))[0] == 404
    assert get(server, f"/api/slides/{QUOTED}/layers/{len(layers)}/percentile.png")[0] == 404


def test_tissue_outline_is_the_slides_tissue(server, run_dir):
    """The outline, filled, overlaps the synthetic slide's true tissue mask (IoU)."""
    info = json.loads(get(server, f"/api/slides/{QUOTED}")[2])
    truth = json.loads((run_dir / "slides" / f"{SLIDE_ID}.json").read_text())
    mask = np.asarray(Image.open(run_dir / "slides" / f"{SLIDE_ID}.tissue.png")) > 127
    ds = truth["mask_downsample"]
    filled = np.zeros(mask.shape, bool)
    rings = sorted(info["tissue"], key=len, reverse=True)
    assert rings
    for ring in rings:                                          # outlines and holes, by even-odd filling
        r = np.asarray(ring) / ds
        rr, cc = fill_polygon(r[:, 1], r[:, 0], mask.shape)
        filled[rr, cc] ^= True
    iou = (filled & mask).sum() / (filled | mask).sum()
    assert iou > 0.85, iou


def test_report_links_each_slide_to_its_viewer_page(server, run_dir):
    on_disk = (run_dir / "out" / "report.html").read_text()
    assert f"pathology view {(run_dir / 'out').resolve()}" in on_disk     # opened from disk: how to start one
    status, _, body = get(server, "/report.html")
    page = body.decode()
    assert status == 200 and page == on_disk
    links = re.findall(r'class="viewer-link" href="([^"]+)"', page)
    assert links and set(links) == {f"view/{QUOTED}"}                     # the failed slide has none
    assert get(server, "/" + links[0])[0] == 200
    # the page shows the links when this answers as the viewer
    assert 'fetch("api/viewer")' in page and json.loads(get(server, "/api/viewer")[2])["app"] == "pathology view"
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert get(server, "/" + quote(html.unescape(src)))[0] == 200, src      # as a browser asks for it


def test_nothing_outside_the_folder_is_served(server, run_dir, tmp_path):
    out = run_dir / "out"
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    (out / "escape.png").symlink_to(secret)
    shutil.copy(run_dir / "slides" / f"{SLIDE_ID}.svs", out / "copy.svs")
    refused = [
        "/../../etc/passwd", "/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/..%5c..%5cetc%5cpasswd", "/%252e%252e/etc/passwd", "/heatmaps/..%2f..%2f..%2fslides/case%201.json",
        f"/slides/..%2f{QUOTED}.dzi", f"/slides/..%2f..%2fslides%2f{QUOTED}.dzi", "/static/..%2fserver.py",
        "/static/../server.py", "/static/%2e%2e/__init__.py", "/api/slides/..%2f..%2fresults.csv",
        "/results.csv%00.png", "/results.csv/x", "/" + "x" * 5000 + ".png", "/escape.png", "/copy.svs",
        f"/bags/{QUOTED}.h5", "/bags/", "/bags", "/heatmaps/",
        "/", "/slides/", "/slides/nope.dzi", "/slides/nope_files/0/0_0.jpeg", f"/slides/{QUOTED}_files/1/0_0.png",
        f"/slides/{QUOTED}_files/-1/0_0.jpeg", f"/slides/{QUOTED}_files/1/%C2%B2_0.jpeg", "/view/nope",
        f"/api/slides/{QUOTED}/layers/-1/percentile.png", f"/api/slides/{QUOTED}/layers/0/..%2fpercentile.png",
        f"/api/slides/{QUOTED}/shapes/0.geojson", "/%ff%fe",
        f"/api/slides/{QUOTED}/nuclei.dzi", f"/api/slides/{QUOTED}/nuclei_files/0/0_0.png",   # no IHC: no nuclei
    ]
    statuses = {path: get(server, path)[0] for path in refused}
    assert statuses.pop("/") == 200
    assert statuses == dict.fromkeys(statuses, 404)
    # the same server does serve the folder's own files
    for path in ("/results.csv", f"/heatmaps/{QUOTED}/tumor.heatmap.png", f"/heatmaps/{QUOTED}/tumor.geojson"):
        assert get(server, path)[0] == 200, path


def test_read_only_and_only_for_this_computer(server):
    assert get(server, "/results.csv", "POST")[0] == 501
    assert get(server, "/results.csv", "PUT")[0] == 501
    assert get(server, "/results.csv", "DELETE")[0] == 501
    status, headers, body = get(server, "/results.csv", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    # a page elsewhere whose name now points at 127.0.0.1 (DNS rebinding) gets nothing
    assert get(server, "/results.csv", headers={"Host": "attacker.example:8000"})[0] == 403
    assert get(server, "/results.csv", headers={"Host": "localhost:8000"})[0] == 200


def write_svs_with_label(path: Path, image: np.ndarray) -> Path:
    """An Aperio SVS with a pure green label and macro image (as scanners add them, with the
    patient's name on the label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    head = "Aperio Image Library v12.0.0\r\n"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                  description=f"{head}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5")
        tif.write(image[::16, ::16].copy(), photometric="rgb", compression="jpeg", metadata=None,
                  description=f"{head}{w}x{h} -> thumbnail")
        small = image.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3)).astype(np.uint8)
        tif.write(small, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None, subfiletype=0,
                  description=f"{head}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90 -> {w // 4}x{h // 4}")
        green = np.zeros((150, 400, 3), np.uint8)
        green[..., 1] = 255
        tif.write(green[:120, :240], photometric="rgb", compression="lzw", subfiletype=1, metadata=None,
                  description=f"{head}label 240x120")
        tif.write(green, photometric="rgb", compression="jpeg", subfiletype=9, metadata=None,
                  description=f"{head}macro 400x150")
    return path


def test_label_and_macro_images_are_never_served(tmp_path):
    rng = np.random.default_rng(0)
    image = np.full((2048, 3072, 3), 238, np.uint8)
    image[400:1600, 600:2400] = np.clip(rng.normal((190, 110, 170), 12, (1200, 1800, 3)), 0, 255).astype(np.uint8)
    slide = write_svs_with_label(tmp_path / "slides" / "labelled.svs", image)
    with openslide.OpenSlide(slide) as osr:
        assert {"label", "macro"} <= set(osr.associated_images)     # the file does carry them
    out = tmp_path / "out"
    tile_slide(slide, "labelled", out / "bags", TileOptions(), threads=2)
    with ViewServer(out, port=0) as server:
        guesses = ["/slides/labelled/label.dzi", "/slides/label.dzi", "/slides/macro.dzi", "/slides/labelled_label.dzi",
                   "/slides/labelled_files/label/0_0.jpeg", "/slides/label_files/0/0_0.jpeg",
                   "/slides/labelled/associated/label.jpeg", "/api/slides/labelled/label", "/label.jpeg",
                   "/slides/labelled/macro.dzi", "/api/slides/labelled/associated_images", "/slides/thumbnail.dzi"]
        assert {get(server, g)[0] for g in guesses} == {404}
        # every tile of every level and every picture the viewer serves: no green label pixel in any
        info = json.loads(get(server, "/api/slides/labelled")[2])
        bodies = [get(server, scale["picture"])[2] for layer in info["layers"] for scale in layer["scales"]]
        reference = DeepZoomGenerator(openslide.OpenSlide(slide), tile_size=254, overlap=1)
        for level in range(reference.level_count):
            cols, rows = reference.level_tiles[level]
            bodies += [get(server, f"/slides/labelled_files/{level}/{c}_{r}.jpeg")[2]
                       for c in range(cols) for r in range(rows)]
    assert len(bodies) > reference.level_count
    for body in bodies:
        rgb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
        assert not ((rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)).any()


def make_ihc_folder(root: Path) -> Path:
    """`pathology ihc` on a synthetic ER field into ``root/out`` (the generator's truth in
    ``root/slides/field.json``), and a QuPath GeoJSON (one point) named in the record's outputs."""
    write_cell_field(root / "slides" / "field.svs", CellFieldConfig(width=1536, height=1024, seed=5))
    out = root / "out"
    result = CliRunner().invoke(app, ["ihc", str(root / "slides"), "--marker", "er", "--out", str(out)])
    assert result.exit_code == 0, result.output
    nuclei = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [100.5, 200.5]},
         "properties": {"objectType": "detection", "classification": {"name": "3+", "color": [230, 0, 30]}}}]}
    (out / "review").mkdir()
    (out / "review" / "field.geojson").write_text(json.dumps(nuclei))
    record = json.loads((out / "field.json").read_text())
    record["outputs"]["review"] = "review/field.geojson"
    (out / "field.json").write_text(json.dumps(record))
    return out


@pytest.fixture(scope="module")
def ihc_dir(tmp_path_factory):
    return make_ihc_folder(tmp_path_factory.mktemp("ihc"))


def test_ihc_folder_shows_scores_tiles_and_shapes(ihc_dir):
    with ViewServer(ihc_dir, port=0) as server:
        page = get(server, "/")[2].decode()
        with open(ihc_dir / "scores.csv") as fh:
            score = next(csv.DictReader(fh))
        assert "<th>H-score</th>" in page and f"<td>{score['h_score']}</td>" in page
        info = json.loads(get(server, "/api/slides/field")[2])
        with open(ihc_dir / "tiles" / "field.csv") as fh:
            tiles = [t for t in csv.DictReader(fh) if int(t["cells"]) > 0]
        layers = {layer["name"]: layer for layer in info["layers"]}
        assert set(layers) == {"% positive", "H-score"} and all(lay["boxes"] == len(tiles) for lay in layers.values())
        best = max(tiles, key=lambda t: float(t["h_score"]))
        assert (layers["H-score"]["top"][0]["x"], layers["H-score"]["top"][0]["y"]) == (int(best["x"]), int(best["y"]))
        assert layers["H-score"]["top"][0]["value"] == pytest.approx(float(best["h_score"]))
        assert info["ihc"]["cells"] == json.loads((ihc_dir / "field.json").read_text())["cells"] > 0
        assert info["tissue"] == []                 # a field of view (768 µm across) is scored whole: no outline
        pictures = {p["name"]: p["url"] for p in info["ihc"]["pictures"]}
        assert set(pictures) == {"qc", "positivity", "intensity"}
        assert all(get(server, url)[0] == 200 for url in pictures.values())
        assert [s["name"] for s in info["shapes"]] == ["review"]
        status, _, body = get(server, info["shapes"][0]["url"])
        assert status == 200 and body == (ihc_dir / "review" / "field.geojson").read_bytes()
        assert get(server, "/slides/field.dzi")[0] == 200 and get(server, "/slides/field_files/0/0_0.jpeg")[0] == 200


def test_demo_folder_lists_out_of_fold_scores_called_at_the_runs_cut_offs(run_dir, tmp_path, data):
    """A `pathology demo` folder: bags, attention, and the run whose predictions.csv holds the scores;
    binary tasks are called at the cut-offs of the run's config.json (tumor: 0.5), survival is a risk."""
    demo = tmp_path / "demo"
    for part in ("bags", "attention"):
        shutil.copytree(run_dir / "out" / part, demo / part)
    shutil.copytree(data / "runs" / "mil-run-0.1.0", demo / "run")
    (demo / "run" / "predictions.csv").write_text("slide_id,patient_id,fold,task,label,score,event\n"
                                                  f"{SLIDE_ID},P1,0,tumor,1,0.7,\n{SLIDE_ID},P1,0,survival,30.1,-0.5,1\n")
    (demo / "demo_summary.json").write_text("{}")
    with ViewServer(demo, port=0) as server:
        page = get(server, "/")[2].decode()
        assert "<th>tumor</th><th>survival</th>" in page
        assert '<td class="pos">positive 0.700 · label 1</td><td>risk -0.500 · label 30.1</td>' in page
        assert f'<img class="thumb" src="/bags/qc/{QUOTED}.png"' in page
        info = json.loads(get(server, f"/api/slides/{QUOTED}")[2])
        assert {layer["name"] for layer in info["layers"]} == {"tumor", "er"}
        assert get(server, f"/slides/{QUOTED}_files/0/0_0.jpeg")[0] == 200


def test_a_moved_folder_shows_the_bags_thumbnail_until_given_the_slides(run_dir, tmp_path):
    moved = tmp_path / "moved"
    for part in ("bags", "attention"):
        shutil.copytree(run_dir / "out" / part, moved / part)
    with h5py.File(moved / "bags" / f"{SLIDE_ID}.h5", "r+") as f:
        f.attrs["slide_path"] = str(tmp_path / "gone" / f"{SLIDE_ID}.svs")
        thumbnail = f["thumbnail"].shape
    with ViewServer(moved, port=0) as server:
        info = json.loads(get(server, f"/api/slides/{QUOTED}")[2])
        assert any("--slide" in note for note in info["notes"]) and info["dimensions"] == [4096, 3072]
        width = ET.fromstring(get(server, f"/slides/{QUOTED}.dzi")[2])[0].get("Width")
        assert int(width) == thumbnail[1] and len(info["layers"]) == 2
    with ViewServer(moved, port=0, slides_dir=run_dir / "slides") as server:
        assert ET.fromstring(get(server, f"/slides/{QUOTED}.dzi")[2])[0].get("Width") == "4096"
        assert not json.loads(get(server, f"/api/slides/{QUOTED}")[2])["notes"]


def test_clients_asking_for_one_tile_at_once_get_it_made_once(server):
    before = server.viewer.tiles.misses
    path = f"/slides/{QUOTED}_files/11/2_1.jpeg"
    bodies, threads = [], [threading.Thread(target=lambda: bodies.append(get(server, path)))
                           for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [b[0] for b in bodies] == [200] * 20 and len({b[2] for b in bodies}) == 1
    assert server.viewer.tiles.misses == before + 1


def test_memo_keeps_the_most_recent_within_its_capacity():
    memo: Memo[bytes] = Memo(10, len)
    for key in "abc":
        memo.get(key, lambda: b"xxxx")          # 4 bytes each: the third pushes the first out
    assert len(memo) == 2 and memo.used == 8
    made = []
    memo.get("b", lambda: made.append("b") or b"")
    assert not made and memo.hits == 1          # b is still there
    memo.get("a", lambda: made.append("a") or b"yy")
    assert made == ["a"]                        # a was dropped, made again

    def fail() -> bytes:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        memo.get("z", fail)
    assert memo.get("z", lambda: b"z") == b"z"  # a failure is not kept


def test_command_serves_until_interrupted_and_warns_when_shared(run_dir):
    repo = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    code = "from pathology.cli import app; app()"
    # Ctrl+C as in a terminal, even when the tests run in the background (where SIGINT is
    # inherited ignored, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-c", code, "view", str(run_dir / "out"), "--host", "0.0.0.0",
                             "--port", "0"], stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        while not any("pathology view:" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = " ".join("".join(lines).split())
        assert "anyone who can reach this computer" in text
        port = int(re.search(r"http://[^:]+:(\d+)/", text).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0 and "stopped" in rest


def test_command_refuses_a_folder_with_nothing_to_view(tmp_path):
    result = CliRunner().invoke(app, ["view", str(tmp_path)])
    assert result.exit_code == 2 and "not an output folder" in result.output
    result = CliRunner().invoke(app, ["view", str(tmp_path / "nope")])
    assert result.exit_code == 2


def test_a_busy_port_is_bad_input(run_dir):
    with ViewServer(run_dir / "out", port=0) as first:
        port = first.httpd.server_address[1]
        result = CliRunner().invoke(app, ["view", str(run_dir / "out"), "--port", str(port)])
    assert result.exit_code == 2 and "--port" in result.output
