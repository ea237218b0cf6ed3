"""The synthetic demo cohort: reproducible, labels follow the documented rules, the manifest
loads, and each label's cue is in the tumour's pixels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from mil.manifest import load_manifest
from pathology.cli.synth_cohort import cohort_command
from pathology.errors import InputError
from pathology.synth import SlideRenderer, SynthConfig
from pathology.synth.cohort import (
    MANIFEST_COLUMNS,
    SIZES,
    Phenotype,
    make_cohort,
    manifest_text,
    phenotype_recipe,
    plan_cohort,
)

TINY = dict(n_slides=6, n_patients=5, width=1024, height=768)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), seed=3, **TINY)


@pytest.fixture(scope="module")
def default_plan():
    return plan_cohort(seed=0)


def test_same_seed_same_cohort_bytes(cohort, tmp_path):
    again = make_cohort(tmp_path, seed=3, **TINY)
    root = cohort.manifest_path.parent
    assert again.manifest_path.read_bytes() == cohort.manifest_path.read_bytes()
    assert (tmp_path / "cohort.json").read_bytes() == (root / "cohort.json").read_bytes()
    for name in ("P001-A.svs", "P001-A.tumor.png", "P001-A.json"):
        assert (tmp_path / "slides" / name).read_bytes() == (root / "slides" / name).read_bytes(), name
    other = plan_cohort(seed=4, **TINY)
    assert manifest_text(other) != cohort.manifest_path.read_text()
    # changed parameters: a rerun renders every slide again
    changed = make_cohort(tmp_path, seed=3, stain_variation=0.2, **TINY)
    assert [o.status for o in changed.outcomes] == ["done"] * 6
    assert (tmp_path / "slides" / "P001-A.svs").read_bytes() != (root / "slides" / "P001-A.svs").read_bytes()


def test_written_cohort_matches_its_manifest(cohort):
    root = cohort.manifest_path.parent
    assert [o.status for o in cohort.outcomes] == ["done"] * 6
    lines = cohort.manifest_path.read_text().splitlines()
    assert lines[0] == ",".join(MANIFEST_COLUMNS) and len(lines) == 7
    truth = json.loads((root / "cohort.json").read_text())
    for s in cohort.slides:
        meta = json.loads((root / "slides" / f"{s.slide_id}.json").read_text())
        tumour = np.asarray(Image.open(root / "slides" / f"{s.slide_id}.tumor.png")) > 0
        assert (root / s.slide_path).is_file() and meta["config"] == s.config.to_dict()
        if s.phenotype is None:
            assert s.row["tumor"] == "0" and meta["recipe"]["name"] == "he" and not tumour.any()
        else:
            assert s.row["tumor"] == "1" and meta["recipe"]["name"] == s.phenotype.recipe_name and tumour.any()
            radius = {k["name"]: k["radius_um"] for k in meta["recipe"]["nuclei"]}["tumor"]
            assert radius == (3.4 if s.phenotype.er else 5.6)
    assert [p["patient_id"] for p in truth["patients"]] == [f"P{i:03d}" for i in range(1, 6)]
    # a rerun skips every slide written from the same parameters
    rerun = make_cohort(root, seed=3, **TINY)
    assert [o.status for o in rerun.outcomes] == ["skipped"] * 6


def test_labels_follow_the_rules(default_plan):
    plan = default_plan
    rows = [s.row for s in plan.slides]
    patients = {p["patient_id"]: p for p in plan.patients}
    assert len(rows) == 48 and len(patients) == 40
    assert len({r["slide_id"] for r in rows}) == 48
    per_patient = Counter(r["patient_id"] for r in rows)
    assert sorted(Counter(per_patient.values()).items()) == [(1, 32), (2, 8)]
    for pid in per_patient:  # a patient's slides carry the same labels
        labels = {tuple(r[c] for c in MANIFEST_COLUMNS[3:]) for r in rows if r["patient_id"] == pid}
        assert len(labels) == 1, pid
    tumour = [p for p in patients.values() if p["tumor"]]
    assert len(tumour) == 32  # 20 % tumour-free
    for s in plan.slides:
        if not patients[s.patient_id]["tumor"]:
            assert (s.row["tumor"], s.row["er"], s.row["pr"], s.row["her2"]) == ("0", "", "", "")
            assert s.config.tumor_fraction == 0 and s.phenotype is None and s.config.recipe == "he"
        else:
            assert 0.1 <= s.config.tumor_fraction <= 0.6 and s.config.recipe == s.phenotype.recipe_name
    er_pos = [p for p in tumour if p["er"]]
    assert len(er_pos) == round(0.65 * 32) == 21
    assert all(p["er"] for p in tumour if p["pr"])                       # PR+ only if ER+
    assert sum(p["pr"] for p in er_pos) == round(0.8 * 21) == 17
    assert sum(p["her2"] for p in tumour) == round(0.3 * 32) == 10
    for marker in ("er", "pr", "her2"):  # 10 % of tumour patients unknown
        assert sum(marker in p["unknown"] for p in tumour) == 3
        assert sum(patients[r["patient_id"]]["tumor"] and r[marker] == "" for r in rows) >= 3
    assert sum("os" in p["unknown"] for p in patients.values()) == 2
    censored = np.mean([p["os_event"] == 0 for p in patients.values()])
    assert 0.15 <= censored <= 0.45
    hazard = {k: np.mean([np.log(p["hazard_per_month"]) for p in tumour if p["er"] == k]) for k in (True, False)}
    assert hazard[False] - hazard[True] > 1.0  # ER- raises the hazard


def test_plan_rejects_impossible_sizes():
    with pytest.raises(InputError, match="between the patients and twice that"):
        plan_cohort(n_slides=90, n_patients=40)
    with pytest.raises(InputError, match="at least 5 patients"):
        plan_cohort(n_slides=4, n_patients=4)


def test_manifest_loads_for_every_task(default_plan, tmp_path):
    """Every label the loader reads is the plan's patient truth (unknown: NaN), slide by slide."""
    path = tmp_path / "manifest.csv"
    path.write_text(manifest_text(default_plan))
    cohort = load_manifest(path, targets=["tumor", "er", "pr", "her2"], survival=("os_time", "os_event"))
    patients = {p["patient_id"]: p for p in default_plan.patients}
    truth = [patients[s.patient_id] for s in default_plan.slides]
    assert cohort.table["slide_id"].tolist() == [s.slide_id for s in default_plan.slides]
    assert len(cohort.table) == 48 and cohort.table["patient_id"].nunique() == 40
    np.testing.assert_array_equal(cohort.labels("tumor"), [float(p["tumor"]) for p in truth])
    for marker in ("er", "pr", "her2"):   # no marker status without tumour, or when blanked
        expected = [float(p[marker]) if p["tumor"] and marker not in p["unknown"] else np.nan for p in truth]
        np.testing.assert_array_equal(cohort.labels(marker), expected)
        assert 0 < np.nanmean(expected) < 1
    survival = cohort.labels("survival")
    known = np.array(["os" not in p["unknown"] for p in truth])
    assert np.isnan(survival[~known]).all() and (~known).sum() > 0
    expected = [[p["os_time"], p["os_event"]] for p in truth if "os" not in p["unknown"]]
    np.testing.assert_allclose(survival[known], expected, rtol=1e-5)  # written with 6 significant digits
    assert np.nanmin(survival[:, 0]) >= 0.5   # the generator's floor on observed times (cohort._survival)


def _tumour_stats(phenotype: Phenotype) -> dict[str, float]:
    """Nucleus size and count, nuclear area and eosin in a tumour-only box (the same layout for
    every phenotype), from the pixels deconvolved with the recipe's own stain vectors."""
    config = SynthConfig(width=2048, height=1536, mpp=0.5, seed=4, tumor_fraction=1.0, stain_variation=0,
                         recipe=phenotype.recipe_name)
    renderer = SlideRenderer(config)
    depth = ndimage.distance_transform_edt(renderer.fields.tissue_mask)
    assert depth.max() * renderer.fields.ds > 256 * 1.42  # the whole box lies in the tissue
    cy, cx = (np.array(np.unravel_index(depth.argmax(), depth.shape)) + 0.5) * renderer.fields.ds
    rgb = renderer.render(int(cx) - 256, int(cy) - 256, 512, 512).reshape(-1, 3)
    od = -np.log(np.maximum(rgb, 1) / 255) - np.asarray(renderer.recipe.background_od)
    hematoxylin, eosin = np.linalg.lstsq(renderer.stain_od.T, od.T, rcond=None)[0].reshape(2, 512, 512)
    nuclei = ndimage.binary_fill_holes(ndimage.gaussian_filter(hematoxylin, 1) > 0.6)
    disk = np.hypot(*np.mgrid[-8:9, -8:9]) <= 8  # 4 µm radius: only nuclei larger than that survive an opening
    return {"nuclear": float(nuclei.mean()), "large": float(ndimage.binary_opening(nuclei, disk).sum() / nuclei.sum()),
            "eosin": float(eosin.mean())}


def test_cues_are_in_the_tumour_pixels():
    base = _tumour_stats(Phenotype(True, False, False))                  # ER+ PR- HER2-
    high_grade = _tumour_stats(Phenotype(False, False, False))
    assert base["large"] < 0.15 and high_grade["large"] > 0.6            # ER-: nuclei larger than 4 µm radius
    dense = _tumour_stats(Phenotype(True, True, False))
    assert dense["nuclear"] > 1.5 * base["nuclear"] and dense["large"] < 0.15  # PR+: more, not larger, nuclei
    her2 = _tumour_stats(Phenotype(True, False, True))
    assert her2["eosin"] > base["eosin"] + 0.08                          # HER2+: eosinophilic cytoplasm
    assert her2["nuclear"] > base["nuclear"] + 0.04                      # and infiltrating lymphocytes
    # the recipes differ only in the tumour: stroma, fibroblasts and lymphocytes are the standard ones
    a, b = phenotype_recipe(Phenotype(True, True, True)), phenotype_recipe(Phenotype(False, False, False))
    assert a.compartments["stroma"] == b.compartments["stroma"]
    assert [k for k in a.nuclei if k.name in ("fibroblast", "lymphocyte")] == \
           [k for k in b.nuclei if k.name in ("fibroblast", "lymphocyte")]


def test_cli_writes_a_cohort_and_rejects_bad_sizes(tmp_path):
    app = typer.Typer()
    app.command()(cohort_command)
    result = CliRunner().invoke(app, [str(tmp_path / "c"), "--size", "small", "--slides", "5", "--patients", "5",
                                      "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "c" / "manifest.csv").read_text().splitlines()
    assert len(rows) == 6 and len(list((tmp_path / "c" / "slides").glob("*.svs"))) == 5
    meta = json.loads((tmp_path / "c" / "slides" / "P001-A.json").read_text())
    assert (meta["width"], meta["height"], meta["mpp"]) == (SIZES["small"].width, SIZES["small"].height, 0.5)
    bad = CliRunner().invoke(app, [str(tmp_path / "d"), "--slides", "3", "--patients", "5"])
    assert bad.exit_code == 2 and "between the patients and twice that" in bad.output
    assert not (tmp_path / "d").exists()


def test_committed_demo_manifest_is_the_default_cohort(default_plan):
    committed = Path(__file__).parents[2] / "data_manifests" / "demo" / "manifest.csv"
    assert committed.read_text() == manifest_text(default_plan)
