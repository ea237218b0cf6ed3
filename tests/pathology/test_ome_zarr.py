"""OME-Zarr slides (NGFF 0.4 in zarr v2, 0.5 in zarr v3): levels, µm/px from the coordinate
transformations in the axes' units, any axis order, JPEG chunks, and the slide in every command
that opens one: `pathology tile` (the same bag as the same pixels in a TIFF), `embed` from a
coords-only bag, `heatmap` with `--slide`, and `pathology view`'s DeepZoom tiles. Every store is
written by zarr itself (tests/factories.py)."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from typer.testing import CliRunner

from pathology.bag import read_patches
from pathology.cli import app
from pathology.fingerprint import fingerprint, slide_changed
from pathology.inputs import expand_inputs
from pathology.slide import SlideError, open_slide
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.sources import ChunkSource, open_source
from pathology.view.server import ViewServer
from tests.factories import pyramid_levels, write_ome_zarr, write_pyramid_tiff

runner = CliRunner()
DOWNSAMPLES = (1, 4, 16)


@pytest.fixture(scope="module")
def pixels(tmp_path_factory) -> np.ndarray:
    """Level 0 of a synthetic H&E slide (3072x2048 at 0.25 µm/px), as an array."""
    truth = write_synthetic_slide(tmp_path_factory.mktemp("src") / "src.svs",
                                  SynthConfig(width=3072, height=2048, mpp=0.25, seed=5))
    with tifffile.TiffFile(truth.slide) as tif:
        return tif.series[0].levels[0].asarray()


@pytest.mark.parametrize(("version", "axes"), [("0.4", "cyx"), ("0.4", "yxc"), ("0.4", "tczyx"),
                                               ("0.5", "cyx"), ("0.5", "yxc"), ("0.5", "tczyx")])
@pytest.mark.parametrize(("mpp", "unit"), [(0.25, "micrometer"), (250.0, "nanometer"), (0.00025, "millimeter")])
def test_levels_resolution_and_pixels(tmp_path, pixels, version, axes, mpp, unit):
    path = write_ome_zarr(tmp_path / "s.ome.zarr", pixels, DOWNSAMPLES, mpp=mpp, unit=unit, version=version,
                          axes=axes)
    with open_slide(path) as slide:
        assert slide.backend == "omezarr"
        assert slide.level_dimensions == [(3072, 2048), (768, 512), (192, 128)]
        assert (slide.mpp.x, slide.mpp.y) == pytest.approx((0.25, 0.25))
        # every level through the tiler's chunk source, against the arrays written
        for level, truth in enumerate(pyramid_levels(pixels, DOWNSAMPLES)):
            source = open_source(slide, level)
            assert isinstance(source, ChunkSource) and (source.cw, source.ch) == (256, 256)
            w, h = slide.level_dimensions[level]
            np.testing.assert_array_equal(source.region(0, 0, w, h), truth)
        np.testing.assert_array_equal(slide.read_region((1000, 700), 0, (300, 200)), pixels[700:900, 1000:1300])


def test_a_patch_reads_each_chunk_it_touches_once(tmp_path, pixels):
    path = write_ome_zarr(tmp_path / "s.ome.zarr", pixels, DOWNSAMPLES)
    with open_slide(path) as slide:
        source = open_source(slide, 0)
        boxes = np.array([[200, 200, 600, 400], [250, 260, 300, 300]])
        plans = source.plan(boxes)
        assert [p.key for p in plans[0]] == [("chunk", 0, 0), ("chunk", 0, 1), ("chunk", 0, 2),
                                             ("chunk", 1, 0), ("chunk", 1, 1), ("chunk", 1, 2)]
        assert [p.key for p in plans[1]] == [("chunk", 1, 0), ("chunk", 1, 1)]  # x 250-300 crosses 256
        assert source.single_use(boxes) == {("chunk", 0, 0), ("chunk", 0, 1), ("chunk", 0, 2), ("chunk", 1, 2)}
        # the last chunk of a row is cut at the level's edge
        assert source.plan(np.array([[3000, 0, 3072, 10]]))[0][0].box == (2816, 0, 3072, 256)


def test_jpeg_chunks_and_file_urls(tmp_path, pixels):
    """Chunks compressed with imagecodecs' JPEG (as slide converters write them) decode as zarr
    decodes them; a file:// URL opens the same store."""
    path = write_ome_zarr(tmp_path / "j.ome.zarr", pixels, DOWNSAMPLES, axes="yxc", jpeg=True)
    with open_slide(path) as slide:
        truth = zarr.open_group(str(path), mode="r")["1"][...]
        np.testing.assert_array_equal(open_source(slide, 1).region(0, 0, 768, 512), truth)
        assert np.abs(slide.read_level_region(1, 0, 0, 768, 512).astype(int) - pyramid_levels(pixels)[1]).mean() < 3
    with open_slide(path.resolve().as_uri()) as slide:
        assert slide.backend == "omezarr" and slide.level_count == 3


def test_what_cannot_be_read_is_said_in_one_line(tmp_path, pixels):
    small = pixels[:512, :512]
    no_unit = write_ome_zarr(tmp_path / "nounit.ome.zarr", small, (1, 2), unit=None)
    with open_slide(no_unit) as slide:
        assert slide.mpp is None and "axis x has no unit in the OME-Zarr metadata" in slide.mpp_problem
    pixel = write_ome_zarr(tmp_path / "pixel.ome.zarr", small, (1, 2), unit="pixel")
    with open_slide(pixel) as slide:
        assert "'pixel' in the OME-Zarr metadata is not a length unit" in slide.mpp_problem
    group = zarr.open_group(str(tmp_path / "f.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="uint16")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "cyx"], "datasets": [{"path": "0"}]}]
    result = runner.invoke(app, ["tile", str(tmp_path / "f.ome.zarr"), "--out", str(tmp_path / "bags")])
    assert result.exit_code == 1
    assert "not a brightfield RGB image (4 channels of uint16)" in " ".join(result.output.split())
    (tmp_path / "plain").mkdir()
    with pytest.raises(SlideError, match="is a folder, not a slide"):
        open_slide(tmp_path / "plain")


def tile(*args):
    """``pathology tile`` with lossless patches: the tests compare bags pixel for pixel and features to 1e-3."""
    return runner.invoke(app, ["tile", *map(str, args), "--compression", "none"])


def test_tile_embed_heatmap_and_view(tmp_path, pixels):
    """The same pixels as a TIFF and as OME-Zarr 0.4 and 0.5 give the same bag; reruns skip the
    Zarr slides until a chunk changes; embedding a coords-only bag reads the Zarr slide and gives
    the stored patches' features; heatmap and viewer open the Zarr slide."""
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "a.tif", pixels, DOWNSAMPLES, compression="zlib")
    write_ome_zarr(slides / "b.ome.zarr", pixels, DOWNSAMPLES)
    write_ome_zarr(slides / "c.ome.zarr", pixels, DOWNSAMPLES, version="0.5", axes="tczyx")
    # a folder scan finds each store once, as one slide named without .ome.zarr
    assert [(s.slide_id, s.path.name) for s in expand_inputs([str(slides)])] == [
        ("a", "a.tif"), ("b", "b.ome.zarr"), ("c", "c.ome.zarr")]
    bags = tmp_path / "bags"
    result = tile(slides, "--out", bags, "--patch-size", 128)
    assert result.exit_code == 0, result.output
    with h5py.File(bags / "a.h5") as a, h5py.File(bags / "b.h5") as b, h5py.File(bags / "c.h5") as c:
        assert len(a["coords"]) > 10
        for other in (b, c):
            assert other.attrs["mpp_level0"] == pytest.approx(0.25)
            np.testing.assert_array_equal(other["coords"][:], a["coords"][:])
            np.testing.assert_array_equal(read_patches(other, slice(None)), read_patches(a, slice(None)))
    assert "omezarr chunks 256x256" in (bags / "status.csv").read_text()

    # reruns: skipped while the store is unchanged; one chunk rewritten → re-tiled
    before = fingerprint(slides / "b.ome.zarr")
    assert "3 skipped" in " ".join(tile(slides, "--out", bags, "--patch-size", 128).output.split())
    zarr.open_group(str(slides / "b.ome.zarr"), mode="r+")["2"][0:10, 0:10] = 0
    assert slide_changed(before, slides / "b.ome.zarr")
    assert "1 done, 2 skipped" in " ".join(tile(slides, "--out", bags, "--patch-size", 128).output.split())

    # coords-only bag of the 0.5 store: embedding reads the slide, same features as from stored patches
    coords_only = tmp_path / "coords"
    assert tile(slides / "c.ome.zarr", "--out", coords_only, "--patch-size", 128, "--no-patches").exit_code == 0
    shutil.copy(bags / "c.h5", tmp_path / "stored.h5")
    for bag in (coords_only / "c.h5", tmp_path / "stored.h5"):
        result = runner.invoke(app, ["embed", str(bag), "-e", "stain-texture"])
        assert result.exit_code == 0, result.output
    with h5py.File(coords_only / "c.h5") as f, h5py.File(tmp_path / "stored.h5") as g:
        np.testing.assert_allclose(f["features/stain-texture"][:], g["features/stain-texture"][:], atol=1e-3)
        coords = f["coords"][:]

    # heatmap of the coords-only bag: the montage is read from the Zarr slide, given as --slide
    attention = tmp_path / "attention.h5"
    with h5py.File(attention, "w") as f:
        f["coords"] = coords
        f["attention/tumor"] = np.linspace(0, 1, len(coords), dtype=np.float32)
    moved = tmp_path / "moved.ome.zarr"
    shutil.copytree(slides / "c.ome.zarr", moved)
    shutil.rmtree(slides / "c.ome.zarr")
    result = runner.invoke(app, ["heatmap", "--bag", str(coords_only / "c.h5"), "--attention", str(attention),
                                 "--out", str(tmp_path / "maps"), "--top-k", "2", "--slide", str(moved)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "maps" / "c" / "tumor.montage.png").is_file()

    # the viewer's DeepZoom tiles of a bag folder made from a Zarr slide are its pixels
    with ViewServer(tmp_path, port=0) as server:  # a folder with bags/ is one the viewer shows
        host, port = server.httpd.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("GET", "/slides/b.dzi")
        descriptor = ET.fromstring(conn.getresponse().read())
        assert (descriptor[0].get("Width"), descriptor[0].get("Height")) == ("3072", "2048")
        conn.request("GET", "/slides/b_files/12/0_0.jpeg")  # level 12 of 13: 4096 → 3072 px at full size
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(int)
        conn.close()
    h, w = shown.shape[:2]  # the top-left tile at full resolution: level-0 pixels, JPEG-compressed
    assert np.abs(shown - pixels[:h, :w]).mean() < 3


@pytest.mark.parametrize(("version", "axes", "jpeg"), [("0.4", "cyx", False), ("0.5", "tczyx", False),
                                                       ("0.4", "yxc", True)])
def test_chunks_are_decoded_straight_from_their_files(tmp_path, pixels, version, axes, jpeg):
    """The tiler's fast path decodes chunk files itself: the pixels zarr gives for the same box."""
    path = write_ome_zarr(tmp_path / "s.ome.zarr", pixels[:1000, :1300], (1, 4), version=version, axes=axes,
                          jpeg=jpeg)
    group = zarr.open_group(str(path), mode="r")
    with open_slide(path) as slide:
        assert all(files is not None for files in slide._files)  # the plain layouts writers use
        for level, (column, row) in ((0, (5, 3)), (0, (0, 0)), (1, (1, 0))):
            w, h = slide.level_dimensions[level]
            x0, y0 = column * 256, row * 256
            x1, y1 = min(x0 + 256, w), min(y0 + 256, h)  # the last column and row are cut at the edge
            truth = group[str(level)][...]
            truth = truth[0, :, 0] if axes == "tczyx" else truth
            truth = np.moveaxis(truth, 0, -1) if axes != "yxc" else truth
            np.testing.assert_array_equal(slide.read_chunk(level, column, row), truth[y0:y1, x0:x1])


def test_other_layouts_go_through_zarr_and_a_corrupt_chunk_is_named(tmp_path, pixels):
    small = pixels[:512, :768]
    group = zarr.open_group(str(tmp_path / "planes.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(3, 512, 768), chunks=(1, 256, 256), dtype="uint8")[...] = np.moveaxis(small, 2, 0)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                                              {"name": "y", "type": "space", "unit": "micrometer"},
                                                              {"name": "x", "type": "space", "unit": "micrometer"}],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [1, 0.5, 0.5]}]}]}]
    with open_slide(tmp_path / "planes.ome.zarr") as slide:
        assert slide._files == [None]  # one colour per chunk: zarr assembles them
        np.testing.assert_array_equal(slide.read_chunk(0, 2, 1), small[256:512, 512:768])
    path = write_ome_zarr(tmp_path / "c.ome.zarr", small, (1, 2), version="0.5")
    chunk = path / "0" / "c" / "0" / "1" / "1"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with open_slide(path) as slide, pytest.raises(SlideError, match="corrupt chunk"):
        slide.read_chunk(0, 1, 1)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_bioformats2raw_layout_opens_its_first_image(tmp_path, pixels, version):
    """bioformats2raw (the converter behind most OME-Zarr slides) puts the slide in image 0 under a
    root that only names the layout; a further image (a label, here) is never taken."""
    root = tmp_path / "b2r.ome.zarr"
    write_ome_zarr(root / "0", pixels[:1024, :1536], (1, 4), version=version)
    write_ome_zarr(root / "1", np.full((128, 384, 3), 90, np.uint8), (1,), version=version)
    group = zarr.open_group(str(root), mode="a", zarr_format=2 if version == "0.4" else 3)
    if version == "0.4":
        group.attrs["bioformats2raw.layout"] = 3
    else:
        group.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    with open_slide(root) as slide:
        assert slide.backend == "omezarr" and slide.level_dimensions == [(1536, 1024), (384, 256)]
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (1536, 1024)), pixels[:1024, :1536])


def test_ihc_scores_an_ome_zarr_slide_as_the_same_pixels_in_a_tiff(tmp_path):
    from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field

    write_cell_field(tmp_path / "src.svs", CellFieldConfig(width=1024, height=768, mpp=0.5, seed=6, layout="field"))
    with tifffile.TiffFile(tmp_path / "src.svs") as tif:
        field = tif.series[0].levels[0].asarray()
    (tmp_path / "in").mkdir()
    write_pyramid_tiff(tmp_path / "in" / "a.tif", field, (1, 4), mpp=0.5, compression="zlib", aperio=False)
    write_ome_zarr(tmp_path / "in" / "b.ome.zarr", field, (1, 4), mpp=0.5)
    result = runner.invoke(app, ["ihc", str(tmp_path / "in"), "--marker", "ki67", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in "ab")
    assert a["cells"] > 50 and (b["cells"], b["percent_positive"]) == (a["cells"], a["percent_positive"])
