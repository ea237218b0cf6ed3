"""Vahadane stain estimation (Vahadane et al., IEEE TMI 2016), as in staintools.

Sparse non-negative dictionary learning of two stains on tissue OD (spams.trainDL with
staintools' parameters). staintools runs trainDL for one second on all cores
(``iter=-1``), so its result varies from run to run; here a fixed number of iterations
on one thread makes the fit deterministic.
"""

from __future__ import annotations

import numpy as np

from .deconvolution import StainMatrixNormalizer

REGULARIZER = 0.1
ITERATIONS = 2000
BATCH_SIZE = 256


def vahadane_stains(od: np.ndarray) -> np.ndarray:
    """Two stain vectors (2, 3), unordered and not normalized, from tissue OD (T, 3)."""
    import spams  # only this method needs it

    dictionary = spams.trainDL(X=np.asfortranarray(od.T, dtype=np.float64), K=2, lambda1=REGULARIZER, mode=2,
                               modeD=0, posAlpha=True, posD=True, verbose=False, iter=ITERATIONS,
                               batchsize=BATCH_SIZE, numThreads=1)
    return np.ascontiguousarray(dictionary.T)


class VahadaneNormalizer(StainMatrixNormalizer):
    """Vahadane stain vectors, exact-lasso concentrations (staintools' StainNormalizer('vahadane'))."""

    method = "vahadane"
    estimate = staticmethod(vahadane_stains)
