"""Evaluation metrics of every task kind, per fold and pooled, with bootstrap CIs.

Binary tasks: AUC, balanced accuracy, F1 and accuracy (the last three at a threshold on the
predicted probability, 0.5 by default). Multi-class tasks (the score is the (n, K) matrix of
class probabilities; the call is the most probable class): macro one-vs-rest AUC, balanced
accuracy (mean recall of the classes), macro F1 and accuracy, and the pooled confusion
matrix. Regression: Pearson and Spearman correlation and the mean absolute error.
Survival: Harrell's concordance index of the predicted risk. Unknown labels (NaN) are
excluded per task. A metric that is undefined on some data (one class only, no comparable
pairs, a constant prediction) is NaN with a logged warning, never a crash.

The summary of one task (``summarize_task``) is the structure written to ``metrics.json``::

    {"kind": "binary", "n": 120, "n_positive": 48,
     "metrics": {"auc": {"folds": [...], "mean": 0.81, "sd": 0.04, "pooled": 0.80,
                         "ci95": [0.72, 0.87]}, ...}}

``sd`` is the sample standard deviation over folds (ddof=1); ``pooled`` is the metric of all
out-of-fold predictions together, and ``ci95`` its percentile bootstrap interval, resampling
patients (with all their slides) when patient ids are given, else slides.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
from lifelines.utils import concordance_index as _lifelines_cindex

log = logging.getLogger(__name__)

THRESHOLD = 0.5
N_BOOTSTRAP = 1000

# A metric takes (label, score, event, threshold) on known labels only; event is None for binary
# tasks, and the threshold (on the score) matters only to the metrics of binary calls.
Metric = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", float], float]


class UndefinedMetricError(ValueError):
    """The metric has no value on these data (e.g. one class only)."""


def auc(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None, threshold: float = THRESHOLD) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties)."""
    label = np.asarray(label, dtype=bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(f"AUC needs both classes ({n_pos} positive, {n_neg} negative)")
    ranks = _midranks(np.asarray(score, dtype=np.float64))
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
                      threshold: float = THRESHOLD) -> float:
    """Mean of sensitivity and specificity at ``threshold``."""
    label = np.asarray(label, dtype=bool)
    if label.all() or not label.any():
        raise UndefinedMetricError("balanced accuracy needs both classes")
    pred = np.asarray(score) >= threshold
    return float((pred[label].mean() + (~pred[~label]).mean()) / 2)


def f1(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None, threshold: float = THRESHOLD) -> float:
    """F1 of the positive class at ``threshold`` (0 when nothing is predicted positive)."""
    label = np.asarray(label, dtype=bool)
    if not label.any():
        raise UndefinedMetricError("F1 needs at least one positive label")
    pred = np.asarray(score) >= threshold
    tp = int((pred & label).sum())
    return float(2 * tp / (pred.sum() + label.sum()))


def accuracy(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
             threshold: float = THRESHOLD) -> float:
    """Share of correct calls at ``threshold``."""
    label = np.asarray(label, dtype=bool)
    if label.size == 0:
        raise UndefinedMetricError("accuracy of no labels")
    return float(((np.asarray(score) >= threshold) == label).mean())


def c_index(time: np.ndarray, risk: np.ndarray, event: np.ndarray | None, threshold: float = THRESHOLD) -> float:
    """Harrell's concordance index of a risk score (higher risk = shorter survival).

    lifelines expects survival-like scores (higher = longer), so it is given ``-risk``.
    """
    time, risk = np.asarray(time, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    event = np.ones_like(time) if event is None else np.asarray(event, dtype=np.float64)
    if time.size < 2 or not event.any():
        raise UndefinedMetricError(f"c-index needs events and at least 2 cases ({time.size} cases, "
                              f"{int(event.sum())} events)")
    try:
        return float(_lifelines_cindex(time, -risk, event))
    except ZeroDivisionError:
        raise UndefinedMetricError("c-index: no comparable pairs") from None


def _classes(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels and the argmax call of a multi-class score matrix (n, K)."""
    return np.asarray(label).astype(int), np.asarray(score).argmax(axis=1)


def macro_auc(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
              threshold: float = THRESHOLD) -> float:
    """Mean over classes of the one-vs-rest AUC of the class's probability, over the classes
    that have both members and non-members among the labels."""
    label = np.asarray(label).astype(int)
    values = [auc(label == k, score[:, k]) for k in range(score.shape[1]) if 0 < (label == k).sum() < label.size]
    if not values:
        raise UndefinedMetricError("macro AUC needs at least two classes among the labels")
    return float(np.mean(values))


def multiclass_balanced_accuracy(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
                                 threshold: float = THRESHOLD) -> float:
    """Mean recall of the classes present among the labels."""
    label, call = _classes(label, score)
    present = np.unique(label)
    if present.size < 2:
        raise UndefinedMetricError("balanced accuracy needs at least two classes")
    return float(np.mean([(call[label == k] == k).mean() for k in present]))


def macro_f1(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
             threshold: float = THRESHOLD) -> float:
    """Mean F1 over the classes present among the labels (0 for one never called)."""
    label, call = _classes(label, score)
    present = np.unique(label)
    if present.size == 0:
        raise UndefinedMetricError("F1 of no labels")
    return float(np.mean([2 * ((call == k) & (label == k)).sum() / ((call == k).sum() + (label == k).sum())
                          for k in present]))


def multiclass_accuracy(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
                        threshold: float = THRESHOLD) -> float:
    """Share of cases whose most probable class is theirs."""
    label, call = _classes(label, score)
    if label.size == 0:
        raise UndefinedMetricError("accuracy of no labels")
    return float((call == label).mean())


def confusion_matrix(label: np.ndarray, score: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = called class."""
    label, call = _classes(label, score)
    out = np.zeros((n_classes, n_classes), int)
    np.add.at(out, (label, call), 1)
    return out


def _varied(value: np.ndarray, score: np.ndarray) -> None:
    if value.size < 3:
        raise UndefinedMetricError(f"a correlation needs at least 3 cases ({value.size})")
    if np.ptp(value) == 0 or np.ptp(score) == 0:
        raise UndefinedMetricError("a correlation of a constant is undefined")


def pearson(value: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
            threshold: float = THRESHOLD) -> float:
    """Pearson correlation of the predicted and true values."""
    value, score = np.asarray(value, np.float64), np.asarray(score, np.float64)
    _varied(value, score)
    return float(np.corrcoef(value, score)[0, 1])


def spearman(value: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
             threshold: float = THRESHOLD) -> float:
    """Spearman rank correlation (Pearson of the midranks)."""
    value, score = np.asarray(value, np.float64), np.asarray(score, np.float64)
    _varied(value, score)
    return float(np.corrcoef(_midranks(value), _midranks(score))[0, 1])


def mae(value: np.ndarray, score: np.ndarray, event: np.ndarray | None = None, threshold: float = THRESHOLD) -> float:
    """Mean absolute error, in the target's unit."""
    value = np.asarray(value, np.float64)
    if value.size == 0:
        raise UndefinedMetricError("MAE of no values")
    return float(np.abs(np.asarray(score, np.float64) - value).mean())


METRICS: dict[str, dict[str, Metric]] = {
    "binary": {"auc": auc, "balanced_accuracy": balanced_accuracy, "f1": f1, "accuracy": accuracy},
    "multiclass": {"auc": macro_auc, "balanced_accuracy": multiclass_balanced_accuracy, "f1": macro_f1,
                   "accuracy": multiclass_accuracy},
    "regression": {"pearson": pearson, "spearman": spearman, "mae": mae},
    "survival": {"c_index": c_index},
}


def known(label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
          groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Drop rows with an unknown label (NaN label, or NaN event for survival) or a NaN score
    (a multi-class score is a row of probabilities)."""
    label, score = np.asarray(label, dtype=np.float64), np.asarray(score, dtype=np.float64)
    finite = np.isfinite(score) if score.ndim == 1 else np.isfinite(score).all(axis=1)
    keep = np.isfinite(label) & finite
    if event is not None:
        event = np.asarray(event, dtype=np.float64)
        keep &= np.isfinite(event)
    pick = (lambda a: None if a is None else np.asarray(a)[keep])
    return label[keep], score[keep], pick(event), pick(groups)


def compute(kind: str, label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None, *,
            where: str = "", threshold: float = THRESHOLD) -> dict[str, float]:
    """Every metric of ``kind`` on the known labels; an undefined one is NaN with a warning."""
    label, score, event, _ = known(label, score, event)
    out = {}
    for name, fn in METRICS[kind].items():
        try:
            out[name] = fn(label, score, event, threshold)
        except UndefinedMetricError as exc:
            log.warning("%s%s is undefined: %s", f"{where}: " if where else "", name, exc)
            out[name] = math.nan
    return out


def bootstrap_ci(kind: str, label: np.ndarray, score: np.ndarray, event: np.ndarray | None = None,
                 groups: np.ndarray | None = None, *, n_boot: int = N_BOOTSTRAP, seed: int = 0,
                 level: float = 0.95, threshold: float = THRESHOLD) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric of ``kind``.

    Resamples ``groups`` (patients: all slides of a drawn patient come along) when given,
    else single rows. Resamples on which a metric is undefined are skipped; an interval
    needs at least half of them to be defined, else it is (NaN, NaN).
    """
    label, score, event, groups = known(label, score, event, groups)
    names = list(METRICS[kind])
    if label.size == 0:
        return dict.fromkeys(names, (math.nan, math.nan))
    members = None
    if groups is not None:
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    values = np.full((n_boot, len(names)), np.nan)
    for b in range(n_boot):
        if members is None:
            idx = rng.integers(0, label.size, label.size)
        else:
            idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        ev = None if event is None else event[idx]
        for j, name in enumerate(names):
            with contextlib.suppress(UndefinedMetricError):
                values[b, j] = METRICS[kind][name](label[idx], score[idx], ev, threshold)
    alpha = (1 - level) / 2 * 100
    out = {}
    for j, name in enumerate(names):
        ok = values[np.isfinite(values[:, j]), j]
        out[name] = ((float(np.percentile(ok, alpha)), float(np.percentile(ok, 100 - alpha)))
                     if ok.size >= n_boot / 2 else (math.nan, math.nan))
    return out


def summarize_task(kind: str, folds: Sequence[dict[str, float]], label: np.ndarray, score: np.ndarray,
                   event: np.ndarray | None = None, groups: np.ndarray | None = None, *,
                   n_boot: int = N_BOOTSTRAP, seed: int = 0, where: str = "", threshold: float = THRESHOLD) -> dict:
    """Per-fold values, their mean and sd, the pooled value and its bootstrap 95% CI, per metric.

    ``folds`` holds the per-fold metric dicts (from ``compute``); ``label``/``score``/``event``
    are the pooled out-of-fold predictions (unknown labels are dropped here).
    """
    pooled = compute(kind, label, score, event, where=f"{where} (pooled)" if where else "pooled", threshold=threshold)
    ci = bootstrap_ci(kind, label, score, event, groups, n_boot=n_boot, seed=seed, threshold=threshold)
    lab, sc, ev, _ = known(label, score, event)
    summary: dict = {"kind": kind, "n": int(lab.size)}
    if kind == "binary":
        summary["n_positive"] = int((lab == 1).sum())
    elif kind == "multiclass":
        summary["n_per_class"] = np.bincount(lab.astype(int), minlength=np.shape(score)[1]).tolist()
        summary["confusion"] = confusion_matrix(lab, sc, np.shape(score)[1]).tolist()
    elif kind == "survival":
        summary["n_events"] = int((ev == 1).sum())
    summary["metrics"] = {}
    for name in METRICS[kind]:
        per_fold = [float(f.get(name, math.nan)) for f in folds]
        finite = [v for v in per_fold if math.isfinite(v)]
        summary["metrics"][name] = {
            "folds": per_fold,
            "mean": float(np.mean(finite)) if finite else math.nan,
            "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
            "pooled": pooled[name],
            "ci95": list(ci[name]),
        }
    return summary


def json_safe(obj):
    """``obj`` with NaN/inf floats replaced by None (JSON has no NaN) and numpy scalars made plain."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    avg = (bounds[:-1] + bounds[1:] + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(avg, np.diff(bounds))
    return ranks
