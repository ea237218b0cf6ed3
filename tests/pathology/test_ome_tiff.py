"""OME-TIFF slides: pyramids as sub-IFDs or as images, µm/px from the OME-XML in its unit, pixels
through the fast tile source, and `pathology tile` end to end (the same bag as the same image
stored as SVS). Every file is a real OME-TIFF written by tifffile (tests/factories.py)."""

from __future__ import annotations

import h5py
import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
from typer.testing import CliRunner

from pathology.bag import read_patches
from pathology.cli import app
from pathology.slide import open_slide
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.sources import RegionSource, TiffTileSource, open_source
from tests.factories import pyramid_levels, write_ome_tiff, write_pyramid_tiff

runner = CliRunner()
DOWNSAMPLES = (1, 4, 16)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A textured 1536x1024 RGB image (random blocks: every tile differs)."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(80, 250, (64, 96, 3), dtype=np.uint8)
    noise = rng.integers(0, 6, (1024, 1536, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 16, 0), 16, 1) + noise


@pytest.mark.parametrize("layout", ["subifd", "series"])
@pytest.mark.parametrize(("size", "unit"), [(0.25, "µm"), (250, "nm"), (0.00025, "mm"), (0.000025, "cm"),
                                            (0.25, None)])
def test_levels_and_resolution_come_from_the_ome_xml(tmp_path, image, layout, size, unit):
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, DOWNSAMPLES, size=size, unit=unit, layout=layout,
                          compression="zlib")
    with open_slide(path) as slide:  # auto
        assert slide.backend == "ometiff"
        # the levels as written (the label image is not one), and 0.25 µm/px whatever the unit
        # (no unit means µm, as the OME schema says)
        assert slide.level_dimensions == [(1536, 1024), (384, 256), (96, 64)]
        assert (slide.mpp.x, slide.mpp.y) == pytest.approx((0.25, 0.25))
        assert slide.mpp.source == "OME-XML PhysicalSizeX/Y"
        for level, truth in enumerate(pyramid_levels(image, DOWNSAMPLES)):
            np.testing.assert_array_equal(slide.read_level_region(level, 0, 0, *slide.level_dimensions[level]),
                                          truth)


def test_openslide_alone_sees_one_level_and_no_resolution(tmp_path, image):
    """Why `auto` must not hand OME-TIFFs to OpenSlide (what the issue measured)."""
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, DOWNSAMPLES)
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_count == 1 and openslide.PROPERTY_NAME_MPP_X not in osr.properties
    with open_slide(path, backend="openslide") as slide:
        assert slide.mpp is None


def test_jpeg_tiles_go_through_the_strict_decoder(tmp_path, image):
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, DOWNSAMPLES, compression="jpeg")
    levels = tifffile.TiffFile(path).series[0].levels
    with open_slide(path) as slide:
        for level in range(slide.level_count):
            source = open_source(slide, level)
            try:
                assert isinstance(source, TiffTileSource) and source._jpeg is not None  # strict libjpeg-turbo
                w, h = slide.level_dimensions[level]
                truth = levels[level].asarray()  # tifffile's own decoding of the same tiles
                np.testing.assert_array_equal(source.region(0, 0, w, h), truth)
                np.testing.assert_array_equal(slide.read_level_region(level, 0, 0, w, h), truth)
            finally:
                source.close()


CODECS = ["lzw", "zlib", "zstd"] + (["jpeg2000"] if imagecodecs.JPEG2K.available else [])


@pytest.mark.parametrize("compression", CODECS)
def test_other_codecs_are_read_tile_by_tile_exactly(tmp_path, image, compression):
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, DOWNSAMPLES, compression=compression)
    truth = pyramid_levels(image, DOWNSAMPLES)
    with open_slide(path) as slide:
        for level in range(slide.level_count):
            source = open_source(slide, level)
            try:
                assert isinstance(source, TiffTileSource), source.name
                w, h = slide.level_dimensions[level]
                np.testing.assert_array_equal(source.region(0, 0, w, h), truth[level])
            finally:
                source.close()


def test_planar_channels_fall_back_to_the_backend(tmp_path, image):
    """Colour planes stored apart (C, Y, X): no tile source reads them; the backend does, exactly."""
    path = tmp_path / "planar.ome.tif"
    levels = [np.moveaxis(level, 2, 0).copy() for level in pyramid_levels(image, DOWNSAMPLES)]
    with tifffile.TiffWriter(path, ome=True) as tif:
        opts = dict(tile=(128, 128), compression="zlib", photometric="rgb", planarconfig="separate")
        tif.write(levels[0], subifds=2, metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **opts)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **opts)
    with open_slide(path) as slide:
        assert slide.level_count == 3 and slide.mpp.x == pytest.approx(0.5)
        source = open_source(slide, 1)
        assert isinstance(source, RegionSource)
        np.testing.assert_array_equal(source.region(10, 20, 300, 200), np.moveaxis(levels[1], 0, 2)[20:220, 10:310])


def tile(*args):
    return runner.invoke(app, ["tile", *map(str, args)])


def test_tile_gives_the_same_bag_as_the_same_image_as_svs(tmp_path):
    """The same pixels stored as SVS (OpenSlide) and as OME-TIFF (both layouts): same grid, same
    patches. JPEG tiles of the same levels, encoded by the same encoder, decode the same."""
    truth = write_synthetic_slide(tmp_path / "src.svs", SynthConfig(width=3072, height=2048, mpp=0.25, seed=5))
    with tifffile.TiffFile(truth.slide) as tif:
        pixels = tif.series[0].levels[0].asarray()
    (tmp_path / "in").mkdir()
    write_pyramid_tiff(tmp_path / "in" / "a.svs", pixels, DOWNSAMPLES)
    write_ome_tiff(tmp_path / "in" / "b.ome.tif", pixels, DOWNSAMPLES)
    write_ome_tiff(tmp_path / "in" / "c.ome.tif", pixels, DOWNSAMPLES, layout="series")
    result = tile(tmp_path / "in", "--out", tmp_path / "bags", "--patch-size", 128)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "bags" / "a.h5") as a:
        assert a.attrs["mpp_level0"] == pytest.approx(0.25)
        assert len(a["coords"]) > 10  # the synthetic tissue: a comparison of something
        for other in ("b", "c"):
            with h5py.File(tmp_path / "bags" / f"{other}.h5") as b:
                assert b.attrs["mpp_level0"] == pytest.approx(0.25) and b.attrs["read_level"] == a.attrs["read_level"]
                np.testing.assert_array_equal(b["coords"][:], a["coords"][:])
                np.testing.assert_array_equal(read_patches(b, slice(None)), read_patches(a, slice(None)))
    assert "tifffile (jpeg tiles" in (tmp_path / "bags" / "status.csv").read_text()


def test_missing_or_non_length_sizes_say_what_is_wrong(tmp_path, image):
    bare = write_ome_tiff(tmp_path / "bare.ome.tif", image, DOWNSAMPLES, size=None)
    pixel = write_ome_tiff(tmp_path / "pixel.ome.tif", image, DOWNSAMPLES, unit="pixel")
    result = tile(bare, pixel, "--out", tmp_path / "bags")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no PhysicalSizeX in its OME-XML" in text and "'pixel' in its OME-XML is not a length unit" in text
    assert "--mpp" in text
    assert tile(bare, "--out", tmp_path / "bags2", "--mpp", 0.25).exit_code == 0
