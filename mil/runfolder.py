"""The run folder of ``mil train`` (docs/architecture.md, "Run folders"): metrics of (out-of-fold) predictions,
the ROC / Kaplan-Meier pictures, ``config.json`` (a :class:`mil.runconfig.RunConfig`) with the bags' provenance,
fold weights, and the atomic writers every file goes through. Shared by ``mil evaluate`` and ``mil predict``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_model

from pathology import __version__
from pathology.bag import BagError
from pathology.hashing import file_sha256
from pathology.publish import publish_json, publish_with, publishing

from . import metrics as M
from .data import BagDataset, available_features
from .models import Head, MILModel
from .plots import plot_km, plot_roc
from .runconfig import (
    SOFTWARE,
    BagSettings,
    FieldError,
    FoldSpec,
    HeadSpec,
    ManifestRecord,
    ModelSpec,
    RunConfig,
    Software,
    SurvivalSpec,
    TrainConfig,
    read_record,
)
from .splits import Fold

PREDICTION_COLUMNS = ["slide_id", "patient_id", "fold", "task", "label", "score", "event"]
BAG_ROOT_ATTRS = ("tiling", "stain", "target_mpp", "patch_size")
FEATURE_ATTRS = ("encoder", "weights_sha256", "dim", "input_size", "mean", "std")
OUTPUTS = {"binary": "probability", "nll": "risk = -expected survived bins", "cox": "risk = Cox log-hazard"}


def evaluate_predictions(predictions: pd.DataFrame, kinds: dict[str, str], *, n_boot: int = M.N_BOOTSTRAP,
                         seed: int = 0, threshold: float = M.THRESHOLD) -> dict:
    """metrics.json's ``tasks`` entry: per task, per-fold and pooled metrics of ``predictions``
    (columns of ``PREDICTION_COLUMNS``; rows without a fold form one group)."""
    tasks = {}
    for name, kind in kinds.items():
        p = predictions[predictions["task"] == name]
        event = p["event"].to_numpy(float) if kind == "survival" else None
        fold_ids = p["fold"].fillna(-1).to_numpy(int)
        per_fold = []
        for k in np.unique(fold_ids):
            q = p[fold_ids == k]
            per_fold.append(M.compute(kind, q["label"].to_numpy(float), q["score"].to_numpy(float),
                                      q["event"].to_numpy(float) if kind == "survival" else None,
                                      where=f"{name}, fold {k}" if k >= 0 else name, threshold=threshold))
        tasks[name] = M.summarize_task(kind, per_fold, p["label"].to_numpy(float), p["score"].to_numpy(float), event,
                                       p["patient_id"].astype(str).to_numpy(), n_boot=n_boot, seed=seed, where=name,
                                       threshold=threshold)
    return tasks


def write_plots(out_dir: Path, predictions: pd.DataFrame, kinds: dict[str, str], tasks_metrics: dict,
                time_unit: str = "") -> list[Path]:
    """ROC per binary task and Kaplan-Meier per survival task, from (out-of-fold) predictions."""
    paths = []
    for name, kind in kinds.items():
        p = predictions[predictions["task"] == name]
        m = tasks_metrics[name]["metrics"]
        if kind == "binary":
            folds = [(q["label"].to_numpy(float), q["score"].to_numpy(float))
                     for _, q in p.groupby("fold", sort=True)] if p["fold"].notna().any() else []
            paths.append(plot_roc(out_dir / f"roc_{name}.png", name,
                                  (p["label"].to_numpy(float), p["score"].to_numpy(float)), folds=folds,
                                  auc=_num(m["auc"]["pooled"]), ci=m["auc"]["ci95"],
                                  fold_aucs=[_num(v) for v in m["auc"]["folds"]] if folds else ()))
        else:
            path = out_dir / f"km_{name}.png"
            p_value = plot_km(path, name, p["label"].to_numpy(float), p["event"].to_numpy(float),
                              p["score"].to_numpy(float), c_index=_num(m["c_index"]["pooled"]),
                              ci=m["c_index"]["ci95"], time_unit=time_unit)
            tasks_metrics[name]["logrank_p"] = p_value
            paths.append(path)
    return paths


def run_config(cohort, config: TrainConfig, dataset: BagDataset, heads: list[Head], folds: list[Fold],
               bin_cuts: dict[str, list[float]]) -> RunConfig:
    """``config.json``: every option, the model and heads, the data's provenance, and the bag settings.
    ``bin_cuts`` (NLL survival, per task and fold): the times between the discrete-time bins."""
    first_bag = Path(dataset.paths[0]) if dataset.paths else None
    feature_name = config.features or (available_features(first_bag)[0] if first_bag else None)
    source = Path(cohort.source)
    specs = tuple(HeadSpec(name=task.name, kind=task.kind, columns=tuple(task.columns), n_outputs=head.n_outputs,
                           threshold=config.threshold if task.kind == "binary" else None,
                           output=OUTPUTS[task.kind if task.kind == "binary" else config.survival_loss])
                  for task, head in zip(cohort.tasks, heads))
    in_dim = int(dataset.dim)
    return RunConfig(
        software=Software(name=SOFTWARE, version=__version__, torch=str(torch.__version__)),
        train=config,
        model=ModelSpec(name=config.model, in_dim=in_dim, hidden=config.hidden, dropout=config.dropout,
                        kwargs=dict(config.model_kwargs)),
        heads=specs,
        features=feature_name,
        in_dim=in_dim,
        survival=None if not config.survival else SurvivalSpec(
            time_column=config.survival[0], event_column=config.survival[1], loss=config.survival_loss,
            time_unit=time_unit_note(config), bin_cuts={k: tuple(map(float, v)) for k, v in bin_cuts.items()}),
        manifest=ManifestRecord(path=str(source.resolve()), sha256=file_sha256(source) if source.is_file() else None,
                                n_slides=len(cohort.table)),
        folds=tuple(FoldSpec(fold=f.index, test=tuple(map(str, cohort.table["slide_id"].iloc[f.test])))
                    for f in folds),
        bag_settings=bag_settings(first_bag, feature_name) if first_bag else None,
    )


def time_unit_note(config: TrainConfig) -> str:
    return f"the unit of manifest column {config.survival[0]!r}" if config.survival else ""


def bag_settings(path: Path, feature_name: str | None) -> BagSettings | None:
    """Tiling/stain/encoder settings of a ``pathology-bag/*`` bag, so ``pathology run`` can apply
    the model to new slides the same way; None for other feature files."""
    if path.suffix != ".h5":
        return None
    with h5py.File(path, "r") as f:
        if "schema" not in f.attrs:
            return None
        out = {"schema": _attr(f.attrs["schema"])}
        out.update({k: _attr(f.attrs[k]) for k in BAG_ROOT_ATTRS if k in f.attrs})
        for k in ("tiling", "stain"):
            if isinstance(out.get(k), str):
                with contextlib.suppress(ValueError):
                    out[k] = json.loads(out[k])
        ds = f.get(f"features/{feature_name}") if feature_name else None
        if isinstance(ds, h5py.Dataset):
            out["features"] = {k: _attr(ds.attrs[k]) for k in FEATURE_ATTRS if k in ds.attrs}
    try:
        return read_record(BagSettings, out)
    except FieldError as exc:
        raise BagError(f"{path}: attribute {exc.where!r} {exc.problem}") from None


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def remove_run(out_dir: Path) -> bool:
    """Delete the files of a run already in ``out_dir`` (metrics.json first: it marks a complete
    run), so a replacement with fewer folds or other tasks leaves none of the old run's models
    or plots behind; anything else in the folder stays. Returns whether there was one."""
    files = [out_dir / "metrics.json", out_dir / "config.json", out_dir / "predictions.csv",
             *sorted(out_dir.glob("fold_*/model.safetensors")), *sorted(out_dir.glob("roc_*.png")),
             *sorted(out_dir.glob("km_*.png")), *sorted(out_dir.glob("reliability_*.png")),
             out_dir / "ood.safetensors"]
    found = [f for f in files if f.is_file()]
    for f in found:
        f.unlink()
    for folder in out_dir.glob("fold_*"):
        with contextlib.suppress(OSError):  # kept when it holds anything else
            folder.rmdir()
    return bool(found)


def save_weights(model: MILModel, path: Path, config: TrainConfig, fold: int) -> None:
    """Fold weights as safetensors (never pickle), written atomically."""
    with publishing(path) as tmp:
        save_model(model, str(tmp),
                   metadata={"model": config.model, "fold": str(fold), "software_version": __version__})


def write_json(path: Path, obj) -> None:
    publish_json(path, obj)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    publish_with(path, lambda fh: frame.to_csv(fh, index=False, float_format="%.8g"), mode="w")


def _num(value) -> float:
    return math.nan if value is None else float(value)
