"""What each task kind means to training and prediction: the size of its head, what is fitted
on a training fold, its per-bag loss, and the score a prediction reports.

- ``binary``: 1 logit; class weights (n / 2 n_c) fitted on the training fold; class-balanced
  BCE; scores the probability of the positive class.
- ``multiclass``: K logits; class weights (n / K n_c); class-balanced cross-entropy; scores K
  probabilities (softmax).
- ``regression``: 1 value; the target's mean and sd; MSE of the standardized target; scores the
  value in the column's unit.
- ``survival``: 4 hazard logits (nll) or 1 log-hazard (cox); time bins and baseline hazard (nll);
  discrete-time NLL or Cox; scores a risk (higher = worse).

Class weights make every class count as much in the loss whatever its share, so a rare class
is learned and the 0.5 cut-off (argmax for several classes) is a balanced call (``--no-balance``
weighs every case alike). Kinds are
found by name in :data:`KINDS`; a new kind is a new entry, nothing else branches on its name
(the Cox term, which needs several bags at once, is the one exception, in :mod:`mil.train`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import binary_loss, nll_survival_loss, risk_from_hazards, survival_bins, time_to_bin

Score = float | tuple[float, ...]     # one number, or one probability per class


@dataclass(frozen=True)
class HeadOptions:
    """The options of ``mil train`` that shape heads and losses."""

    survival_loss: str = "nll"
    survival_bins: int = 4
    balance: bool = True                            # class-balanced binary and multi-class losses


@dataclass
class Fitted:
    """What a kind learns from a training fold's labels (only the fields its kind uses)."""

    class_weight: np.ndarray | None = None          # binary: (2,) negative, positive; multiclass: (K,)
    mean: float = 0.0                               # regression target
    sd: float = 1.0
    edges: np.ndarray | None = None                 # survival (nll): time-bin edges, -inf ... +inf
    hazard_logits: np.ndarray | None = None         # survival (nll): logit of each bin's baseline hazard


class Kind(ABC):
    """One task kind (see the module docstring). Losses take a batch: head outputs ``out``
    (B, n_outputs) and labels ``y`` (B,), survival (B, 2); they average over the known labels
    and return a zero that belongs to the graph when none is known."""

    name: str

    @abstractmethod
    def n_outputs(self, n_classes: int, options: HeadOptions) -> int:
        """Outputs of the head."""

    def fit(self, y: np.ndarray, n_classes: int, options: HeadOptions) -> Fitted:
        """What the loss needs from the training fold's labels ``y`` (NaN = unknown)."""
        return Fitted()

    @abstractmethod
    def loss(self, out: Tensor, y: Tensor, fitted: Fitted, options: HeadOptions) -> Tensor | None:
        """The mean loss of a batch; None when the kind has no per-bag term (Cox)."""

    @abstractmethod
    def score(self, out: Tensor, fitted: Fitted, options: HeadOptions) -> Score:
        """The prediction of one bag from its head output (n_outputs,), in the task's own terms."""


def _known(y: np.ndarray) -> np.ndarray:
    return y[np.isfinite(y)]


def _zero(out: Tensor) -> Tensor:
    return out.sum() * 0.0


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (K n_c) per class over the known labels (1 for a class absent from them: it has no
    term to weigh), so every present class weighs as much in the mean loss."""
    known = _known(y).astype(int)
    counts = np.bincount(known, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = known.size / (present.sum() * counts[present])
    return weights


class Binary(Kind):
    name = "binary"

    def n_outputs(self, n_classes: int, options: HeadOptions) -> int:
        return 1

    def fit(self, y: np.ndarray, n_classes: int, options: HeadOptions) -> Fitted:
        return Fitted(class_weight=balanced_weights(y, 2) if options.balance else np.ones(2))

    def loss(self, out: Tensor, y: Tensor, fitted: Fitted, options: HeadOptions) -> Tensor:
        w = fitted.class_weight
        pos_weight = float(w[1] / w[0]) if w is not None and w[0] != w[1] else None  # n_negative / n_positive
        return binary_loss(out[:, 0], y.to(out.device), pos_weight)

    def score(self, out: Tensor, fitted: Fitted, options: HeadOptions) -> float:
        return float(torch.sigmoid(out.float()).reshape(-1)[0])


class Multiclass(Kind):
    name = "multiclass"

    def n_outputs(self, n_classes: int, options: HeadOptions) -> int:
        return n_classes

    def fit(self, y: np.ndarray, n_classes: int, options: HeadOptions) -> Fitted:
        return Fitted(class_weight=balanced_weights(y, n_classes) if options.balance else np.ones(n_classes))

    def loss(self, out: Tensor, y: Tensor, fitted: Fitted, options: HeadOptions) -> Tensor:
        y = y.to(out.device)
        known = ~torch.isnan(y)
        if not bool(known.any()):
            return _zero(out)
        weight = torch.as_tensor(fitted.class_weight, dtype=out.dtype, device=out.device)
        terms = F.cross_entropy(out[known], y[known].long(), weight=weight, reduction="none")  # w_y * CE
        return terms.mean()

    def score(self, out: Tensor, fitted: Fitted, options: HeadOptions) -> tuple[float, ...]:
        return tuple(float(p) for p in torch.softmax(out.float().reshape(-1), dim=0))


class Regression(Kind):
    name = "regression"

    def n_outputs(self, n_classes: int, options: HeadOptions) -> int:
        return 1

    def fit(self, y: np.ndarray, n_classes: int, options: HeadOptions) -> Fitted:
        known = _known(y)
        mean = float(known.mean()) if known.size else 0.0
        sd = float(known.std()) if known.size > 1 else 0.0
        return Fitted(mean=mean, sd=sd if sd > 0 else 1.0)

    def loss(self, out: Tensor, y: Tensor, fitted: Fitted, options: HeadOptions) -> Tensor:
        y = y.to(out.device, out.dtype)
        known = ~torch.isnan(y)
        if not bool(known.any()):
            return _zero(out)
        return F.mse_loss(out[known, 0], (y[known] - fitted.mean) / fitted.sd)

    def score(self, out: Tensor, fitted: Fitted, options: HeadOptions) -> float:
        return float(out.float().reshape(-1)[0]) * fitted.sd + fitted.mean


class Survival(Kind):
    name = "survival"

    def n_outputs(self, n_classes: int, options: HeadOptions) -> int:
        return options.survival_bins if options.survival_loss == "nll" else 1

    def fit(self, y: np.ndarray, n_classes: int, options: HeadOptions) -> Fitted:
        if options.survival_loss != "nll":
            return Fitted()
        edges = survival_bins(y[:, 0], y[:, 1], options.survival_bins)
        return Fitted(edges=edges, hazard_logits=baseline_hazard_logits(y[:, 0], y[:, 1], edges))

    def loss(self, out: Tensor, y: Tensor, fitted: Fitted, options: HeadOptions) -> Tensor | None:
        if options.survival_loss != "nll":
            return None
        y = y.detach().cpu().double().numpy().reshape(-1, 2)
        time, event = y[:, 0], y[:, 1]
        event = np.where(np.isnan(time), np.nan, event)
        bins = time_to_bin(np.nan_to_num(time), fitted.edges)
        return nll_survival_loss(out, torch.from_numpy(bins).to(out.device),
                                 torch.from_numpy(event).to(out.device, out.dtype))

    def score(self, out: Tensor, fitted: Fitted, options: HeadOptions) -> float:
        out = out.float()
        return float((risk_from_hazards(out) if options.survival_loss == "nll" else out[..., 0]).reshape(-1)[0])


def baseline_hazard_logits(times: np.ndarray, events: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Logit of the discrete-time hazard of each bin in the whole group (the life-table, i.e.
    Kaplan-Meier, estimate on these bins): h_k = events in bin k / cases still at risk in bin k,
    where a case censored in bin k counts as at risk through it (as the NLL loss has it). Kept
    within [0.01, 0.99] so an empty bin does not start at an infinite logit."""
    times, events = np.asarray(times, float), np.asarray(events, float)
    keep = np.isfinite(times) & np.isfinite(events)
    bins = time_to_bin(times[keep], edges)
    n_bins = len(edges) - 1
    at_risk = np.array([(bins >= k).sum() for k in range(n_bins)], float)
    died = np.array([((bins == k) & (events[keep] == 1)).sum() for k in range(n_bins)], float)
    hazard = np.clip(np.divide(died, at_risk, out=np.full(n_bins, 0.5), where=at_risk > 0), 0.01, 0.99)
    return np.log(hazard / (1 - hazard))


KINDS: dict[str, Kind] = {k.name: k for k in (Binary(), Multiclass(), Regression(), Survival())}
