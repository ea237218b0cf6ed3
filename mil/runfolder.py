"""The run folder of ``mil train`` (docs/architecture.md, "Run folders"): metrics of (out-of-fold) predictions,
the pictures of each task (ROC, confusion matrix, scatter, Kaplan-Meier), ``config.json`` (a
:class:`mil.runconfig.RunConfig`) with the bags' provenance, fold weights, and the atomic writers every
file goes through. Shared by ``mil evaluate`` and ``mil predict``.

``predictions.csv`` has one row per case and task: ``slide_id`` (the patient's id at the patient
level), ``patient_id``, ``fold``, ``task``, ``label`` and ``score`` (binary: the probability of the
positive class; multiclass: the true and the called class's index, with every class's
probability in a ``probabilities`` column, a JSON object in class order, present when a task is
multi-class; regression: the true and predicted values; survival: the time and the risk) and
``event`` (survival).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_model

from pathology import __version__
from pathology.bag import BagError
from pathology.errors import InputError
from pathology.hashing import file_sha256
from pathology.publish import publish_json, publish_with, publishing

from . import metrics as M
from .data import BagDataset, available_features
from .models import Head, MILModel
from .plots import plot_confusion, plot_km, plot_roc, plot_scatter
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
PROBABILITIES = "probabilities"
BAG_ROOT_ATTRS = ("tiling", "stain", "target_mpp", "patch_size")
FEATURE_ATTRS = ("encoder", "weights_sha256", "dim", "input_size", "mean", "std")
OUTPUTS = {"binary": "probability", "multiclass": "class probabilities (softmax)",
           "regression": "value, in the unit of the label column", "nll": "risk = -expected survived bins",
           "cox": "risk = Cox log-hazard"}
PLOTS = ("roc_*.png", "km_*.png", "confusion_*.png", "scatter_*.png", "reliability_*.png")


class TaskLike(Protocol):
    """What the run folder needs of a task: :class:`mil.manifest.Task` or :class:`mil.runconfig.HeadSpec`."""

    kind: str
    classes: tuple[str, ...]


def prediction_columns(tasks: Iterable[TaskLike]) -> list[str]:
    """``predictions.csv``'s columns: :data:`PREDICTION_COLUMNS`, and ``probabilities`` when a task is multi-class."""
    return PREDICTION_COLUMNS + ([PROBABILITIES] if any(t.kind == "multiclass" for t in tasks) else [])


def prediction_record(task, slide_id: str, patient_id: str, fold: int | None, label, score) -> dict:
    """One ``predictions.csv`` row: ``label`` as :meth:`mil.manifest.Cohort.labels` gives it (NaN
    unknown), ``score`` as :mod:`mil.tasks` (a tuple of probabilities for a multi-class task)."""
    record = {"slide_id": slide_id, "patient_id": patient_id, "fold": fold, "task": task.name, "event": None}
    if task.kind == "survival":
        record.update(label=float(label[0]), event=float(label[1]), score=float(score))
    elif task.kind == "multiclass":
        record.update(label=float(label), score=float(np.argmax(score)),
                      probabilities=json.dumps({c: round(float(p), 8) for c, p in zip(task.classes, score)}))
    else:
        record.update(label=float(label), score=float(score))
    return record


def probability_matrix(predictions: pd.DataFrame, classes: tuple[str, ...], where: str = "") -> np.ndarray:
    """The ``probabilities`` column of a multi-class task's rows as (n, K) in ``classes``' order
    (NaN rows where it is empty); InputError when it names other classes."""
    out = np.full((len(predictions), len(classes)), np.nan)
    cells = predictions[PROBABILITIES] if PROBABILITIES in predictions else pd.Series([None] * len(predictions))
    for i, cell in enumerate(cells):
        if not isinstance(cell, str) or not cell.strip():
            continue
        try:
            probs = json.loads(cell)
        except json.JSONDecodeError:
            raise InputError(f"{where}: a probabilities cell is not JSON: {cell[:60]!r}") from None
        if not isinstance(probs, dict) or set(probs) != set(classes):
            named = sorted(probs) if isinstance(probs, dict) else probs
            raise InputError(f"{where}: probabilities name classes {named}, the task has {list(classes)}")
        out[i] = [float(probs[c]) for c in classes]
    return out


def task_scores(p: pd.DataFrame, task: TaskLike, where: str) -> np.ndarray:
    """The scores metrics take: (n,) or, for a multi-class task, the (n, K) probabilities."""
    if task.kind == "multiclass":
        return probability_matrix(p, task.classes, where)
    return p["score"].to_numpy(float)


def evaluate_predictions(predictions: pd.DataFrame, tasks: Mapping[str, TaskLike], *, n_boot: int = M.N_BOOTSTRAP,
                         seed: int = 0, threshold: float = M.THRESHOLD) -> dict:
    """metrics.json's ``tasks`` entry: per task, per-fold and pooled metrics of ``predictions``
    (columns of :func:`prediction_columns`; rows without a fold form one group)."""
    out = {}
    for name, task in tasks.items():
        kind = task.kind
        p = predictions[predictions["task"] == name]
        event = p["event"].to_numpy(float) if kind == "survival" else None
        scores = task_scores(p, task, name)
        fold_ids = p["fold"].fillna(-1).to_numpy(int)
        per_fold = []
        for k in np.unique(fold_ids):
            q = fold_ids == k
            per_fold.append(M.compute(kind, p["label"].to_numpy(float)[q], scores[q],
                                      None if event is None else event[q],
                                      where=f"{name}, fold {k}" if k >= 0 else name, threshold=threshold))
        out[name] = M.summarize_task(kind, per_fold, p["label"].to_numpy(float), scores, event,
                                     p["patient_id"].astype(str).to_numpy(), n_boot=n_boot, seed=seed, where=name,
                                     threshold=threshold)
        if kind == "multiclass":
            out[name]["classes"] = list(task.classes)
    return out


def write_plots(out_dir: Path, predictions: pd.DataFrame, tasks: Mapping[str, TaskLike], tasks_metrics: dict,
                time_unit: str = "") -> list[Path]:
    """From (out-of-fold) predictions, per task: the ROC (binary), the confusion matrix
    (multiclass), predicted against true values (regression), Kaplan-Meier of the predicted
    risk halves (survival)."""
    paths = []
    for name, task in tasks.items():
        kind = task.kind
        p = predictions[predictions["task"] == name]
        m = tasks_metrics[name]["metrics"]
        if kind == "multiclass":
            confusion = np.array(tasks_metrics[name]["confusion"])
            paths.append(plot_confusion(out_dir / f"confusion_{name}.png", name, confusion,
                                        task.classes, balanced_accuracy=_num(m["balanced_accuracy"]["pooled"]),
                                        auc=_num(m["auc"]["pooled"])))
        elif kind == "regression":
            paths.append(plot_scatter(out_dir / f"scatter_{name}.png", name, p["label"].to_numpy(float),
                                      p["score"].to_numpy(float), pearson=_num(m["pearson"]["pooled"]),
                                      spearman=_num(m["spearman"]["pooled"]), mae=_num(m["mae"]["pooled"])))
        elif kind == "binary":
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
               bin_cuts: dict[str, list[float]], results: list) -> RunConfig:
    """``config.json``: every option, the model and heads, the data's provenance, the bag settings,
    and what each fold fitted (``results``: :class:`mil.train.FoldResult` in fold order).
    ``bin_cuts`` (NLL survival, per task and fold): the times between the discrete-time bins."""
    first_bag = Path(_first(dataset.paths[0])) if dataset.paths else None
    feature_name = config.features or (available_features(first_bag)[0] if first_bag else None)
    source = Path(cohort.source)
    specs = tuple(HeadSpec(name=task.name, kind=task.kind, columns=tuple(task.columns), n_outputs=head.n_outputs,
                           threshold=config.threshold if task.kind == "binary" else None,
                           output=OUTPUTS[task.kind if task.kind != "survival" else config.survival_loss],
                           classes=tuple(task.classes))
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
        folds=tuple(FoldSpec(fold=f.index, test=tuple(map(str, cohort.table["slide_id"].iloc[f.test])),
                             targets={k: tuple(map(float, v)) for k, v in r.targets.items()},
                             covariates=tuple(r.covariates))
                    for f, r in zip(folds, results)),
        bag_settings=bag_settings(first_bag, feature_name) if first_bag else None,
        level=cohort.level,
        covariates=tuple(c.name for c in cohort.covariates),
    )


def _first(path):
    """A case's (first) bag: a patient-level case has a tuple of them."""
    return path[0] if isinstance(path, tuple) else path


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
             out_dir / "predictions_covariates_only.csv", *sorted(out_dir.glob("fold_*/model.safetensors")),
             *(f for pattern in PLOTS for f in sorted(out_dir.glob(pattern))), out_dir / "ood.safetensors"]
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
