"""Slide scores from class counts, intensity thresholds, HER2 cell classes, deconvolution units."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed, rgb_from_hed

from pathology.errors import InputError
from pathology.ihc.deconvolution import deconvolve, fit_basis, standard_basis
from pathology.ihc.markers import MARKERS, IntensityThresholds
from pathology.ihc.membrane import MembraneParams, classify_cells
from pathology.ihc.scores import allred, h_score, her2_score, hormone_receptor_call, ki67_call, percent_positive


def test_percent_positive_and_h_score():
    counts = [50, 20, 20, 10]   # 50 % positive; H = 20 + 40 + 30
    assert percent_positive(counts) == 50.0
    assert h_score(counts) == 90.0
    assert h_score([0, 0, 0, 7]) == 300.0 and h_score([5, 0, 0, 0]) == 0.0
    assert percent_positive([0, 0, 0, 0]) == 0.0 and h_score([0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="4 non-negative"):
        h_score([1, 2, 3])


@pytest.mark.parametrize("counts, proportion, intensity", [
    ([100, 0, 0, 0], 0, 0),          # nothing stained: total 0
    ([1000, 5, 0, 0], 1, 1),         # 0.5 %
    ([99, 1, 0, 0], 2, 1),           # exactly 1 % -> 1-10 %
    ([90, 0, 10, 0], 2, 2),          # exactly 10 %
    ([89, 0, 0, 11], 3, 3),          # 11 %
    ([60, 10, 20, 10], 4, 2),        # 40 %, mean class 2.0
    ([20, 40, 0, 40], 5, 2),         # 80 %, mean class 2.0 (1 and 3)
    ([50, 25, 25, 0], 4, 2),         # mean class 1.5 rounds half up
])
def test_allred(counts, proportion, intensity):
    a = allred(counts)
    assert (a["proportion_score"], a["intensity_score"]) == (proportion, intensity)
    assert a["total"] == proportion + intensity


def test_hormone_receptor_and_ki67_calls():
    assert hormone_receptor_call([100, 0, 0, 0])["result"] == "negative"
    assert hormone_receptor_call([200, 1, 0, 0])["result"] == "negative"          # 0.5 %
    assert hormone_receptor_call([99, 1, 0, 0])["result"] == "low positive"       # 1 %: the ASCO/CAP cut-off
    assert hormone_receptor_call([80, 10, 5, 5])["result"] == "positive"
    assert ki67_call([96, 4, 0, 0])["result"] == "index 4.0% (low)"
    assert ki67_call([80, 20, 0, 0])["result"] == "index 20.0% (intermediate)"
    assert ki67_call([50, 0, 0, 50])["value"] == 50.0 and "high" in ki67_call([50, 0, 0, 50])["result"]


@pytest.mark.parametrize("counts, score", [
    ([100, 0, 0, 0], 0), ([92, 8, 0, 0], 0), ([89, 11, 0, 0], 1), ([85, 5, 5, 5], 1),
    ([80, 5, 11, 4], 2), ([88, 0, 6, 6], 2), ([70, 10, 9, 11], 3), ([0, 0, 0, 0], 0)])
def test_her2_score_follows_asco_cap_2018(counts, score):
    assert her2_score(counts) == score
    assert MARKERS["her2"].call(np.array(counts))["value"] == score


def test_thresholds_parse_and_classify():
    t = IntensityThresholds.parse("0.15,0.35,0.6")
    assert t.classify(np.array([0.0, 0.149, 0.15, 0.34, 0.35, 0.59, 0.6, 2.0])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for bad in ("0.1,0.2", "a,b,c", "0.3,0.2,0.6", "0,0.2,0.3"):
        with pytest.raises(InputError, match="thresholds"):
            IntensityThresholds.parse(bad)


def test_her2_cell_classes():
    t, p = MARKERS["her2"].thresholds, MembraneParams()
    completeness = np.array([0.0, 0.2, 0.5, 1.0, 1.0, 1.0, 0.5, 0.9])
    intensity = np.array([0.0, 0.5, 0.15, 0.15, 0.3, 0.6, 0.6, 0.5])
    # none; too little stained; faint incomplete; faint complete; moderate complete; intense complete;
    # intense but incomplete (2018 unusual pattern: equivocal); intense complete
    assert classify_cells(completeness, intensity, t, p).tolist() == [0, 0, 1, 1, 2, 3, 2, 3]


def test_standard_deconvolution_is_decadic_and_matches_skimage():
    rng = np.random.default_rng(0)
    h_true, d_true = rng.uniform(0, 0.8, 500), rng.uniform(0, 0.8, 500)
    unit = rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    od = h_true[:, None] * unit[0] + d_true[:, None] * unit[2]
    rgb = np.clip(np.round(255 * 10 ** -od), 0, 255).astype(np.uint8).reshape(20, 25, 3)
    h, dab = deconvolve(rgb, standard_basis())
    assert np.abs(h.ravel() - h_true).max() < 0.02 and np.abs(dab.ravel() - d_true).max() < 0.02
    # skimage's rgb2hed gives natural-log OD / ln(1e6), i.e. decadic OD / 6 (and its E channel
    # changes DAB only slightly on pure H + DAB pixels)
    assert np.abs(6 * rgb2hed(rgb)[..., 2] - dab).max() < 0.03


def test_fitted_basis_follows_a_tilted_dab_and_falls_back_without_dab():
    rng = np.random.default_rng(1)
    h_vec = rgb_from_hed[0] / np.linalg.norm(rgb_from_hed[0])
    tilted = np.array([0.35, 0.6, 0.72])
    tilted /= np.linalg.norm(tilted)
    conc = rng.exponential(0.3, (4000, 2))
    rgb = np.clip(np.round(255 * 10 ** -(conc[:, :1] * h_vec + conc[:, 1:] * tilted)), 0, 255).astype(np.uint8)
    basis = fit_basis(rgb)
    assert basis.vectors[2] @ tilted > 0.995 and basis.vectors[0] @ h_vec > 0.99
    blue = np.clip(np.round(255 * 10 ** -(conc[:, :1] * h_vec)), 0, 255).astype(np.uint8)
    assert np.allclose(fit_basis(blue).vectors[2], standard_basis().vectors[2])   # no DAB to fit: standard
