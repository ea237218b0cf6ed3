"""``pathology ihc`` as a user runs it: a real IHC image, a synthetic slide, a broken file."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image
from skimage.color import rgb2hed
from typer.testing import CliRunner

from pathology.cli import app
from pathology.ihc.pipeline import tissue_mask
from pathology.ihc.report.qc import CLASS_COLOURS
from pathology.slide import open_slide
from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field
from pathology.tissue import TissueParams

runner = CliRunner()


def test_real_ihc_image_scored_as_her2(tmp_path, data):
    """ihc.png shows colonic glands stained for FHL2 (scikit-image), at no stated resolution:
    scored here as HER2 at an assumed 0.5 µm/px, so no HER2 score is known to be right. What
    is checked is what must hold on any image: the call follows the ASCO/CAP 2018 rule from
    the reported counts, the counts agree wherever they are reported, the DAB-positive area
    agrees with scikit-image, and every scored cell is outlined in its class colour."""
    image = data / "scikit-image" / "ihc.png"
    out = tmp_path / "out"
    result = runner.invoke(app, ["ihc", str(image), "--marker", "her2", "--out", str(out), "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "ihc.json").read_text())
    counts = np.array([r["class_counts"][k] for k in ("negative", "weak_1plus", "moderate_2plus", "strong_3plus")])
    assert counts.sum() == r["cells"] > 100
    share = counts / counts.sum()    # ASCO/CAP 2018, written out here: > 10 % of cells at 3+, 2+ or more, 1+ or more
    expected = 3 if share[3] > 0.1 else 2 if share[2:].sum() > 0.1 else 1 if share[1:].sum() > 0.1 else 0
    assert r["call"]["value"] == expected
    assert "not a diagnosis" in r["call"]["disclaimer"]

    # DAB-positive area agrees with a direct scikit-image computation on the same tissue pixels:
    # rgb2hed gives natural-log OD / ln(1e6), i.e. decadic OD / 6. Stated tolerance: 1 point
    # (our basis swaps skimage's eosin for a residual; measured difference 0.4 points).
    rgb = np.asarray(Image.open(image).convert("RGB"))
    with open_slide(image, mpp=0.5) as slide:
        mask, scale = tissue_mask(slide, TissueParams())
    rows = ((np.arange(rgb.shape[0]) + 0.5) // scale[1]).astype(int)
    cols = ((np.arange(rgb.shape[1]) + 0.5) // scale[0]).astype(int)
    tissue = mask[rows][:, cols]
    direct = 100 * (6 * rgb2hed(rgb)[..., 2] >= r["thresholds_dab_od"]["weak"])[tissue].mean()
    assert abs(r["dab_positive_area_percent"] - direct) <= 1.0, (r["dab_positive_area_percent"], direct)
    assert 5 < direct < 95                                      # neither none nor all: the agreement has teeth

    qc = np.asarray(Image.open(out / "qc" / "ihc.png").convert("RGB"))
    assert qc.shape[1] == 1024 and qc.shape[0] > 1024          # 512 px = 256 µm at 0.5 µm/px, drawn at 2x
    outline = np.array([np.all(qc == colour, axis=-1).sum() for colour in CLASS_COLOURS])
    per_cell = outline[counts > 0] / counts[counts > 0]         # outline pixels per cell, by class
    assert (outline[counts == 0] == 0).all() and per_cell.max() < 2 * per_cell.min()  # measured: 231-290
    for name in ("positivity", "intensity"):
        heat = np.asarray(Image.open(out / "maps" / f"ihc.{name}.png").convert("RGB"))
        assert heat.shape[1] == 512
    with open(out / "tiles" / "ihc.csv") as fh:
        tiles = list(csv.DictReader(fh))
    assert len(tiles) == 1 and int(tiles[0]["cells"]) == r["cells"]
    with open(out / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    assert [s["slide_id"] for s in scores] == ["ihc"] and scores[0]["call_value"] == str(expected)


def test_a_nuclear_marker_on_membranous_staining_is_flagged(tmp_path, data):
    """ihc.png's DAB (FHL2) stains the gland cells' cytoplasm, not their nuclei: scored as ER,
    the "positive nuclei" are brown cell bodies over twice the size of the negative nuclei,
    and the result says so."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["ihc", str(data / "scikit-image" / "ihc.png"), "--marker", "er", "--out", str(out),
                                 "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "ihc.json").read_text())
    sizes = r["mean_nucleus_area_um2"]
    assert sizes["positive"] > 2 * sizes["negative"]
    assert len(r["warnings"]) == 1 and "membranous or cytoplasmic" in r["warnings"][0]
    assert "membranous or cytoplasmic" in " ".join(result.output.split())


def test_batch_keeps_going_resumes_and_reports(tmp_path, data):
    write_cell_field(tmp_path / "slides" / "field.svs", CellFieldConfig(width=768, height=768, seed=5))
    (tmp_path / "slides" / "broken.svs").write_bytes(b"not a slide")
    out = tmp_path / "out"
    args = ["ihc", str(tmp_path / "slides"), str(data / "scikit-image" / "ihc.png"), "-m", "er", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1                                # two bad inputs, one good slide
    assert "broken" in result.output and "--mpp" in result.output   # the plain image has no µm/px
    assert sorted(p.name for p in out.glob("*.json")) == ["field.json"]
    with open(out / "scores.csv") as fh:
        assert [row["slide_id"] for row in csv.DictReader(fh)] == ["field"]
    first = (out / "field.json").read_text()

    rerun = runner.invoke(app, ["ihc", str(tmp_path / "slides" / "field.svs"), "-m", "er", "-o", str(out)])
    assert rerun.exit_code == 0 and "0 done, 1 skipped" in rerun.output
    assert (out / "field.json").read_text() == first           # untouched

    changed = runner.invoke(app, ["ihc", str(tmp_path / "slides" / "field.svs"), "-m", "er", "-o", str(out),
                                  "--thresholds", "0.2,0.4,0.8"])
    assert changed.exit_code == 0 and "1 done, 0 skipped" in changed.output
    assert json.loads((out / "field.json").read_text())["thresholds_dab_od"]["weak"] == 0.2

    bad = runner.invoke(app, ["ihc", str(tmp_path / "slides" / "field.svs"), "-m", "er", "-o", str(out),
                              "--thresholds", "0.5,0.2"])
    assert bad.exit_code == 2 and "weak,moderate,strong" in bad.output


def test_blank_image_is_not_evaluable(tmp_path):
    blank = tmp_path / "glass.png"
    Image.fromarray(np.full((600, 800, 3), 244, np.uint8)).save(blank)
    out = tmp_path / "out"
    result = runner.invoke(app, ["ihc", str(blank), "-m", "ki67", "-o", str(out), "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "glass.json").read_text())
    assert r["cells"] == 0 and r["call"]["result"] == "not evaluable (no cells found)" and r["tiles"] == 0
    assert (out / "qc" / "glass.png").is_file() and (out / "maps" / "glass.positivity.png").is_file()
