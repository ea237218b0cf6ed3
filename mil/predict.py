"""Apply a trained run (every fold model of ``mil train``) to bags: scores per task and
per-instance attention, averaged over the fold models.

Shared by ``mil predict`` and, later, ``pathology run`` / heatmaps:

    run = load_run("runs/er")                  # config.json (RunConfig) + fold_<k>/model.safetensors
    scores, attention = predict_bag(run, x)    # x: (N, in_dim) features of one bag

A binary task's score is the mean of the fold models' probabilities; a survival task's is
the mean of their risks (higher = worse). Attention is the mean of the fold models'
per-instance attention, in the bag's row order (the order of its ``/coords``).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import load_model

from pathology import __version__
from pathology.batch import Outcome, run_batch, status_path
from pathology.inputs import SlideInput
from pathology.publish import publishing
from pathology.table import read_table

from .calibration import calibrated
from .data import BAG_SUFFIXES, CLAM_SUBDIRS, BagError, find_bag, read_features
from .manifest import Cohort, load_manifest
from .models import Head, MILModel, create_model
from .runconfig import CONFIG_NAME, RunConfig, RunError
from .runfolder import PREDICTION_COLUMNS, write_csv
from .train import autocast, resolve_device, risk_score

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


@dataclass
class Run:
    """A trained run ready to predict: its config and one eval-mode model per fold (in the
    config's fold order)."""

    path: Path
    config: RunConfig
    models: list[MILModel]
    device: torch.device

    @property
    def heads(self) -> list[Head]:
        return [Head(h.name, h.n_outputs) for h in self.config.heads]

    @property
    def kinds(self) -> dict[str, str]:
        """task -> "binary" | "survival"."""
        return self.config.kinds

    @property
    def features(self) -> str | None:
        """The feature set the models were trained on."""
        return self.config.features

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def survival_loss(self) -> str:
        return self.config.survival_loss


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Read ``config.json`` (:meth:`RunConfig.read`) and every ``fold_<k>/model.safetensors`` of a
    run (safetensors only, never pickle) and rebuild the fold models in eval mode; raises
    :class:`RunError`."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.json); give the --out folder of `mil train`")
    config = RunConfig.read(config_path)
    spec = config.model
    heads = [Head(h.name, h.n_outputs) for h in config.heads]
    target = resolve_device(device)
    models = []
    for fold in config.folds:
        path = run_dir / f"fold_{fold.fold}" / WEIGHTS
        if not path.is_file():
            raise RunError(f"{path}: missing (config.json lists fold {fold.fold}); the run is incomplete")
        model = create_model(spec.name, config.in_dim, heads, hidden=spec.hidden, dropout=spec.dropout, **spec.kwargs)
        try:
            load_model(model, str(path), strict=True)
        except Exception as exc:  # noqa: BLE001 - any failure means these weights do not fit this config
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RunError(f"{path}: weights do not match config.json's model ({first})") from None
        models.append(calibrated(model, config.calibration, fold.fold).to(target).eval())
    log.info("%s: %s, %d fold model(s), tasks %s, features %s (dim %d)", run_dir, spec.name, len(models),
             ", ".join(config.kinds), config.features, config.in_dim)
    return Run(run_dir, config, models, target)


@torch.inference_mode()
def predict_bag(run: Run, x: torch.Tensor | np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scores (task -> probability or risk) and attention (task -> float32 (N,)) of one bag
    ``x`` (N, in_dim), each the mean over the run's fold models."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2 or x.shape[1] != run.in_dim:
        raise ValueError(f"features of shape {tuple(x.shape)}; the model expects (N, {run.in_dim})")
    x = x.to(run.device)
    scores = dict.fromkeys(run.kinds, 0.0)
    attention = {name: torch.zeros(len(x), dtype=torch.float64) for name in run.kinds}
    for model in run.models:
        with autocast(run.device):
            out = model(x)
        for name, kind in run.kinds.items():
            logits = out.logits[name].float()
            value = torch.sigmoid(logits).reshape(-1)[0] if kind == "binary" else \
                risk_score(logits, run.survival_loss).reshape(-1)[0]
            scores[name] += float(value) / len(run.models)
            attention[name] += out.attention[name].detach().double().cpu() / len(run.models)
    return scores, {name: a.to(torch.float32).numpy() for name, a in attention.items()}


def bag_files(bags_dir: str | Path) -> dict[str, Path]:
    """slide_id -> bag of every bag file in ``bags_dir`` (also CLAM's ``h5_files``/``pt_files``),
    chosen per slide in :func:`mil.data.find_bag`'s order."""
    bags_dir = Path(bags_dir)
    stems = set()
    for suffix in BAG_SUFFIXES:
        for folder in (bags_dir, bags_dir / CLAM_SUBDIRS[suffix]):
            stems.update(p.stem for p in folder.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
    return {stem: find_bag(bags_dir, stem) for stem in sorted(stems)}


def check_bag(run: Run, path: Path, features: str | None) -> None:
    """A bag whose encoder weights differ from the ones the run was trained on is refused."""
    attrs = run.config.feature_attrs
    trained = attrs.weights_sha256 if attrs is not None else None
    if not trained or path.suffix != ".h5":
        return
    with h5py.File(path, "r") as f:
        ds = f.get(f"features/{features}")
        sha = ds.attrs.get("weights_sha256") if isinstance(ds, h5py.Dataset) else None
    sha = sha.decode() if isinstance(sha, bytes) else sha
    if sha and sha != trained:
        raise BagError(f"{path}: features {features!r} come from encoder weights {sha[:12]}…, "
                       f"the model was trained on {trained[:12]}…")


def predict_file(run: Run, slide_id: str, path: Path, out_dir: Path, features: str | None = None
                 ) -> tuple[dict[str, float], int]:
    """Predict one bag file and write ``out_dir/attention/<slide_id>.h5``; returns (scores, N).

    ``features`` picks the bag's feature set (default: the run's); a bag with another
    dimension than the run's is a :class:`BagError` naming the bag."""
    name = features or run.features
    bag = read_features(path, name)
    if bag.features.shape[1] != run.in_dim:
        raise BagError(f"{path}: features {bag.name!r} have dimension {bag.features.shape[1]}, the model "
                       f"expects {run.in_dim}")
    check_bag(run, path, bag.name)
    scores, attention = predict_bag(run, bag.features)
    write_attention(out_dir / "attention" / f"{slide_id}.h5", slide_id, bag.coords, attention, run, bag.name)
    return scores, len(bag.features)


def write_attention(path: Path, slide_id: str, coords: np.ndarray | None, attention: dict[str, np.ndarray],
                    run: Run, features: str) -> None:
    """``coords`` (N, 2, when known) and ``attention/<task>`` (N,) float32, written atomically."""
    with publishing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(slide_id=slide_id, run=str(run.path.resolve()), model=run.config.model.name,
                       features=features, trained_features=run.features or "", n_folds=len(run.models),
                       software_version=__version__)
        if coords is not None:
            f.create_dataset("coords", data=coords.astype(np.int64))
        for task, values in attention.items():
            ds = f.create_dataset(f"attention/{task}", data=values.astype(np.float32))
            ds.attrs["kind"] = run.kinds[task]


def prediction_records(run: Run, slide_id: str, patient_id: str, scores: dict[str, float],
                       labels: dict[str, tuple[float, float]]) -> list[dict]:
    """``predictions.csv`` rows of one slide (fold empty); ``labels``: task -> (label, event)."""
    rows = []
    for task, kind in run.kinds.items():
        label, event = labels.get(task, (math.nan, math.nan))
        rows.append({"slide_id": slide_id, "patient_id": patient_id, "fold": None, "task": task,
                     "label": label, "score": scores[task], "event": event if kind == "survival" else None})
    return rows


def load_labels(run: Run, manifest: str | Path) -> Cohort:
    """The manifest as a cohort whose tasks are the run's tasks with label columns in it
    (a manifest without label columns just names the slides and patients)."""
    columns = set(read_table(manifest, []).columns)  # its problems are reported by load_manifest
    targets, survival = [], None
    for head in run.config.heads:
        if head.columns and all(c in columns for c in head.columns):
            if head.kind == "binary":
                targets.append(head.columns[0])
            else:
                survival = head.columns
    return load_manifest(manifest, targets=targets, survival=survival)


def _labels_of(cohort: Cohort, row: int) -> dict[str, tuple[float, float]]:
    out = {}
    for task in cohort.tasks:
        y = cohort.labels(task.name)[row]
        out[task.name] = (float(y[0]), float(y[1])) if task.kind == "survival" else (float(y), math.nan)
    return out


def _job(slide: SlideInput, advance, *, run: Run, out_dir: Path, features: str | None, patients: dict[str, str],
         labels: dict[str, dict], rows: list[dict]) -> Outcome:
    t0 = time.perf_counter()
    scores, n = predict_file(run, slide.slide_id, slide.path, out_dir, features)
    rows += prediction_records(run, slide.slide_id, patients.get(slide.slide_id, ""), scores,
                               labels.get(slide.slide_id, {}))
    advance(n)
    detail = ", ".join(f"{t} {v:.3f}" for t, v in scores.items())
    return Outcome(slide.slide_id, "done", n, time.perf_counter() - t0, detail)


def predict_cohort(run: Run, bags_dir: str | Path, out_dir: str | Path, *, manifest: str | Path | None = None,
                   features: str | None = None, console: Console | None = None) -> list[Outcome]:
    """Predict every slide of ``manifest`` (or every bag file in ``bags_dir``) and write
    ``out_dir/predictions.csv`` and ``out_dir/attention/<slide_id>.h5``.

    A bad or missing bag is a failed outcome; the others go on. ``predictions.csv`` holds the
    slides that succeeded, with labels from the manifest's columns when it has them."""
    bags_dir, out_dir = Path(bags_dir), Path(out_dir)
    if not bags_dir.is_dir():
        raise RunError(f"{bags_dir}: bags folder not found")
    patients: dict[str, str] = {}
    labels: dict[str, dict] = {}
    if manifest is not None:
        cohort = load_labels(run, manifest)
        table = cohort.table
        slides = []
        for row, slide_id in enumerate(table["slide_id"]):
            path = find_bag(bags_dir, slide_id) or bags_dir / f"{slide_id}.h5"  # a missing bag fails its job
            slides.append(SlideInput(slide_id, path))
            patients[slide_id] = table.at[row, "patient_id"]
            labels[slide_id] = _labels_of(cohort, row)
    else:
        slides = [SlideInput(s, p) for s, p in bag_files(bags_dir).items()]
        if not slides:
            raise RunError(f"{bags_dir}: no bag files (.h5, .pt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    job = functools.partial(_job, run=run, out_dir=out_dir, features=features, patients=patients, labels=labels,
                            rows=rows)
    outcomes = run_batch(slides, job, unit="instances", console=console, status=status_path(out_dir))
    order = {s.slide_id: i for i, s in enumerate(slides)}
    rows.sort(key=lambda r: order[r["slide_id"]])
    write_csv(pd.DataFrame(rows, columns=PREDICTION_COLUMNS), out_dir / "predictions.csv")
    return outcomes
