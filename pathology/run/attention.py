"""Attention computed now by a trained run on a bag's features (``pathology heatmap --model``):
every fold model of the run, averaged, as :mod:`mil.predict` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mil.data import read_features
from mil.predict import check_bag, load_run, predict_bag

from ..heatmap import AttentionSource, BagView, HeatmapError, check_scores


def model_attention(run_dir: str | Path) -> AttentionSource:
    """An attention source: the run in ``run_dir`` applied to each bag's features of the set the
    run was trained on; raises :class:`mil.predict.RunError` for an unusable run folder."""
    run = load_run(run_dir)

    def predict(bag: BagView) -> dict[str, np.ndarray]:
        features = read_features(bag.path, None if bag.foreign else run.features)   # CLAM/TRIDENT: the one set
        if features.features.shape[1] != run.in_dim:
            raise HeatmapError(f"{bag.path}: features {features.name!r} have dimension {features.features.shape[1]}, "
                               f"the model in {run_dir} expects {run.in_dim}")
        check_bag(run, bag.path, features.name)
        _, attention = predict_bag(run, features.features)
        return {task: check_scores(f"{run_dir} on {bag.path.name}", task, a, bag) for task, a in attention.items()}

    return predict
