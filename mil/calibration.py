"""Calibration of binary scores: the reliability curve, the expected calibration error, and
temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017).

A score of 0.9 is calibrated when nine in ten slides scored 0.9 are positive. The
reliability curve bins the scores (``N_BINS`` equal-width bins of the positive-class
probability) and sets each bin's mean score against its share of positives; the expected
calibration error (ECE) is the bin-size-weighted mean gap between the two.

Temperature scaling divides a fold model's logit by one number T > 0 per task, fitted on
the fold's inner validation slides (the ones early stopping watches, never its test
slides) by minimising their log loss. It changes no ranking and no call at a 0.5 cut-off
(the logit keeps its sign), only how confident the probabilities are. The validation split
of a small cohort holds a handful of slides; when they are separable the unpenalised fit
runs to T -> 0 (certainty), so the fit is a MAP estimate with a log-normal prior on T
(log T ~ N(0, ``PRIOR_SD``²)), which the data override as the split grows, within
[``T_MIN``, ``T_MAX``].
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

log = logging.getLogger(__name__)

N_BINS = 10
PRIOR_SD = 1.0
T_MIN, T_MAX = 0.05, 20.0
METHODS = ("none", "temperature")


@dataclass(frozen=True, kw_only=True)
class CalibrationRecord:
    """``config.json``'s ``calibration``: the method and, for temperature scaling, each binary
    task's temperature per fold (``"<task>/fold_<k>"``), which prediction divides the logit by."""

    method: str
    temperatures: dict[str, float]

    def of_fold(self, fold: int) -> dict[str, float]:
        """task -> temperature of fold ``fold``."""
        suffix = f"/fold_{fold}"
        return {key[:-len(suffix)]: t for key, t in self.temperatures.items() if key.endswith(suffix)}


class Calibrated(torch.nn.Module):
    """A fold model whose binary logits come out divided by their temperatures (prediction
    applies the recorded scaling this way, so every caller of the model gets calibrated scores)."""

    def __init__(self, model: torch.nn.Module, temperatures: Mapping[str, float]):
        super().__init__()
        self.model, self.temperatures = model, dict(temperatures)

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        return dataclasses.replace(out, logits=scaled(out.logits, self.temperatures))


def calibrated(model: torch.nn.Module, record: CalibrationRecord | None, fold: int) -> torch.nn.Module:
    """``model`` with fold ``fold``'s recorded temperatures applied (itself without any)."""
    temperatures = record.of_fold(fold) if record is not None else {}
    return Calibrated(model, temperatures) if temperatures else model


def reliability(label: np.ndarray, score: np.ndarray, n_bins: int = N_BINS) -> dict:
    """The reliability curve and ECE of probabilities ``score`` for 0/1 ``label`` (NaN rows dropped):
    ``{"n", "ece", "bins": [{"low", "high", "n", "mean_score", "positive_rate"}, ...]}`` (empty bins left out)."""
    label, score = np.asarray(label, np.float64), np.asarray(score, np.float64)
    keep = np.isfinite(label) & np.isfinite(score)
    label, score = label[keep], score[keep]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, n_bins - 1)   # 1.0 falls in the last bin
    bins, gap = [], 0.0
    for b in range(n_bins):
        member = index == b
        if not member.any():
            continue
        mean_score, rate = float(score[member].mean()), float(label[member].mean())
        gap += member.sum() * abs(mean_score - rate)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(member.sum()),
                     "mean_score": mean_score, "positive_rate": rate})
    return {"n": int(label.size), "ece": gap / label.size if label.size else math.nan, "bins": bins}


def fit_temperature(logits: np.ndarray, label: np.ndarray, where: str = "") -> float:
    """The temperature T minimising the log loss of ``sigmoid(logits / T)`` on ``label`` (NaN
    labels dropped) plus the log-normal prior's penalty; 1.0 when there is nothing to fit on."""
    logits, label = np.asarray(logits, np.float64), np.asarray(label, np.float64)
    keep = np.isfinite(label) & np.isfinite(logits)
    z, y = logits[keep], label[keep]
    if z.size == 0:
        log.warning("%stemperature not fitted: no validation slide with a label; T = 1", f"{where}: " if where else "")
        return 1.0

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        nll = np.sum(np.logaddexp(0.0, s) - y * s)      # -log sigmoid(s) for y=1, -log(1 - sigmoid(s)) for y=0
        return float(nll + 0.5 * (log_t / PRIOR_SD) ** 2)

    best = minimize_scalar(loss, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                           options={"xatol": 1e-6})
    return float(math.exp(best.x))


def fold_temperatures(val_logits: Sequence[Mapping[str, torch.Tensor]],
                      val_labels: Sequence[Mapping[str, torch.Tensor]],
                      kinds: Mapping[str, str], fold: int) -> dict[str, float]:
    """task -> temperature of every binary task, from one fold's validation logits and labels."""
    out = {}
    for task, kind in kinds.items():
        if kind != "binary":
            continue
        z = np.array([float(lg[task].reshape(-1)[0]) for lg in val_logits])
        y = np.array([float(lab[task].reshape(-1)[0]) for lab in val_labels])
        out[task] = fit_temperature(z, y, where=f"{task}, fold {fold}")
    return out


def scaled(logits: Mapping[str, torch.Tensor], temperatures: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """``logits`` with each task in ``temperatures`` divided by its temperature."""
    return {task: value / temperatures[task] if task in temperatures else value for task, value in logits.items()}


def uncalibrated(score: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """The probability before temperature scaling: ``sigmoid(logit(score) * T)``."""
    p = np.clip(np.asarray(score, np.float64), 1e-12, 1 - 1e-12)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) * np.asarray(temperature, np.float64)))


def calibration_summary(predictions, kinds: Mapping[str, str], temperatures: Mapping[str, Mapping[int, float]],
                        method: str) -> dict:
    """metrics.json's ``calibration``: per binary task, the reliability curve and ECE of the
    out-of-fold scores as written (calibrated when ``method`` is "temperature"), and with
    temperature scaling also the ECE before it and each fold's temperature."""
    tasks = {}
    for task, kind in kinds.items():
        if kind != "binary":
            continue
        p = predictions[predictions["task"] == task]
        label, score = p["label"].to_numpy(float), p["score"].to_numpy(float)
        entry = reliability(label, score)
        if method == "temperature":
            per_fold = temperatures.get(task, {})
            t = np.array([per_fold.get(int(f), 1.0) if np.isfinite(f) else 1.0 for f in p["fold"].to_numpy(float)])
            entry["ece_before_scaling"] = reliability(label, uncalibrated(score, t))["ece"]
            entry["temperature"] = {f"fold_{k}": v for k, v in sorted(per_fold.items())}
        tasks[task] = entry
    return {"method": method, "bins": N_BINS, "scores": "out-of-fold", "tasks": tasks}
