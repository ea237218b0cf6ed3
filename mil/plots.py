"""Figures of a run: ROC curves per binary task, the confusion matrix of a multi-class task,
predicted against true values of a regression task, and Kaplan-Meier curves of predicted risk groups.

Matplotlib's Agg backend only (no display needed); each figure is written to a PNG and closed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.plotting import add_at_risk_counts
from lifelines.statistics import logrank_test
from sklearn.metrics import roc_curve

from pathology.publish import publish_with

STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 9.5,
         "axes.spines.top": False, "axes.spines.right": False}
DPI = 150


def _fmt_ci(value: float, ci: Sequence[float] | None) -> str:
    if not math.isfinite(value):
        return "n/a"
    if ci is None or not all(c is not None and math.isfinite(c) for c in ci):
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f})"


def plot_roc(path: str | Path, task: str, pooled: tuple[np.ndarray, np.ndarray], *,
             folds: Sequence[tuple[np.ndarray, np.ndarray]] = (), auc: float = math.nan,
             ci: Sequence[float] | None = None, fold_aucs: Sequence[float] = (), title: str | None = None) -> Path:
    """ROC of ``task``: one thin line per fold (``folds``: (label, score) pairs) and a thick line
    for the ``pooled`` (label, score); NaN labels are dropped."""
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 5.4))
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
        cmap = plt.get_cmap("tab10")
        for k, (y, s) in enumerate(folds):
            y, s = _known(y, s)
            if np.unique(y).size < 2:
                continue
            fpr, tpr, _ = roc_curve(y, s)
            fold_auc = fold_aucs[k] if k < len(fold_aucs) else math.nan
            ax.plot(fpr, tpr, lw=1, alpha=0.55, color=cmap(k % 10),
                    label=f"fold {k}" + (f" (AUC {fold_auc:.3f})" if math.isfinite(fold_auc) else ""))
        y, s = _known(*pooled)
        if np.unique(y).size == 2:
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, lw=2.6, color="black", label=f"pooled AUC {_fmt_ci(auc, ci)}")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="False positive rate (1 − specificity)", ylabel="True positive rate (sensitivity)")
        n_pos = int((y == 1).sum())
        ax.set_title(title or f"ROC — {task}  (n = {y.size}, {n_pos} positive)")
        ax.legend(loc="lower right", frameon=False)
        ax.grid(alpha=0.25)
        fig.tight_layout()
        _save(fig, path)
    return path


def plot_km(path: str | Path, task: str, time: np.ndarray, event: np.ndarray, risk: np.ndarray, *,
            c_index: float = math.nan, ci: Sequence[float] | None = None, time_unit: str = "",
            title: str | None = None) -> float:
    """Kaplan-Meier curves of the predicted low- and high-risk halves (split at the median risk),
    with the log-rank p-value and numbers at risk; returns the p-value (NaN if a group is empty)."""
    path = Path(path)
    time, event, risk = (np.asarray(a, dtype=np.float64) for a in (time, event, risk))
    keep = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
    time, event, risk = time[keep], event[keep], risk[keep]
    high = risk > np.median(risk) if risk.size else np.zeros(0, bool)
    groups = {"low risk": ~high, "high risk": high}
    p_value = math.nan
    if high.any() and (~high).any():
        p_value = float(logrank_test(time[~high], time[high], event[~high], event[high]).p_value)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 6.0))
        fitters = []
        for (name, mask), color in zip(groups.items(), ("tab:blue", "tab:red")):
            if not mask.any():
                continue
            kmf = KaplanMeierFitter(label=f"{name} (n = {int(mask.sum())}, {int(event[mask].sum())} events)")
            kmf.fit(time[mask], event[mask])
            kmf.plot_survival_function(ax=ax, ci_show=True, color=color, lw=2, show_censors=True,
                                       censor_styles={"ms": 5, "marker": "|"})
            fitters.append(kmf)
        ax.set(ylim=(0, 1.03), xlabel=f"Time{f' ({time_unit})' if time_unit else ''}",
               ylabel="Survival probability")
        ax.set_xlim(left=0)
        text = f"log-rank p = {_fmt_p(p_value)}"
        if math.isfinite(c_index):
            text += f"\nc-index {_fmt_ci(c_index, ci)}"
        ax.text(0.98, 0.80, text, transform=ax.transAxes, fontsize=10, va="top", ha="right",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
        ax.set_title(title or f"Kaplan–Meier — {task}\n(predicted risk split at the median)")
        ax.legend(loc="upper right", frameon=False)
        ax.grid(alpha=0.25)
        if fitters:
            add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"], labels=[
                f.label.split(" (")[0] for f in fitters])
        fig.tight_layout()
        _save(fig, path)
    return p_value


def plot_confusion(path: str | Path, task: str, counts: np.ndarray, classes: Sequence[str], *,
                   balanced_accuracy: float = math.nan, auc: float = math.nan, title: str | None = None) -> Path:
    """The confusion matrix ``counts`` (row = true class, column = called class): each cell's
    count and its share of the true class (the row), shaded by that share."""
    path = Path(path)
    counts = np.asarray(counts, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    with plt.rc_context(STYLE):
        size = 2.2 + 0.9 * k
        fig, ax = plt.subplots(figsize=(size + 1.0, size))
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes, xlabel="Called class",
               ylabel="True class")
        ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        stats = ", ".join(x for x in (f"balanced accuracy {balanced_accuracy:.3f}" if math.isfinite(balanced_accuracy)
                                      else "", f"macro AUC {auc:.3f}" if math.isfinite(auc) else "") if x)
        ax.set_title(title or f"Confusion matrix — {task}  (n = {int(counts.sum())})" + (f"\n{stats}" if stats else ""))
        fig.tight_layout()
        _save(fig, path)
    return path


def plot_scatter(path: str | Path, task: str, value: np.ndarray, predicted: np.ndarray, *, pearson: float = math.nan,
                 spearman: float = math.nan, mae: float = math.nan, title: str | None = None) -> Path:
    """Predicted against true values (unknown ones dropped), with the identity line and the metrics."""
    path = Path(path)
    value, predicted = _known(value, predicted)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 5.4))
        ax.scatter(value, predicted, s=18, alpha=0.7, color="tab:blue", edgecolor="none")
        if value.size:
            low, high = float(min(value.min(), predicted.min())), float(max(value.max(), predicted.max()))
            ax.plot([low, high], [low, high], ls="--", lw=1, color="0.5", label="predicted = true")
            ax.legend(loc="upper left", frameon=False)
        text = "\n".join(f"{name} {v:.3f}" for name, v in (("Pearson r", pearson), ("Spearman ρ", spearman),
                                                            ("MAE", mae)) if math.isfinite(v))
        if text:
            ax.text(0.98, 0.04, text, transform=ax.transAxes, fontsize=10, va="bottom", ha="right",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
        ax.set(xlabel=f"True {task}", ylabel=f"Predicted {task}")
        ax.set_title(title or f"Predicted vs true — {task}  (n = {value.size})")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        _save(fig, path)
    return path


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _known(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, score = np.asarray(label, dtype=np.float64), np.asarray(score, dtype=np.float64)
    keep = np.isfinite(label) & np.isfinite(score)
    return label[keep], score[keep]


def _save(fig, path: Path) -> None:
    try:
        publish_with(path, lambda fh: fig.savefig(fh, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
