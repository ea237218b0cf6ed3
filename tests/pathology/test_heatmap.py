"""`pathology heatmap` on a real tiled synthetic SVS: overlays, montages, CSV, QuPath GeoJSON."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import openslide
import pytest
import tiffslide
from PIL import Image
from scipy import ndimage
from skimage import draw
from typer.testing import CliRunner

from pathology.cli import app
from pathology.heatmap import HeatmapError, HeatmapOptions, attention_file, heatmap_slide, normalize
from pathology.heatmap.montage import fit_patch, layout
from pathology.heatmap.overlay import BAR_COLOUR, colour_lut
from pathology.heatmap.raster import OutputGrid, paint_mean, smooth
from pathology.heatmap.scores import extremes
from pathology.synth import SynthConfig, write_synthetic_slide
from tests.factories import add_features, stored_patches

runner = CliRunner()
MASK_DS = 32          # the synthetic truth masks' level-0 px per pixel
THUMB_DS = 16         # 8 µm/px thumbnail of a 0.5 µm/px slide


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 4096x3072 synthetic SVS at 0.5 µm/px, tiled with 50% overlap into a bag with patches
    and a coords-only bag, and attention that is high on the true tumour."""
    root = tmp_path_factory.mktemp("heatmap")
    truth = write_synthetic_slide(root / "slides" / "syn.svs",
                                  SynthConfig(width=4096, height=3072, mpp=0.5, seed=3, tumor_fraction=0.3))
    for name, extra in (("bags", []), ("coords_bags", ["--no-patches"])):
        result = runner.invoke(app, ["tile", str(truth.slide), "--out", str(root / name), "--target-mpp", "1.0",
                                     "--patch-size", "128", "--overlap", "64", "-q", *extra])
        assert result.exit_code == 0, result.output
    bag = root / "bags" / "syn.h5"
    with h5py.File(bag) as f:
        coords = f["coords"][:]
    tumour = np.asarray(Image.open(truth.tumor_mask)) > 0
    centre = (coords + 128) // MASK_DS
    inside = tumour[np.clip(centre[:, 1], 0, tumour.shape[0] - 1), np.clip(centre[:, 0], 0, tumour.shape[1] - 1)]
    rng = np.random.default_rng(0)
    er = (np.where(inside, 1.0, 0.1) * rng.uniform(0.8, 1.2, len(coords))).astype(np.float32)
    noise = rng.uniform(0, 1, len(coords)).astype(np.float32)
    attention = root / "attention" / "syn.h5"
    write_attention(attention, coords, {"er": er, "tumor": noise})
    return {"root": root, "truth": truth, "bag": bag, "coords_bag": root / "coords_bags" / "syn.h5",
            "attention": attention, "coords": coords, "er": er, "inside": inside, "tumour": tumour}


def write_attention(path, coords, tasks):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = np.asarray(coords, np.int64)
        for task, scores in tasks.items():
            f[f"attention/{task}"] = scores


def heatmap(*args):
    return runner.invoke(app, ["heatmap", *map(str, args)])


def picture(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def decode(pixels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colour-map position in [0, 1] of each RGB pixel (nearest LUT entry)."""
    d = ((pixels[:, None, :].astype(np.int32) - lut[None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(1) / 255.0


def test_overlay_is_high_on_the_tumour_and_paints_only_tissue(cohort, tmp_path):
    out = tmp_path / "out"
    result = heatmap("--bag", cohort["bag"], "--attention", cohort["attention"], "--out", out, "--task", "er",
                     "--alpha", "1", "--cmap", "jet", "--top-k", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "syn").iterdir()) == ["er.geojson", "er.heatmap.png", "er.scores.csv"]
    with h5py.File(cohort["bag"]) as f:
        thumb, tissue = f["thumbnail"][:], f["tissue_mask"][:].astype(bool)
    h, w = thumb.shape[:2]
    assert (w, h) == (256, 192)
    image = picture(out / "syn" / "er.heatmap.png")
    assert image.shape[1] == w and image.shape[0] > h            # the map, then the legend strip below
    assert (image[h, 0] == BAR_COLOUR).all()
    painted = (image[:h] != thumb).any(axis=-1)
    assert not (painted & ~tissue).any()                          # nothing outside tissue changed
    assert painted.sum() > 0.8 * tissue.sum()                     # nearly all tissue is under a patch
    values = np.zeros((h, w))
    values[painted] = decode(image[:h][painted], colour_lut("jet"))
    tumour = np.repeat(np.repeat(cohort["tumour"], 2, axis=0), 2, axis=1)[:h, :w]   # mask px = 2 thumbnail px
    core = ndimage.binary_erosion(tumour, iterations=8) & painted    # half a patch in
    far = ~ndimage.binary_dilation(tumour, iterations=12) & painted
    assert core.sum() > 100 and far.sum() > 1000
    assert (values[core] > 0.6).mean() > 0.95
    assert (values[far] < 0.3).mean() > 0.95


def test_output_size_at_a_chosen_resolution_never_touches_label_or_macro(cohort, tmp_path, monkeypatch):
    def forbidden(self):
        raise AssertionError("associated (label/macro) images must never be read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(forbidden))
    monkeypatch.setattr(tiffslide.TiffSlide, "associated_images", property(forbidden))
    out = tmp_path / "out"
    result = heatmap("--bag", cohort["coords_bag"], "--attention", cohort["attention"], "--out", out,
                     "--resolution", "2", "--smooth", "40", "--top-k", "3")
    assert result.exit_code == 0, result.output
    for task in ("er", "tumor"):
        image = picture(out / "syn" / f"{task}.heatmap.png")
        assert image.shape[1] == 1024 and image.shape[0] > 768     # 2048 µm x 1536 µm at 2 µm/px
        assert (image[768, 0] == BAR_COLOUR).all() and not (image[767] == BAR_COLOUR).all()
        assert (out / "syn" / f"{task}.montage.png").is_file()


def test_coarser_output_needs_no_slide(cohort, tmp_path, monkeypatch):
    def no_slide(*args, **kwargs):
        raise AssertionError("the slide must not be opened")

    monkeypatch.setattr("pathology.heatmap.slides.open_slide", no_slide)
    out = tmp_path / "out"
    result = heatmap("--bag", cohort["bag"], "--attention", cohort["attention"], "--out", out, "--max-size", "200",
                     "--task", "er")
    assert result.exit_code == 0, result.output
    image = picture(out / "syn" / "er.heatmap.png")
    assert image.shape[1] == 200 and (image[150, 0] == BAR_COLOUR).all()   # 4096x3072 -> 200x150


def test_rank_and_percentile_normalization_differ_as_documented(cohort, tmp_path):
    skewed = np.exp(np.linspace(0, 5, 100))
    pct, rank = normalize(skewed, "percentile"), normalize(skewed, "rank")
    lo, hi = np.percentile(skewed, [1, 99])
    np.testing.assert_allclose(pct.values, np.clip((skewed - lo) / (hi - lo), 0, 1))
    assert pct.values[0] == 0.0 and pct.values[-1] == 1.0 and pct.values.mean() < 0.25   # keeps the skew
    np.testing.assert_allclose(rank.values, np.arange(100) / 99)                          # uniform
    assert rank.values.mean() == pytest.approx(0.5)
    assert pct.ticks[-1][1] == f"{hi:.3g}" and rank.ticks[-1][1] == "highest"

    er = cohort["er"].astype(np.float64)
    columns = {}
    for method in ("percentile", "rank"):
        out = tmp_path / method
        result = heatmap("--bag", cohort["bag"], "--attention", cohort["attention"], "--out", out, "--task", "er",
                         "--normalize", method, "--top-k", "0")
        assert result.exit_code == 0, result.output
        columns[method] = np.array([float(r["normalized"]) for r in read_csv(out / "syn" / "er.scores.csv")])
    lo, hi = np.percentile(er, [1, 99])
    np.testing.assert_allclose(columns["percentile"], np.clip((er - lo) / (hi - lo), 0, 1), atol=1e-6)
    np.testing.assert_allclose(np.sort(columns["rank"]), np.linspace(0, 1, len(er)), atol=1e-6)
    assert np.abs(columns["rank"] - columns["percentile"]).max() > 0.2


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_has_one_row_per_patch_and_montage_shows_the_extremes(cohort, tmp_path):
    out = tmp_path / "out"
    result = heatmap("--bag", cohort["bag"], "--attention", cohort["attention"], "--out", out, "--task", "er",
                     "--top-k", "5")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "syn" / "er.scores.csv")
    coords, er = cohort["coords"], cohort["er"]
    assert len(rows) == len(coords) > 100          # one row per patch of the bag
    assert [int(r["patch"]) for r in rows] == list(range(len(coords)))
    np.testing.assert_array_equal([[int(r["x"]), int(r["y"])] for r in rows], coords)
    assert {(r["width"], r["height"]) for r in rows} == {("256", "256")}
    np.testing.assert_array_equal([float(r["score"]) for r in rows], er.astype(np.float64))
    ranks = np.array([int(r["rank"]) for r in rows])
    assert sorted(ranks) == list(range(1, len(rows) + 1))
    assert ranks[np.argmax(er)] == 1 and ranks[np.argmin(er)] == len(er)

    top, low = extremes(er, 5)
    np.testing.assert_array_equal(top, np.argsort(-er)[:5])
    np.testing.assert_array_equal(low, np.argsort(er)[:5])
    assert all(cohort["inside"][top]) and not any(cohort["inside"][low])
    montage = picture(out / "syn" / "er.montage.png")
    plan = layout([5, 5])
    assert montage.shape[:2] == (plan.height, plan.width)
    stored = stored_patches(cohort["bag"])  # JPEG, the default: the montage shows the decoded patch exactly
    for rows_, corners in ((top, plan.tiles[0]), (low, plan.tiles[1])):
        for i, (x0, y0) in zip(rows_, corners, strict=True):
            tile = montage[y0:y0 + 192, x0:x0 + 192]
            np.testing.assert_array_equal(tile, fit_patch(stored[int(i)]))


def test_geojson_is_qupath_importable(cohort, tmp_path):
    out = tmp_path / "out"
    assert heatmap("--bag", cohort["bag"], "--attention", cohort["attention"], "--out", out, "--task", "er",
                   "--top-k", "0").exit_code == 0
    text = (out / "syn" / "er.geojson").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON number {c}"))
    assert doc["type"] == "FeatureCollection"
    detections = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    annotations = [f for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(detections) == len(cohort["coords"]) and len(detections) + len(annotations) == len(doc["features"])
    for feature, (x, y), score in zip(detections, cohort["coords"], cohort["er"], strict=True):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring == [[x, y], [x + 256, y], [x + 256, y + 256], [x, y + 256], [x, y]]
        props = feature["properties"]
        assert props["classification"]["name"] == "er" and len(props["classification"]["color"]) == 3
        assert props["measurements"]["er attention"] == float(score)
        assert 0 <= props["measurements"]["er attention (percentile)"] <= 1
        assert 0.5 <= props["measurements"]["tissue fraction"] <= 1

    with h5py.File(cohort["bag"]) as f:
        tissue = f["tissue_mask"][:].astype(bool)
    assert 1 <= len(annotations) <= 5
    drawn = np.zeros_like(tissue)
    for feature in annotations:
        assert feature["properties"]["classification"]["name"] == "Tissue"
        outer, *holes = feature["geometry"]["coordinates"]
        for k, ring in enumerate([outer, *holes]):
            assert len(ring) >= 4 and ring[0] == ring[-1]
            ring = np.asarray(ring)
            rr, cc = draw.polygon(ring[:, 1] / THUMB_DS - 0.5, ring[:, 0] / THUMB_DS - 0.5, tissue.shape)
            drawn[rr, cc] = k == 0
    iou = (drawn & tissue).sum() / (drawn | tissue).sum()
    assert iou > 0.9


def test_mismatched_attention_is_a_one_line_error(cohort, tmp_path):
    coords, er = cohort["coords"], cohort["er"]
    short = tmp_path / "short.h5"
    write_attention(short, coords[:-1], {"er": er[:-1]})
    moved = coords.copy()
    moved[17] += 64
    shifted = tmp_path / "shifted.h5"
    write_attention(shifted, moved, {"er": er})
    rows = f"{len(coords) - 1} attention rows"                     # one short of the bag's patches
    cases = [(short, (), rows), (shifted, (), "coords differ from bag .* in 1 row \\(first: row 17"),
             (cohort["attention"], ("pr",), "no attention for task 'pr' \\(has: er, tumor\\)")]
    for path, tasks, message in cases:
        with pytest.raises(HeatmapError, match=message) as info:
            heatmap_slide(cohort["bag"], attention_file(path), tmp_path / "out", HeatmapOptions(tasks=tasks))
        assert "\n" not in str(info.value)
    result = heatmap("--bag", cohort["bag"], "--attention", short, "--out", tmp_path / "cli")
    assert result.exit_code == 1 and rows in " ".join(result.output.split())
    assert not (tmp_path / "cli" / "syn").exists()


def test_batch_goes_past_a_bag_without_attention(cohort, tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    shutil.copy(cohort["bag"], bags / "syn.h5")
    shutil.copy(cohort["bag"], bags / "other.h5")
    out = tmp_path / "out"
    result = heatmap("--bag", bags, "--attention", cohort["attention"].parent, "--out", out, "--top-k", "0")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no attention file for slide other" in text and "1 done, 0 skipped, 1 failed" in text
    assert (out / "syn" / "er.heatmap.png").is_file() and not (out / "other").exists()


def test_coords_only_bag_reads_its_montage_from_the_slide(cohort, tmp_path):
    slide_dir = tmp_path / "moved"
    slide_dir.mkdir()
    slide = shutil.copy(cohort["truth"].slide, slide_dir / "syn.svs")
    bags = tmp_path / "bags"
    assert runner.invoke(app, ["tile", str(slide), "--out", str(bags), "--target-mpp", "1.0", "--patch-size", "128",
                               "--overlap", "64", "--no-patches", "-q"]).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.move(slide_dir, elsewhere)
    args = ["--bag", bags / "syn.h5", "--attention", cohort["attention"], "--task", "er", "--top-k", "2"]
    result = heatmap(*args, "--out", tmp_path / "a")
    assert result.exit_code == 1
    assert "the montage (the bag stores no patches) needs the slide" in " ".join(result.output.split())
    assert not (tmp_path / "a" / "syn").exists()                                    # nothing half-written
    assert heatmap(*args, "--out", tmp_path / "b", "--top-k", "0").exit_code == 0   # no montage: no slide needed
    result = heatmap(*args, "--out", tmp_path / "c", "--slide", elsewhere)
    assert result.exit_code == 0, result.output
    montage = picture(tmp_path / "c" / "syn" / "er.montage.png")
    plan = layout([2, 2])
    top, _ = extremes(cohort["er"], 2)
    stored = [fit_patch(p).astype(np.float32) for p in stored_patches(cohort["bag"], top)]
    for j, (x0, y0) in enumerate(plan.tiles[0]):
        tile = montage[y0:y0 + 192, x0:x0 + 192].astype(np.float32)
        same, other = np.abs(tile - stored[j]).mean(), np.abs(tile - stored[1 - j]).mean()
        assert same < 4 and other > 4 * same          # the re-read patch is the stored one


def test_overlapping_patches_average_and_smoothing_keeps_levels():
    grid = OutputGrid(10, 10, (1.0, 1.0), 1.0)
    coords = np.array([[0, 0], [4, 0]])
    mean, covered = paint_mean(grid, coords, np.array([6.0, 6.0]), np.array([0.0, 1.0]))
    np.testing.assert_array_equal(mean[0], [0, 0, 0, 0, 0.5, 0.5, 1, 1, 1, 1])
    assert covered[:6].all() and not covered[6:].any()
    flat = smooth(np.where(covered, 0.7, 0).astype(np.float32), covered, 2.0)
    np.testing.assert_allclose(flat[covered], 0.7, rtol=1e-5)     # normalized convolution: no edge fall-off
    assert (flat[~covered] == 0).all()
    ramp = smooth(mean, covered, 1.5)[2]
    assert 0 < ramp[3] < 0.5 < ramp[6] < 1 and (np.diff(ramp) >= -1e-6).all()


def test_argument_errors_exit_2(cohort, tmp_path, monkeypatch):
    base = ["--bag", cohort["bag"], "--out", tmp_path]
    for extra, message in ((["--attention", cohort["attention"], "--model", tmp_path], "exactly one of"),
                           ([], "exactly one of"),
                           (["--attention", cohort["attention"], "--resolution", "2", "--max-size", "500"], "not both"),
                           (["--attention", cohort["attention"], "--cmap", "nope"], "unknown colour map"),
                           (["--attention", cohort["attention"], "--percentiles", "90", "10"], "0 <= low < high")):
        result = heatmap(*base, *extra)
        assert result.exit_code == 2 and message in result.output, result.output
    result = heatmap(*base, "--attention", cohort["attention"], "--resolution", "0.01")
    # 4096 x 3072 px at 0.5 µm/px drawn at 0.01 µm/px: 50 output px per slide px
    assert result.exit_code == 1 and "204800x153600 picture" in " ".join(result.output.split())
    result = heatmap(*base, "--model", tmp_path)  # a folder that is not a run
    assert result.exit_code == 2 and "not a run folder (no config.json)" in " ".join(result.output.split())


def test_model_run_computes_the_attention_itself(cohort, tmp_path):
    """--model applies a trained run (mil.predict) to the bag's features: the same scores as
    predicting the bag directly."""
    from safetensors.torch import save_model

    from mil.models import Head, create_model
    from mil.predict import load_run, predict_bag

    bag = tmp_path / "bags" / "syn.h5"
    bag.parent.mkdir()
    shutil.copy(cohort["bag"], bag)
    features = np.random.default_rng(1).normal(size=(len(cohort["coords"]), 8)).astype(np.float32)
    add_features(bag, features, encoder="toy", dtype=None)
    run_dir = tmp_path / "run"
    (run_dir / "fold_0").mkdir(parents=True)
    save_model(create_model("abmil", 8, [Head("er", 1)], hidden=16, dropout=0.0), str(run_dir / "fold_0" /
                                                                                         "model.safetensors"))
    (run_dir / "config.json").write_text(json.dumps({
        "model": {"name": "abmil", "hidden": 16, "dropout": 0.0}, "heads": [{"name": "er", "n_outputs": 1,
                                                                             "kind": "binary"}],
        "folds": [{"fold": 0}], "in_dim": 8, "features": "toy"}))
    out = tmp_path / "out"
    result = heatmap("--bag", bag, "--model", run_dir, "--out", out, "--top-k", "2")
    assert result.exit_code == 0, result.output
    expected = predict_bag(load_run(run_dir), features)[1]["er"]
    scores = [float(r["score"]) for r in read_csv(out / "syn" / "er.scores.csv")]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert np.isclose(sum(scores), 1.0, atol=1e-4)          # ABMIL attention: a softmax over the patches
