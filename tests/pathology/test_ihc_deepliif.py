"""``pathology ihc`` on real Ki-67 fields whose truth is co-registered immunofluorescence (DeepLIIF).

Each field (tests/data/deepliif/README.md) is a 512-px, 128-µm field of view at 40x: it must be
scored whole (a pale field is no glass), its nuclei found (recall >= 0.85 against the truth
nuclei) and its Ki-67 index within 5 points of the truth index. Truth comes from panel 6 of the
PNG, as its README says; nothing here was measured from this software's output.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from typer.testing import CliRunner

from pathology.cli import app

MPP = 0.25
PANEL = 512
MATCH_UM = 4.0    # a truth nucleus is found by a detection whose centre lies within this distance of its centre
runner = CliRunner()


def truth_nuclei(panel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2: x, y px) and Ki-67 status of the truth nuclei: connected components of at
    least 20 px of pure red (positive) and pure blue (negative)."""
    red = (panel[..., 0] > 128) & (panel[..., 1] < 100) & (panel[..., 2] < 100)
    blue = (panel[..., 2] > 128) & (panel[..., 0] < 100) & (panel[..., 1] < 100)
    centres, positive = [], []
    for mask, is_positive in ((red, True), (blue, False)):
        labels, n = ndimage.label(mask)
        index = np.arange(1, n + 1)
        big = index[ndimage.sum_labels(mask, labels, index) >= 20]
        for cy, cx in ndimage.center_of_mass(mask, labels, big):
            centres.append((cx, cy))
            positive.append(is_positive)
    return np.asarray(centres), np.asarray(positive)


def recall(found: np.ndarray, truth: np.ndarray, radius_px: float) -> float:
    """Share of truth nuclei matched one-to-one (Hungarian) to a detection within ``radius_px``."""
    distance = np.hypot(*(truth[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    cost = np.where(distance <= radius_px, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return float((cost[rows, cols] < 1e6).sum()) / len(truth)


@pytest.mark.parametrize("name, expected_index", [("Bladder1", 15 / 183), ("Lung1", 11 / 61)])
def test_ki67_field_nuclei_and_index_match_the_immunofluorescence_truth(tmp_path, data, name, expected_index):
    sheet = np.asarray(Image.open(data / "deepliif" / f"{name}.png").convert("RGB"))
    field, truth_panel = sheet[:, :PANEL], sheet[:, 5 * PANEL:]
    Image.fromarray(field).save(tmp_path / f"{name}.png")
    centres, positive = truth_nuclei(truth_panel)
    assert abs(positive.mean() - expected_index) < 1e-9          # the README's count of the truth

    out = tmp_path / "out"
    result = runner.invoke(app, ["ihc", str(tmp_path / f"{name}.png"), "--marker", "ki67", "--mpp", str(MPP),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads((out / f"{name}.json").read_text())
    assert r["status"] == "done" and r["tissue"]["field_of_view"] is True
    assert r["scored_mm2"] == pytest.approx(PANEL * PANEL * MPP ** 2 / 1e6, rel=1e-3)   # the whole field
    with open(out / r["outputs"]["cells"]) as fh:
        cells = list(csv.DictReader(fh))
    found = np.array([(float(c["x"]), float(c["y"])) for c in cells])
    classes = np.array([int(c["class"]) for c in cells])
    assert len(cells) == r["cells"] and (classes > 0).sum() == sum(list(r["class_counts"].values())[1:])

    assert recall(found, centres, MATCH_UM / MPP) >= 0.85
    assert abs(r["percent_positive"] - 100 * positive.mean()) <= 5
    assert r["call"]["value"] == pytest.approx(r["percent_positive"], abs=0.01)
    # a field smaller than the 0.2 mm² hotspot: the hotspot is the whole field, and says so
    assert r["hotspot"]["equals_global"] is True and r["hotspot"]["cells"] == r["cells"]
    crop = PANEL * MPP / 0.5 * 2                                     # the field at 0.5 µm/px, drawn at 2x
    assert Image.open(out / "qc" / f"{name}.png").width > 2 * crop      # the overview beside the outlined crop
