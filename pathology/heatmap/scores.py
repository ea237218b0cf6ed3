"""Attention scores → [0, 1] for colouring. Two normalizations, picked by name:

- ``percentile``: linear between the ``lo``-th and ``hi``-th percentile of the slide's
  scores (default 1st and 99th), clipped outside. Keeps the shape of the distribution:
  equal score steps are equal colour steps, and a few extreme patches cannot squash
  everything else into one colour.
- ``rank``: each patch's rank among the slide's patches, (rank - 1) / (N - 1), ties
  averaged (CLAM's "percentile" heatmaps). Uniform whatever the distribution: every
  colour is used by the same number of patches, so even a nearly flat attention map
  shows its order, but score differences are not comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalized:
    """Scores mapped to [0, 1], with what the colour bar should say at given positions."""

    values: np.ndarray                 # float64 (N,) in [0, 1]
    ticks: list[tuple[float, str]]     # (position in [0, 1], label)
    label: str                         # what the colour bar measures


def percentile_normalize(scores: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> Normalized:
    """Linear between two percentiles of ``scores``, clipped to [0, 1]."""
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {lo_p}, {hi_p}")
    scores = np.asarray(scores, np.float64)
    lo, hi = np.percentile(scores, [lo_p, hi_p])
    if hi <= lo:
        log.warning("attention is flat (all scores %.4g): painted mid-scale", lo)
        return Normalized(np.full(len(scores), 0.5), [(0.5, f"{lo:.3g}")], "attention (flat)")
    values = np.clip((scores - lo) / (hi - lo), 0.0, 1.0)
    ticks = [(0.0, f"{lo:.3g}"), (0.5, f"{(lo + hi) / 2:.3g}"), (1.0, f"{hi:.3g}")]
    return Normalized(values, ticks, f"attention (linear, p{lo_p:g}–p{hi_p:g} of this slide)")


def rank_normalize(scores: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> Normalized:
    """Rank within the slide, scaled to [0, 1] (``percentiles`` is unused: ranks need no clipping)."""
    scores = np.asarray(scores, np.float64)
    if len(scores) < 2:
        return Normalized(np.ones(len(scores)), [(1.0, "only patch")], "attention rank")
    values = (rankdata(scores, method="average") - 1.0) / (len(scores) - 1)
    ticks = [(0.0, "lowest"), (0.5, "median"), (1.0, "highest")]
    return Normalized(values, ticks, "attention rank within this slide")


NORMALIZERS: dict[str, Callable[..., Normalized]] = {
    "percentile": percentile_normalize,
    "rank": rank_normalize,
}


def normalize(scores: np.ndarray, method: str = "percentile",
              percentiles: tuple[float, float] = (1.0, 99.0)) -> Normalized:
    """Normalize with the registered ``method`` (see the module docstring)."""
    if method not in NORMALIZERS:
        raise InputError(f"unknown normalization {method!r}; choose {', '.join(NORMALIZERS)}")
    if not len(scores):
        return Normalized(np.zeros(0), [], "attention")
    return NORMALIZERS[method](scores, percentiles)


def extremes(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest scores (highest first) and the ``k`` lowest (lowest first);
    ties keep the bag's row order."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    k = min(k, len(order))
    low = np.argsort(np.asarray(scores, np.float64), kind="stable")[:k]
    return order[:k], low
