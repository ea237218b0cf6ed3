"""IHC scoring against synthetic slides with known truth (pyramidal TIFFs read like scans).

Acceptance (issue 6): positive percentage within ±5 points and H-score within ±20 of
the truth. The fields hold ~800 cells of four classes at known proportions; the
recipes render whole synthetic IHC slides for the nuclear-marker look.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathology.ihc import IHCOptions, score_slide
from pathology.ihc.scores import her2_score
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.synth.ihc_cells import CellFieldConfig, write_cell_field


def score(tmp_path, slide, marker, **options):
    outcome = score_slide(slide, slide.stem, tmp_path / "out", IHCOptions(marker=marker, **options))
    assert outcome.status == "done", outcome.message
    return json.loads((tmp_path / "out" / f"{slide.stem}.json").read_text())


@pytest.mark.parametrize("fractions, seed", [
    ((0.4, 0.2, 0.25, 0.15), 1),     # 60 % positive, H-score 115
    ((0.9, 0.04, 0.03, 0.03), 2),    # 10 % positive: the ER "low positive" band
    ((0.15, 0.05, 0.2, 0.6), 3),     # 85 % positive, H-score 225
])
def test_nuclear_scores_match_the_truth(tmp_path, fractions, seed):
    truth = write_cell_field(tmp_path / "field.svs", CellFieldConfig(width=1024, height=1024, seed=seed,
                                                                     fractions=fractions))
    result = score(tmp_path, tmp_path / "field.svs", "er")
    assert abs(result["percent_positive"] - truth["percent_positive"]) <= 5
    assert abs(result["h_score"] - truth["h_score"]) <= 20
    # tighter than the acceptance: every class and nearly every nucleus is found
    assert abs(result["cells"] - truth["cells"]) <= 0.03 * truth["cells"]
    found = np.array(list(result["class_percent"].values()))
    assert np.abs(found - np.array(truth["class_percent"])).max() <= 3
    assert result["allred"]["proportion_score"] == (5 if truth["percent_positive"] > 200 / 3 else
                                                    4 if truth["percent_positive"] > 100 / 3 else 2)
    assert result["warnings"] == []                   # true nuclear staining raises no plausibility warning
    sizes = result["mean_nucleus_area_um2"]
    assert 0.5 < sizes["positive"] / sizes["negative"] < 2


def test_thresholds_are_settable(tmp_path):
    write_cell_field(tmp_path / "field.svs", CellFieldConfig(width=768, height=768, seed=4))
    default = score(tmp_path, tmp_path / "field.svs", "ki67")
    from pathology.ihc.markers import IntensityThresholds
    strict = score(tmp_path, tmp_path / "field.svs", "ki67", thresholds=IntensityThresholds(0.4, 0.7, 1.2))
    # with the weak cut at 0.4 only the 2+ (0.48) and 3+ (0.86) nuclei stay positive
    assert strict["percent_positive"] == pytest.approx(default["class_percent"]["moderate_2plus"]
                                                       + default["class_percent"]["strong_3plus"], abs=3)
    assert strict["thresholds_dab_od"] == {"weak": 0.4, "moderate": 0.7, "strong": 1.2}
    assert default["call"]["result"].startswith("index ")


@pytest.mark.parametrize("fractions, expected", [
    ((0.3, 0.25, 0.25, 0.2), 3),     # 20 % complete intense
    ((0.4, 0.2, 0.4, 0.0), 2),       # 40 % complete moderate, no 3+
    ((0.6, 0.4, 0.0, 0.0), 1),       # 40 % faint incomplete
    ((1.0, 0.0, 0.0, 0.0), 0),       # no membrane staining
])
def test_her2_score_matches_the_truth(tmp_path, fractions, expected):
    truth = write_cell_field(tmp_path / "her2.svs", CellFieldConfig(width=1024, height=1024, seed=7,
                                                                    compartment="membrane", fractions=fractions))
    assert her2_score(truth["class_counts"]) == expected
    result = score(tmp_path, tmp_path / "her2.svs", "her2")
    assert result["call"]["value"] == expected
    assert "not a diagnosis" in result["call"]["disclaimer"]
    found = np.array(list(result["class_percent"].values()))
    # cells at the border of a stained patch see their neighbours' membranes: allow 10 points
    assert np.abs(found - np.array(truth["class_percent"])).max() <= 10


@pytest.mark.slow   # renders and scores two whole synthetic slides
def test_recipes_render_positive_and_negative_nuclear_ihc(tmp_path):
    results = {}
    for recipe in ("ihc-nuclear", "ihc-nuclear-negative"):
        write_synthetic_slide(tmp_path / f"{recipe}.svs", SynthConfig(width=2048, height=2048, mpp=0.5, seed=3,
                                                                      recipe=recipe, tumor_fraction=0.4))
        results[recipe] = score(tmp_path, tmp_path / f"{recipe}.svs", "er")
    pos, neg = results["ihc-nuclear"], results["ihc-nuclear-negative"]
    assert pos["cells"] > 300 and neg["cells"] > 300
    assert 25 <= pos["percent_positive"] <= 75 and pos["call"]["result"] == "positive"   # tumour nuclei only
    assert pos["class_counts"]["moderate_2plus"] > 0 and pos["class_counts"]["strong_3plus"] > 0
    assert neg["percent_positive"] < 1 and neg["call"]["result"] == "negative"
