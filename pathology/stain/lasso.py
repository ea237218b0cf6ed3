"""Exact stain concentrations: the non-negative lasso with two stains, in closed form.

spams.lasso(mode=2, pos=True), as staintools uses it, solves per pixel

    min_c ½‖od − Sᵀc‖² + λ(c₁ + c₂)   subject to c ≥ 0

with unit-norm stain rows S (2×3). With g = s₁·s₂ and u = S·od − λ, the KKT conditions
leave four active sets: both stains (c = G⁻¹u, G = [[1, g], [g, 1]]), one stain
(cᵢ = uᵢ), or none. Which one holds reduces to a min/max per stain:

    g ≥ 0:  c₁ = max(min(a, u₁), 0)      g < 0:  c₁ = max(a, u₁, 0)

with a = (u₁ − g·u₂)/(1 − g²) the two-stain solution (and symmetrically for c₂). This is
the exact minimiser, not an approximation, and vectorizes to a handful of array operations.
"""

from __future__ import annotations

import numpy as np

LAMBDA = 0.01
"""staintools' regularizer for concentrations (get_concentrations)."""


def lasso_coefficients(stains: np.ndarray, lam: float = LAMBDA) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear maps of OD behind the closed form: rows (u₁, u₂, a, b) as (4, 3) weights and
    (4,) offsets, and the sign rule (g ≥ 0). Raises ValueError for parallel stains."""
    s = np.asarray(stains, np.float64)
    g = float(s[0] @ s[1])
    if not abs(g) < 1 - 1e-9:
        raise ValueError("the two stain vectors are parallel: concentrations are undetermined")
    both = (s - g * s[::-1]) / (1 - g * g)
    weights = np.concatenate([s, both])
    offsets = np.array([-lam, -lam, -lam / (1 + g), -lam / (1 + g)])
    return weights, offsets, g


def combine(u1, u2, a, b, positive_overlap: bool):
    """Concentrations from the four linear maps (computed in place in a and b)."""
    if positive_overlap:
        np.minimum(a, u1, out=a)
        np.minimum(b, u2, out=b)
    else:
        np.maximum(a, u1, out=a)
        np.maximum(b, u2, out=b)
    np.maximum(a, 0, out=a)
    np.maximum(b, 0, out=b)
    return a, b


def nonneg_lasso2(od: np.ndarray, stains: np.ndarray, lam: float = LAMBDA) -> np.ndarray:
    """Exact concentrations (..., 2) of OD values (..., 3) on two unit-norm stains (2, 3)."""
    weights, offsets, g = lasso_coefficients(stains, lam)
    lin = od @ weights.astype(od.dtype).T + offsets.astype(od.dtype)
    a, b = combine(lin[..., 0], lin[..., 1], lin[..., 2].copy(), lin[..., 3].copy(), g >= 0)
    return np.stack([a, b], axis=-1)
