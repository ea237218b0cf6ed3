"""Slide scores from per-cell intensity classes: positive percentage, H-score, Allred, HER2.

Counts are always per class, ``counts[k]`` = cells of class k (0 negative, 1 weak/1+,
2 moderate/2+, 3 strong/3+), so every score is reproducible from the four numbers in
the slide's JSON.

- Positive percentage: classes 1-3 over all scored cells.
- H-score (McCarty 1985): 1 × %weak + 2 × %moderate + 3 × %strong, 0-300.
- Allred (Harvey et al. 1999): proportion score 0-5 (none, < 1 %, 1-10 %, > 10-33 %,
  > 33-67 %, > 67 %) + intensity score 0-3 (the mean class of the positive cells,
  rounded half up), total 0 or 2-8.
- ER / PgR call (ASCO/CAP 2020): positive at >= 1 % positive nuclei ("low positive"
  for 1-10 %), negative below.
- Ki-67: the index itself, placed against the International Ki67 Working Group (2021)
  cut-offs (<= 5 % low, >= 30 % high).
- HER2 (ASCO/CAP 2018, on cell classes from :mod:`.membrane`): 3+ when > 10 % of cells
  are 3+; 2+ when > 10 % are 2+ or 3+; 1+ when > 10 % are 1+ or more; 0 otherwise.
"""

from __future__ import annotations

import math

import numpy as np

HER2_DISCLAIMER = ("Computer-aided estimate for review by a pathologist, not a diagnosis: membrane "
                   "completeness and intensity measured on pixels; 2+ (equivocal) needs in situ hybridization.")


def _counts(counts) -> np.ndarray:
    c = np.asarray(counts, np.int64)
    if c.shape != (4,) or (c < 0).any():
        raise ValueError(f"class counts must be 4 non-negative numbers (0, 1+, 2+, 3+), got {counts}")
    return c


def percent_positive(counts) -> float:
    """Share of cells in classes 1-3, in percent (0 for no cells)."""
    c = _counts(counts)
    return 100.0 * c[1:].sum() / c.sum() if c.sum() else 0.0


def h_score(counts) -> float:
    """1 × %weak + 2 × %moderate + 3 × %strong (0-300)."""
    c = _counts(counts)
    return 100.0 * float(c @ np.arange(4)) / c.sum() if c.sum() else 0.0


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def allred(counts) -> dict:
    """Allred proportion, intensity and total score."""
    c = _counts(counts)
    p = percent_positive(c)
    proportion = 0 if c[1:].sum() == 0 else 1 if p < 1 else 2 if p <= 10 else 3 if p <= 100 / 3 \
        else 4 if p <= 200 / 3 else 5
    intensity = _half_up(float(c[1:] @ np.arange(1, 4)) / c[1:].sum()) if c[1:].sum() else 0
    return {"proportion_score": proportion, "intensity_score": intensity, "total": proportion + intensity}


def hormone_receptor_call(counts) -> dict:
    """ER / PgR status by the ASCO/CAP 2020 rule (>= 1 % positive nuclei)."""
    p = percent_positive(counts)
    result = "negative" if p < 1 else "low positive" if p <= 10 else "positive"
    return {"result": result, "value": round(p, 2),
            "rule": "ASCO/CAP 2020: >= 1% positive tumour nuclei is positive (1-10%: low positive)"}


def ki67_call(counts) -> dict:
    """The Ki-67 index (positive nuclei of any intensity) and its IKWG 2021 band."""
    p = percent_positive(counts)
    band = "low" if p <= 5 else "high" if p >= 30 else "intermediate"
    return {"result": f"index {p:.1f}% ({band})", "value": round(p, 2),
            "rule": "Ki-67 index = % positive nuclei; IKWG 2021: <= 5% low, >= 30% high"}


def her2_score(counts) -> int:
    """ASCO/CAP 2018 HER2 IHC score 0-3 from cell classes 0, 1+, 2+, 3+."""
    c = _counts(counts)
    if not c.sum():
        return 0
    share = np.cumsum(c[::-1])[::-1] / c.sum()   # share[k] = cells of class >= k
    return next((k for k in (3, 2, 1) if share[k] > 0.10), 0)


def her2_call(counts) -> dict:
    score = her2_score(counts)
    result = {0: "0 (negative)", 1: "1+ (negative; HER2-low)", 2: "2+ (equivocal: reflex ISH)",
              3: "3+ (positive)"}[score]
    return {"result": result, "value": score, "disclaimer": HER2_DISCLAIMER,
            "rule": "ASCO/CAP 2018: 3+ if >10% of cells complete intense; 2+ if >10% complete weak-moderate "
                    "(or incomplete moderate-intense); 1+ if >10% faint/incomplete; else 0"}
