"""``none``: no normalization, at no cost (patches pass through untouched)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Normalizer, Patches


class IdentityNormalizer(Normalizer):
    """Returns every batch as it is; nothing to fit, no reference read."""

    method = "none"

    def fit_slide(self, patches: Patches, expected_patches: int | None = None) -> IdentityNormalizer:
        return self

    def transform(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def to_attrs(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind.name}
