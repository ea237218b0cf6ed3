"""Synthetic slides: readable as Aperio by both backends, truthful masks, deterministic, seamless."""

from __future__ import annotations

import json
import math

import numpy as np
import openslide
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pathology.cli.synth import synth_command
from pathology.slide import open_slide
from pathology.synth import SlideRenderer, SynthConfig, derive_seed, write_synthetic_slide
from pathology.synth.recipe import H_AND_E

BACKENDS = ["openslide", "tiffslide"]
CONFIG = SynthConfig(width=2048, height=1536, seed=7, tumor_fraction=0.3, stain_variation=0.5)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("synth") / "slide.svs", CONFIG)


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(rgb.astype(np.float64), 1) / 255)


def test_opens_as_aperio_in_both_backends(slide):
    osr = openslide.OpenSlide(str(slide.slide))
    assert osr.properties["openslide.vendor"] == "aperio"
    assert set(osr.associated_images) == {"thumbnail"}  # never a label or macro
    for backend in BACKENDS:
        with open_slide(slide.slide, backend=backend) as s:
            assert s.level_dimensions == [(2048, 1536), (512, 384)]  # 16x would be smaller than a tile
            assert s.level_downsamples == [1.0, 4.0]
            assert (s.mpp.x, s.mpp.y) == (0.25, 0.25) and "aperio" in s.mpp.source


def test_level_selection_follows_tile_size(tmp_path):
    truth = write_synthetic_slide(tmp_path / "t.svs", SynthConfig(width=2048, height=1536, tile_size=32, mpp=0.5))
    expected = [(2048, 1536), (512, 384), (128, 96), (32, 24)]
    assert [(lv["width"], lv["height"]) for lv in truth.info["levels"]] == expected
    for backend in BACKENDS:
        with open_slide(truth.slide, backend=backend) as s:
            assert s.level_dimensions == expected
            assert s.level_downsamples == [1.0, 4.0, 16.0, 64.0]
            assert s.mpp.x == 0.5


def test_pixels_match_between_backends(slide):
    with open_slide(slide.slide, backend="openslide") as a, open_slide(slide.slide, backend="tiffslide") as b:
        for level, (x, y, w, h) in [(0, (900, 700, 600, 500)), (1, (0, 0, 512, 384))]:
            ra, rb = a.read_level_region(level, x, y, w, h), b.read_level_region(level, x, y, w, h)
            assert ra.std() > 10  # tissue, not a blank
            np.testing.assert_array_equal(ra, rb)


def test_reduced_level_is_the_block_mean_of_level0(slide):
    with open_slide(slide.slide, backend="tiffslide") as s:
        full = s.read_level_region(0, 0, 0, 2048, 1536).astype(np.float64)
        low = s.read_level_region(1, 0, 0, 512, 384).astype(np.float64)
    means = full.reshape(384, 4, 512, 4, 3).mean(axis=(1, 3))
    assert np.abs(means - low).mean() < 3.5  # JPEG only; off by one level-1 pixel gives ~6


def test_truth_files_and_json(slide):
    info = json.loads(slide.metadata.read_text())
    assert info == slide.info
    assert slide.tissue_mask.name == "slide.tissue.png" and slide.tumor_mask.name == "slide.tumor.png"
    ds = info["mask_downsample"]
    assert ds == 32
    for mask_path in (slide.tissue_mask, slide.tumor_mask):
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (math.ceil(1536 / ds), math.ceil(2048 / ds))
        assert set(np.unique(mask)) <= {0, 255}
    for key, value in dict(width=2048, height=1536, mpp=0.25, seed=7, tile_size=256, jpeg_quality=85).items():
        assert info[key] == value
    assert [lv["downsample"] for lv in info["levels"]] == [1, 4]
    assert set(info["stains"]) == {"hematoxylin", "eosin"}
    assert 0.1 < info["tissue_fraction"] < 0.9


def test_tissue_mask_agrees_with_the_pixels(slide):
    tissue = np.asarray(Image.open(slide.tissue_mask)) > 0
    with open_slide(slide.slide) as s:
        low = s.read_scaled(32)  # one pixel per mask pixel
    assert low.shape[:2] == tissue.shape
    painted = low.min(axis=2) < 215  # glass is ~240 in every channel
    assert abs(painted.mean() - tissue.mean()) < 0.03
    assert (painted & tissue).sum() / (painted | tissue).sum() > 0.95  # a mask one pixel off scores 0.92


def test_tumor_share_and_tumor_looks_denser(slide):
    assert slide.info["tumor_fraction"] == pytest.approx(0.3, abs=0.03)
    tissue = np.asarray(Image.open(slide.tissue_mask)) > 0
    tumor = np.asarray(Image.open(slide.tumor_mask)) > 0
    assert not (tumor & ~tissue).any()
    with open_slide(slide.slide) as s:
        red_od = _od(s.read_scaled(32))[..., 0]  # hematoxylin absorbs red far more than eosin
    assert red_od[tumor].mean() > 1.3 * red_od[tissue & ~tumor].mean()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.6, 1.0])
def test_tumor_fraction_is_honoured(fraction):
    fields = SlideRenderer(SynthConfig(width=4096, height=3072, seed=3, tumor_fraction=fraction)).fields
    share = fields.tumor_mask.sum() / fields.tissue_mask.sum()
    assert share == pytest.approx(fraction, abs=0.02)


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    config = SynthConfig(width=1024, height=768, seed=11)

    def pixels(name: str, cfg: SynthConfig, processes: int = 0) -> np.ndarray:
        truth = write_synthetic_slide(tmp_path / name, cfg, processes=processes)
        with open_slide(truth.slide, backend="tiffslide") as s:
            return s.read_level_region(0, 0, 0, 1024, 768)

    first = pixels("a.svs", config)
    np.testing.assert_array_equal(first, pixels("b.svs", config, processes=1))  # threads or processes alike
    other = pixels("c.svs", SynthConfig(width=1024, height=768, seed=12))
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 10


def test_stain_variation_changes_the_hue():
    region = (0, 0, 2048, 1536)

    def mean_od_direction(variation: float, seed: int = 5) -> np.ndarray:
        rgb = SlideRenderer(SynthConfig(width=2048, height=1536, seed=seed, stain_variation=variation)).render(*region)
        od = _od(rgb)
        od = od[od.sum(axis=2) > 0.3]  # tissue
        v = od.mean(axis=0)
        return v / np.linalg.norm(v)

    def angle(a: np.ndarray, b: np.ndarray) -> float:
        return math.degrees(math.acos(min(1.0, float(a @ b))))

    fixed = mean_od_direction(0.0)
    assert angle(fixed, mean_od_direction(0.0)) < 1e-3  # same look for the same seed
    assert angle(fixed, mean_od_direction(1.0)) > 2.0
    # 0 is the standard look: the recipe's vectors, for every seed
    renderer = SlideRenderer(SynthConfig(width=256, height=256, seed=99, stain_variation=0.0))
    np.testing.assert_allclose(renderer.recipe.stain_matrix(), H_AND_E.stain_matrix())
    varied = [SlideRenderer(SynthConfig(width=256, height=256, seed=s, stain_variation=1.0)).recipe.stain_matrix()
              for s in (1, 2)]
    assert np.abs(varied[0] - varied[1]).max() > 0.02


def test_regions_render_the_same_alone_or_inside_a_larger_one():
    renderer = SlideRenderer(CONFIG)
    big = renderer.render(0, 0, 1024, 1024)
    for x, y, w, h in [(200, 300, 600, 500), (255, 255, 2, 2), (0, 512, 1024, 1)]:
        np.testing.assert_array_equal(renderer.render(x, y, w, h), big[y:y + h, x:x + w])


def test_tiles_join_without_seams(slide):
    # a region straddling tile corners (x=768, y=768), rendered directly, against the file
    x, y, w, h = 640, 640, 256, 256
    direct = SlideRenderer(CONFIG).render(x, y, w, h).astype(np.int16)
    with open_slide(slide.slide, backend="openslide") as s:
        stored = s.read_region((x, y), 0, (w, h)).astype(np.int16)
    assert direct.std() > 10
    err = np.abs(direct - stored).mean(axis=2)
    assert err.mean() < 4  # JPEG error only
    seam = np.r_[err[:, 126:130].mean(), err[126:130].mean()]
    assert seam.max() < 2 * err.mean() + 1


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(synth_command)
    return app


def test_cli_writes_a_cohort_with_derived_seeds(tmp_path):
    out = tmp_path / "cohort"
    result = CliRunner().invoke(_cli(), [str(out), "--width", "640", "--height", "512", "--count", "2",
                                         "--seed", "4", "--tumor-fraction", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    infos = [json.loads((out / f"synthetic_{i:03d}.json").read_text()) for i in range(2)]
    assert [i["seed"] for i in infos] == [derive_seed(4, 0), derive_seed(4, 1)]
    assert infos[0]["seed"] != infos[1]["seed"]
    assert all(i["tumor_fraction_target"] == 0.5 and (i["width"], i["height"]) == (640, 512) for i in infos)
    for i in range(2):
        assert (out / f"synthetic_{i:03d}.tissue.png").exists() and (out / f"synthetic_{i:03d}.tumor.png").exists()
        with open_slide(out / f"synthetic_{i:03d}.svs") as s:
            assert s.dimensions == (640, 512)


def test_cli_single_slide_and_bad_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(_cli(), [str(tmp_path / "one.svs"), "--width", "512", "--height", "512", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "one.json").read_text())["width"] == 512
    result = runner.invoke(_cli(), [str(tmp_path / "one.png")])
    assert result.exit_code == 2 and ".svs" in result.output
    result = runner.invoke(_cli(), [str(tmp_path / "x.svs"), "--tile-size", "100"])
    assert result.exit_code == 2 and "tile size" in result.output
    assert not (tmp_path / "x.svs").exists()


def test_cli_recipe_option_renders_ihc_and_refuses_unknown_looks(tmp_path):
    from pathology.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["synth", str(tmp_path / "ihc.svs"), "--width", "1024", "--height", "768",
                             "--recipe", "ihc-nuclear"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ihc.json").read_text())["recipe"]["name"] == "ihc-nuclear"
    bad = runner.invoke(app, ["synth", str(tmp_path / "x.svs"), "--recipe", "trichrome"])
    assert bad.exit_code == 2 and "unknown recipe 'trichrome'" in bad.output
