"""Is a new slide like the training slides? A distance to the training cohort and a threshold
set from the cohort's own spread.

Each slide is summarised by one vector: the mean of its patch embeddings (the input every
MIL model starts from), and separately its fitted stain vectors (the bag's ``stain``
attribute: unit H and E optical-density vectors and their 99th-percentile concentrations,
logged). The distance of a vector to the cohort is its Mahalanobis distance after
standardising each feature with the cohort's mean and sd, under a Ledoit-Wolf shrunk
covariance (Ledoit & Wolf 2004): a cohort has fewer slides than features, and shrinkage
keeps the inverse defined. Mahalanobis distance on network features is the detector of
Lee et al. (NeurIPS 2018); on slide-mean embeddings it costs one D x D product per slide.

The threshold comes from the training folds: for each cross-validation fold the reference is
fitted on the slides outside its test set and the test slides' distances are measured, so
each training slide gets one held-out distance, as if it were new. Their logarithms are
modelled as normal, fitted robustly (median and 1.4826 x the median absolute deviation), so
that one odd training slide does not move the threshold: the threshold is the distance at the
fitted (1 - alpha) quantile, exp(median + z_(1-alpha) x spread). ``false_flag_rate`` is the
share of the n held-out training slides above it, the number the model card states. (With
a few dozen slides, an order-statistic threshold, e.g. split-conformal, is the largest
held-out distance, which one unusual training slide can make arbitrarily large.) The
reference a new slide is measured against is fitted on every training slide.

Arrays live in ``ood.safetensors`` in the run folder; ``config.json`` keeps the thresholds and
the held-out distances (:class:`OodRecord`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.stats import norm
from sklearn.covariance import LedoitWolf

from pathology.errors import UserError
from pathology.publish import publishing

from .data import read_features

log = logging.getLogger(__name__)

OOD_FILE = "ood.safetensors"
METHOD = "mahalanobis, Ledoit-Wolf shrinkage, standardized features"
ALPHA = 0.01
EMBEDDING, STAIN = "embedding", "stain"
MIN_SD = 1e-6
MAD_TO_SD = 1.4826                     # sd of a normal distribution per median absolute deviation


class OodError(UserError):
    """A run folder's out-of-distribution references are missing (the message names the file)."""


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """One distance's threshold and how it was set (see the module docstring)."""

    vector: str                        # what is compared: "embedding" (mean patch features) or "stain"
    threshold: float
    alpha: float                       # the fitted share of in-distribution slides above the threshold
    n: int
    center: float                      # median of the log held-out distances
    spread: float                      # their robust sd (1.4826 x MAD)
    false_flag_rate: float             # share of the training slides' held-out distances above the threshold
    held_out: tuple[float, ...]        # each training slide's held-out distance, in manifest order


@dataclass(frozen=True, kw_only=True)
class OodRecord:
    """``config.json``'s ``ood``: the method, the file with the references and each vector's threshold."""

    method: str
    file: str
    embedding: Threshold | None = None
    stain: Threshold | None = None


@dataclass(frozen=True)
class Reference:
    """A fitted reference: standardization and the shrunk precision matrix."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray) -> Reference:
        vectors = np.asarray(vectors, np.float64)
        mean = vectors.mean(0)
        scale = np.maximum(vectors.std(0), MIN_SD)
        z = (vectors - mean) / scale
        precision = LedoitWolf(assume_centered=True).fit(z).precision_ if len(z) > 1 else np.eye(z.shape[1])
        return cls(mean, scale, precision)

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``vectors`` (n, D) to the reference."""
        z = (np.atleast_2d(np.asarray(vectors, np.float64)) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", z, self.precision, z), 0.0))


def robust_threshold(held_out: np.ndarray, alpha: float, vector: str) -> Threshold:
    """The threshold of the module docstring from the n held-out distances."""
    d = np.asarray(held_out, np.float64)
    logs = np.log(np.maximum(d, 1e-12))
    center = float(np.median(logs))
    spread = float(MAD_TO_SD * np.median(np.abs(logs - center))) or float(logs.std())
    threshold = float(np.exp(center + norm.ppf(1 - alpha) * spread))
    return Threshold(vector=vector, threshold=threshold, alpha=alpha, n=len(d), center=center, spread=spread,
                     false_flag_rate=float(np.mean(d > threshold)), held_out=tuple(map(float, d)))


def held_out_distances(vectors: np.ndarray, test_sets: Sequence[np.ndarray]) -> np.ndarray:
    """Each row's distance to a reference fitted on the rows outside its fold's test set."""
    out = np.full(len(vectors), np.nan)
    for test in test_sets:
        train = np.setdiff1d(np.arange(len(vectors)), test)
        out[test] = Reference.fit(vectors[train]).distance(vectors[test])
    return out


def slide_embedding(path: str | Path, features: str | None) -> np.ndarray:
    """The mean patch embedding of one bag."""
    return read_features(path, features).features.astype(np.float64).mean(0)


def stain_vector(path: str | Path) -> np.ndarray | None:
    """A ``pathology-bag/1`` bag's fitted stain: its stain vectors (rows, flattened) and the logs of
    their maximum concentrations; None when the bag has no per-slide stain fit (no normalization)."""
    path = Path(path)
    if path.suffix != ".h5":
        return None
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("stain")
    if raw is None:
        return None
    try:
        fit = (json.loads(raw) or {}).get("slide") or {}
        matrix, max_c = np.asarray(fit["stain_matrix"], np.float64), np.asarray(fit["max_concentrations"], np.float64)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return np.concatenate([matrix.ravel(), np.log(np.maximum(max_c, 1e-6))])


def fit_ood(embeddings: np.ndarray, paths: Sequence[Path], test_sets: Sequence[np.ndarray], out_dir: Path,
            alpha: float = ALPHA) -> OodRecord:
    """Fit the references of the training bags ``paths`` (manifest order; ``embeddings``: their mean
    patch embeddings, (n, D), as training computed them), set the thresholds from the held-out
    distances of the folds' ``test_sets``, and write ``out_dir/ood.safetensors``."""
    arrays: dict[str, np.ndarray] = {}
    thresholds: dict[str, Threshold] = {}
    vectors = {EMBEDDING: np.asarray(embeddings, np.float64)}
    stains = [stain_vector(p) for p in paths]
    if all(s is not None for s in stains) and len({len(s) for s in stains}) == 1:
        vectors[STAIN] = np.stack(stains)
    for name, v in vectors.items():
        thresholds[name] = robust_threshold(held_out_distances(v, test_sets), alpha, name)
        ref = Reference.fit(v)
        arrays.update({f"{name}/mean": ref.mean, f"{name}/scale": ref.scale, f"{name}/precision": ref.precision})
    with publishing(out_dir / OOD_FILE) as tmp:
        save_file({k: np.ascontiguousarray(a, dtype=np.float64) for k, a in arrays.items()}, str(tmp))
    for t in thresholds.values():
        log.info("out-of-distribution threshold (%s): %.3g; %d of %d training slides above it when held out",
                 t.vector, t.threshold, round(t.false_flag_rate * t.n), t.n)
    return OodRecord(method=METHOD, file=OOD_FILE, **thresholds)


def load_references(run_dir: Path, record: OodRecord) -> dict[str, Reference]:
    """The references of a run folder (safetensors: no pickle), by vector name; :class:`OodError` if missing."""
    path = Path(run_dir) / record.file
    if not path.is_file():
        raise OodError(f"{path}: missing (config.json's ood names it); the run is incomplete")
    arrays = load_file(str(path))
    names = {key.split("/")[0] for key in arrays}
    return {n: Reference(arrays[f"{n}/mean"], arrays[f"{n}/scale"], arrays[f"{n}/precision"]) for n in names}


@dataclass(frozen=True)
class Distance:
    """One slide's distance to the training cohort and the threshold it is judged by."""

    vector: str
    distance: float
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.distance > self.threshold


def slide_distances(run_dir: Path, record: OodRecord, bag: Path, features: str | None) -> list[Distance]:
    """The distances of bag ``bag`` (its mean embedding, and its stain fit when the run has a stain
    reference and the bag a fit) to the training cohort of the run in ``run_dir``."""
    references = load_references(run_dir, record)
    out = []
    for name, vector in ((EMBEDDING, lambda: slide_embedding(bag, features)), (STAIN, lambda: stain_vector(bag))):
        threshold, ref = getattr(record, name), references.get(name)
        if threshold is None or ref is None:
            continue
        v = vector()
        if v is not None and len(v) == len(ref.mean):
            out.append(Distance(name, float(ref.distance(v)[0]), threshold.threshold))
    return out
