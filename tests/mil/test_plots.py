"""What the ROC and Kaplan-Meier figures draw, checked on the figure's data before it is saved.

Expected values are computed by hand in the test: ROC points from a threshold sweep (and the
four-point example whose curve is known), Kaplan-Meier product-limit estimates, the median
split into risk groups, and the log-rank statistic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2

import mil.plots
from mil.plots import plot_km, plot_roc


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves (still written to disk)."""
    saved = []
    real = mil.plots._save

    def keep(fig, path):
        saved.append(fig)
        real(fig, path)

    monkeypatch.setattr(mil.plots, "_save", keep)
    return saved


def lines_by_label(fig) -> dict:
    (ax,) = [a for a in fig.axes if a.get_lines()]
    return {line.get_label(): line for line in ax.get_lines()}


def hand_roc(label: np.ndarray, score: np.ndarray) -> set[tuple[float, float]]:
    """(FPR, TPR) at every threshold of a sweep over the scores, plus (0, 0)."""
    pos, neg = score[label == 1], score[label == 0]
    points = {(0.0, 0.0)}
    for t in np.unique(score):
        points.add((float((neg >= t).mean()), float((pos >= t).mean())))
    return points


def test_roc_of_a_known_example_drops_unknown_labels(figures, tmp_path):
    label = np.array([0, 0, 1, 1, np.nan])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.9])                      # the unknown label must not count
    plot_roc(tmp_path / "roc.png", "er", (label, score), auc=0.75, ci=(0.5, 1.0))
    lines = lines_by_label(figures[0])
    pooled = lines["pooled AUC 0.750 (95% CI 0.500–1.000)"]
    # by hand: thresholds 0.8, 0.4, 0.35, 0.1 give (0, .5), (.5, .5), (.5, 1), (1, 1)
    np.testing.assert_array_equal(pooled.get_xdata(), [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(pooled.get_ydata(), [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(lines["chance"].get_xdata(), [0, 1])
    assert figures[0].axes[0].get_title() == "ROC — er  (n = 4, 2 positive)"
    assert Image.open(tmp_path / "roc.png").format == "PNG"


def test_roc_lines_are_each_folds_and_the_pooled_curve(figures, tmp_path):
    rng = np.random.default_rng(3)
    folds = []
    for k in range(3):
        y = rng.integers(0, 2, 40).astype(float)
        s = np.round(rng.normal(y * (0.5 + k), 1.0), 1)                   # rounded: tied scores
        folds.append((y, s))
    folds.append((np.zeros(10), rng.normal(size=10)))                    # one class: no curve for that fold
    label = np.concatenate([y for y, _ in folds])
    score = np.concatenate([s for _, s in folds])
    plot_roc(tmp_path / "roc.png", "pr", (label, score), folds=folds, auc=0.7, fold_aucs=[0.6, 0.7, 0.8, math.nan])
    lines = lines_by_label(figures[0])
    assert set(lines) == {"chance", "fold 0 (AUC 0.600)", "fold 1 (AUC 0.700)", "fold 2 (AUC 0.800)",
                          "pooled AUC 0.700"}
    for name, (y, s) in [("fold 0 (AUC 0.600)", folds[0]), ("fold 1 (AUC 0.700)", folds[1]),
                         ("fold 2 (AUC 0.800)", folds[2]), ("pooled AUC 0.700", (label, score))]:
        x, t = lines[name].get_xdata(), lines[name].get_ydata()
        assert (x[0], t[0]) == (0, 0) and (x[-1], t[-1]) == (1, 1)
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(t) >= 0)
        assert {(float(a), float(b)) for a, b in zip(x, t)} <= hand_roc(y, s)
        # the area under the drawn curve is the Mann-Whitney AUC (ties count half), by hand
        pos, neg = s[y == 1], s[y == 0]
        mann_whitney = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
            len(pos) * len(neg))
        assert np.trapezoid(t, x) == pytest.approx(mann_whitney)


def hand_km(time: np.ndarray, event: np.ndarray) -> dict[float, float]:
    """Product-limit survival just after each distinct event time."""
    out, s = {}, 1.0
    for t in np.unique(time[event == 1]):
        at_risk, deaths = (time >= t).sum(), ((time == t) & (event == 1)).sum()
        s *= 1 - deaths / at_risk
        out[float(t)] = s
    return out


def hand_logrank_p(time, event, group) -> float:
    """Two-group log-rank test (Mantel-Haenszel, hypergeometric variance)."""
    o_minus_e = var = 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return float(chi2.sf(o_minus_e ** 2 / var, 1))


def test_km_curves_are_the_product_limit_of_each_median_risk_half(figures, tmp_path):
    rng = np.random.default_rng(7)
    n = 41
    risk = rng.normal(size=n)
    time = np.round(rng.exponential(np.exp(-risk)) * 10, 1)             # higher risk, earlier events; ties
    event = (rng.random(n) > 0.3).astype(float)
    time[3], event[5], risk[8] = np.nan, np.nan, np.nan                  # unknowns are left out
    p = plot_km(tmp_path / "km.png", "os", time, event, risk, c_index=0.7, ci=(0.6, 0.8), time_unit="months")

    keep = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
    t, e, r = time[keep], event[keep], risk[keep]
    high = r > np.median(r)
    assert high.sum() == (~high).sum() == 19                            # 38 known, split at the median
    assert p == pytest.approx(hand_logrank_p(t, e, high), rel=1e-6)
    assert p < 0.05                                                        # the risk drives the hazard

    lines = lines_by_label(figures[0])
    for name, mask in (("low risk", ~high), ("high risk", high)):
        (label,) = [k for k in lines if k.startswith(f"{name} (")]
        assert label == f"{name} (n = {int(mask.sum())}, {int(e[mask].sum())} events)"
        x, y = np.asarray(lines[label].get_xdata(), float), np.asarray(lines[label].get_ydata(), float)
        assert y[0] == 1.0 and np.all(np.diff(y) <= 0)
        for when, value in hand_km(t[mask], e[mask]).items():
            assert y[np.searchsorted(x, when, side="right") - 1] == pytest.approx(value), (name, when)
    ax = figures[0].axes[0]
    assert ax.get_xlabel() == "Time (months)"
    assert any("log-rank p = " in text.get_text() and "c-index 0.700 (95% CI 0.600–0.800)" in text.get_text()
               for text in ax.texts)
    # the high-risk half dies sooner: its curve lies below the low-risk one at the median time
    mid = float(np.median(t))
    below = {name: hand_km(t[m], e[m]) for name, m in (("low", ~high), ("high", high))}
    at = {k: min([v for w, v in km.items() if w <= mid], default=1.0) for k, km in below.items()}
    assert at["high"] < at["low"]


def test_km_with_one_group_has_no_p_value(figures, tmp_path):
    p = plot_km(tmp_path / "km.png", "os", np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0]),
                np.array([0.5, 0.5, 0.5]))                                # no one above the median
    assert math.isnan(p)
    labels = [k for k in lines_by_label(figures[0]) if "risk (" in k]
    assert labels == ["low risk (n = 3, 2 events)"]
