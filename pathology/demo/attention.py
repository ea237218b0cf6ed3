"""Out-of-fold attention for a cross-validated run, and how well it finds the true tumour.

The demo draws each slide's heatmap with the fold model that did *not* train on it (the
same model that made its out-of-fold score), so the pictures show what the model learnt,
not what it memorized. The synthetic slides come with their tumour mask, so the tumour
task's attention can be scored: the share of each slide's top-attention patches whose
centre lies in tumour.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from mil.data import read_features
from mil.predict import Run, predict_bag, write_attention
from pathology.synth.writer import truth_paths


def out_of_fold_attention(run: Run, bags: dict[str, Path], out_dir: Path) -> dict[str, dict[str, float]]:
    """Write ``out_dir/<slide_id>.h5`` for every slide of the run's test folds, from its own
    fold's model; returns the slides' out-of-fold scores (slide -> task -> score)."""
    scores = {}
    for model, fold in zip(run.models, run.config.folds, strict=True):
        single = replace(run, models=[model])
        for sid in fold.test:
            bag = read_features(bags[sid], run.features)
            scores[sid], attention = predict_bag(single, bag.features)
            write_attention(out_dir / f"{sid}.h5", sid, bag.coords, attention, single, bag.name)
    return scores


def in_tumour(slide: Path, coords: np.ndarray, patch_size0: float) -> np.ndarray:
    """Whether each patch's centre (level-0 top-left ``coords``, side ``patch_size0``) lies in
    the slide's ground-truth tumour mask (``<stem>.tumor.png`` written by ``pathology synth``)."""
    _, tumour_png, truth = truth_paths(slide)
    mask = np.asarray(Image.open(tumour_png)) > 127
    ds = json.loads(truth.read_text())["mask_downsample"]
    centre = ((np.asarray(coords, float) + patch_size0 / 2) // ds).astype(int)
    x = np.clip(centre[:, 0], 0, mask.shape[1] - 1)
    y = np.clip(centre[:, 1], 0, mask.shape[0] - 1)
    return mask[y, x]


def top_k_precision(attention: np.ndarray, inside: np.ndarray, k: int) -> tuple[int, int]:
    """(hits, k) for the ``k`` highest-attention patches: how many lie in tumour."""
    k = min(k, len(attention))
    top = np.argsort(-attention, kind="stable")[:k]
    return int(inside[top].sum()), k
