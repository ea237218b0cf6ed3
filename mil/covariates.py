"""Clinical covariates (age, stage, grade, nodal status...) as a vector a model can fuse with
the slide: fitted on a training fold only, stored in the run, applied the same way to new cases.

Per fold, from the training cases' values (:func:`fit`):

- a **numeric** covariate is standardized with the training mean and sd; a missing value is
  filled with the training median (before scaling);
- a **categorical** covariate is one-hot encoded over the levels seen in training; a missing
  value, or a level training never saw, is all zeros;
- either gets a 0/1 "missing" column when some training case lacks it, so the model can use
  missingness itself.

The fitted encodings (:class:`mil.runconfig.CovariateFit`) are written to ``config.json`` per
fold, and :func:`encode` applies them to any table of cases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from . import labels as L
from .runconfig import CovariateFit

log = logging.getLogger(__name__)


def fit(name: str, kind: str, values: np.ndarray) -> CovariateFit:
    """The encoding of one covariate from its training values (numeric: float with NaN;
    categorical: str with "" for missing)."""
    if kind == "numeric":
        values = np.asarray(values, np.float64)
        known = values[np.isfinite(values)]
        missing = bool(known.size < values.size)
        if not known.size:
            log.warning("covariate %s: no training case of a fold has a value; it is constant there", name)
            return CovariateFit(name=name, kind=kind, mean=0.0, sd=1.0, fill=0.0, levels=(), missing=False)
        sd = float(known.std())
        return CovariateFit(name=name, kind=kind, mean=float(known.mean()), sd=sd if sd > 0 else 1.0,
                            fill=float(np.median(known)), levels=(), missing=missing)
    values = np.asarray(values, object)
    present = [str(v) for v in values if str(v) != ""]
    levels = L.ordered_classes(L.distinct_values(present))
    return CovariateFit(name=name, kind=kind, mean=0.0, sd=1.0, fill=0.0, levels=levels,
                        missing=len(present) < len(values))


def columns(fits: Sequence[CovariateFit]) -> list[str]:
    """The names of the encoded vector's entries: ``age``, ``age:missing``, ``stage=II``..."""
    out = []
    for f in fits:
        out += [f.name] if f.kind == "numeric" else [f"{f.name}={level}" for level in f.levels]
        out += [f"{f.name}:missing"] if f.missing else []
    return out


def encode(fits: Sequence[CovariateFit], values: dict[str, np.ndarray]) -> np.ndarray:
    """float32 (n, C): the encoded covariates of n cases; ``values``: name -> the cases' raw
    values (as :func:`fit` takes them)."""
    n = len(next(iter(values.values()))) if values else 0
    parts = []
    for f in fits:
        raw = values[f.name]
        if f.kind == "numeric":
            x = np.asarray(raw, np.float64)
            absent = ~np.isfinite(x)
            parts.append(((np.where(absent, f.fill, x) - f.mean) / f.sd)[:, None])
        else:
            keys = [L.class_key(level) for level in f.levels]
            cells = [str(v) for v in raw]
            absent = np.array([c == "" for c in cells], bool)
            onehot = np.zeros((n, len(keys)))
            unseen = set()
            for i, c in enumerate(cells):
                if c == "":
                    continue
                key = L.class_key(c)
                if key in keys:
                    onehot[i, keys.index(key)] = 1.0
                else:
                    unseen.add(c)
                    absent[i] = True
            if unseen:
                log.warning("covariate %s: level(s) %s were not seen in training; encoded as missing", f.name,
                            ", ".join(sorted(unseen)))
            parts.append(onehot)
        if f.missing:
            parts.append(absent[:, None].astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)


def width(fits: Sequence[CovariateFit]) -> int:
    """Entries of the encoded vector."""
    return sum((1 if f.kind == "numeric" else len(f.levels)) + int(f.missing) for f in fits)
