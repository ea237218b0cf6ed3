"""Losses of the MIL heads: binary cross-entropy with unknown labels masked, and survival
as discrete-time hazards (Zadeh & Schmid 2020) or a Cox partial likelihood.

Every loss drops rows whose label is NaN and returns a zero that still belongs to the
graph when nothing is left, so a multi-task sum can always call ``backward``."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .splits import SplitError

log = logging.getLogger(__name__)


def _zero(t: Tensor) -> Tensor:
    """A zero connected to ``t``'s graph (zero gradient), for losses with nothing to score."""
    return t.sum() * 0.0


def binary_loss(logit: Tensor, label: Tensor, pos_weight: float | None = None) -> Tensor:
    """Mean BCE-with-logits of ``logit`` (B,) against ``label`` (B,) in {0, 1}, over the
    known labels only (NaN = unknown); 0 when every label is unknown. ``pos_weight``
    multiplies the positive term (e.g. n_negative / n_positive for imbalance)."""
    logit, label = logit.reshape(-1), label.reshape(-1).to(logit.dtype)
    known = ~torch.isnan(label)
    if not bool(known.any()):
        return _zero(logit)
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    return F.binary_cross_entropy_with_logits(logit[known], label[known], pos_weight=weight)


def nll_survival_loss(hazard_logits: Tensor, bins: Tensor, event: Tensor, alpha: float = 0.4) -> Tensor:
    """Discrete-time survival negative log-likelihood with censoring (Zadeh & Schmid 2020),
    mean over samples. ``hazard_logits`` (B, K): logit of the hazard h_k = P(T in bin k | T >= bin k);
    ``bins`` (B,) long: the bin of each time; ``event`` (B,): 1 event, 0 censored, NaN unknown (masked).

    With S_k = prod_{j<=k} (1 - h_j) and S_{-1} = 1, an event in bin y scores
    -log S_{y-1} - log h_y, a censoring in bin y scores -log S_y (alive through bin y).
    ``alpha`` up-weights the events' terms as in PORPOISE/MCAT:
    loss = (1 - alpha) * all terms + alpha * event terms; alpha = 0 is the plain likelihood."""
    if hazard_logits.dim() != 2:
        raise ValueError(f"hazard_logits must be (B, K), got {tuple(hazard_logits.shape)}")
    bins, event = bins.reshape(-1).long(), event.reshape(-1).to(hazard_logits.dtype)
    known = ~torch.isnan(event)
    if not bool(known.any()):
        return _zero(hazard_logits)
    logits, bins, event = hazard_logits[known], bins[known], event[known]
    n_bins = logits.shape[1]
    if bool(((bins < 0) | (bins >= n_bins)).any()):
        raise ValueError(f"time bins must lie in [0, {n_bins}), got {bins.tolist()}")
    log_h = F.logsigmoid(logits)                       # log h_k
    log_s = torch.cumsum(F.logsigmoid(-logits), dim=1)  # log S_k
    log_s = torch.cat([log_s.new_zeros(len(log_s), 1), log_s], dim=1)  # log S_{k-1} at column k
    rows = torch.arange(len(bins), device=bins.device)
    event_terms = -event * (log_s[rows, bins] + log_h[rows, bins])
    censored_terms = -(1.0 - event) * log_s[rows, bins + 1]
    return ((1.0 - alpha) * (event_terms + censored_terms) + alpha * event_terms).mean()


def cox_loss(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, mean over events:
    -(1/E) sum_{i: event} [r_i - log sum_{j: t_j >= t_i} exp(r_j)]. ``risk`` (B,) higher = worse;
    rows with a NaN time or event are dropped; 0 when there is no event."""
    risk, time, event = risk.reshape(-1), time.reshape(-1).to(risk.dtype), event.reshape(-1).to(risk.dtype)
    known = ~(torch.isnan(time) | torch.isnan(event))
    risk_k, time, event = risk[known], time[known], event[known]
    if not bool((event > 0).any()):
        return _zero(risk)
    order = torch.argsort(time, descending=True, stable=True)
    risk_k, time, event = risk_k[order], time[order], event[order]
    log_cum = torch.logcumsumexp(risk_k, dim=0)  # log sum over j with t_j >= t_(this position), before ties
    _, counts = torch.unique_consecutive(time, return_counts=True)
    group_end = torch.repeat_interleave(torch.cumsum(counts, 0) - 1, counts)  # tied times share the full risk set
    log_risk_set = log_cum[group_end]
    is_event = event > 0
    return -(risk_k[is_event] - log_risk_set[is_event]).mean()


def survival_bins(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Edges (n_bins + 1,) of time bins at the quantiles of the uncensored times (as in
    PORPOISE/MCAT), with -inf and +inf ends so every time falls in a bin; bin k is
    [edges[k], edges[k + 1]). NaN rows are ignored; SplitError without an uncensored time."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    times, events = np.asarray(times, dtype=float).ravel(), np.asarray(events, dtype=float).ravel()
    observed = times[~np.isnan(times) & (events == 1)]
    if observed.size == 0:
        raise SplitError("survival_bins needs at least one uncensored time (event == 1) among the training "
                         "patients of a fold: too few events for this many folds")
    edges = np.quantile(observed, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    if np.any(np.diff(edges) <= 0):
        log.warning("tied uncensored times give empty survival bins: edges %s", edges.tolist())
    return edges


def time_to_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin index (int64) of each time under ``edges`` from :func:`survival_bins`."""
    n_bins = len(edges) - 1
    return np.clip(np.searchsorted(edges, np.asarray(times, dtype=float), side="right") - 1, 0, n_bins - 1)


def risk_from_hazards(hazard_logits: Tensor) -> Tensor:
    """Risk (higher = worse) from hazard logits (..., K): minus the sum of the survival
    curve S_k = prod_{j<=k} (1 - h_j), i.e. minus the expected number of bins survived."""
    survival = torch.exp(torch.cumsum(F.logsigmoid(-hazard_logits), dim=-1))
    return -survival.sum(dim=-1)
