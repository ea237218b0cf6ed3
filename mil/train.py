"""Cross-validated training of a MIL model on a cohort: one bag per step, early stopping,
out-of-fold predictions, metrics and plots, all written to a run folder.

Each fold trains a fresh model on its training patients, stops early on the validation
loss of its inner validation patients (best-epoch weights restored), and predicts its test
patients. Gradients are accumulated over ``batch_size`` bags (the Cox loss needs several
bags at once). Binary tasks use BCE with a class-balanced ``pos_weight`` from the training
fold; survival uses the discrete-time NLL over 4 time bins at the training fold's event-time
quantiles (default) or the Cox partial likelihood. With the same seed, a CPU run gives the
same metrics (seeded torch, deterministic algorithms, seeded bag order and subsampling).

Run folder (docs/architecture.md, "Run folders"; written by :mod:`.runfolder`): ``config.json`` (schema
``mil-run/1``, :mod:`.runconfig`, which also holds :class:`TrainConfig`), ``metrics.json``,
``predictions.csv``, ``fold_<k>/model.safetensors``, ``roc_<task>.png``, ``km_<task>.png``, and what
judges the calls (:mod:`.trust`): ``ood.safetensors``, ``reliability_<task>.png``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathology.errors import InputError
from pathology.executors.ray_cluster import RayExecutor

from . import metrics as M
from .calibration import fold_temperatures, scaled
from .data import BagDataset
from .losses import binary_loss, cox_loss, nll_survival_loss, risk_from_hazards, survival_bins, time_to_bin
from .models import Head, MILModel, create_model
from .runconfig import CONFIG_NAME, TrainConfig
from .runconfig import SURVIVAL_LOSSES as SURVIVAL_LOSSES  # re-exported with TrainConfig for mil.cli.train
from .runfolder import (
    PREDICTION_COLUMNS,
    evaluate_predictions,
    remove_run,
    run_config,
    save_weights,
    time_unit_note,
    write_csv,
    write_json,
    write_plots,
)
from .splits import Fold, make_folds
from .trust import trust_records

log = logging.getLogger(__name__)


class TrainProgress:
    """Callbacks of a training run (no-ops here; the CLI draws progress bars with them)."""

    def start(self, n_folds: int, epochs: int) -> None: ...
    def start_fold(self, fold: int, n_train: int, n_val: int, n_test: int) -> None: ...
    def end_epoch(self, fold: int, epoch: int, train_loss: float, val_loss: float, best: bool) -> None: ...
    def end_fold(self, fold: int, best_epoch: int, stopped_early: bool) -> None: ...


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic torch algorithms for the duration (warn-only off CPU, where some kernels have none)."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA only; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_heads(cohort, config: TrainConfig) -> list[Head]:
    """One head per task: a logit for binary tasks, hazard logits (or one Cox risk) for survival."""
    heads = []
    for task in cohort.tasks:
        if task.kind == "binary":
            heads.append(Head(task.name, 1))
        else:
            heads.append(Head(task.name, config.survival_bins if config.survival_loss == "nll" else 1))
    return heads


def risk_score(logits: torch.Tensor, survival_loss: str) -> torch.Tensor:
    """Risk (higher = worse) of a survival head's output."""
    return risk_from_hazards(logits) if survival_loss == "nll" else logits[..., 0]


class Objective:
    """The training loss of one fold: per-bag BCE / discrete-time NLL terms and a Cox term over groups of bags."""

    def __init__(self, cohort, config: TrainConfig, train_rows: np.ndarray):
        self.tasks = list(cohort.tasks)
        self.survival_loss = config.survival_loss
        self.pos_weight: dict[str, float | None] = {}
        self.edges: dict[str, np.ndarray] = {}
        for task in self.tasks:
            y = cohort.labels(task.name)[train_rows]
            if task.kind == "binary":
                known = y[np.isfinite(y)]
                n_pos, n_neg = int((known == 1).sum()), int((known == 0).sum())
                self.pos_weight[task.name] = n_neg / n_pos if n_pos and n_neg else None
            elif config.survival_loss == "nll":
                self.edges[task.name] = survival_bins(y[:, 0], y[:, 1], config.survival_bins)

    @property
    def grouped(self) -> bool:
        """Whether part of the loss needs several bags together (Cox)."""
        return self.survival_loss == "cox" and any(t.kind == "survival" for t in self.tasks)

    def bag_loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss terms computable from one bag (summed over tasks)."""
        total = torch.zeros((), device=next(iter(logits.values())).device)
        for task in self.tasks:
            out, y = logits[task.name].float(), labels[task.name]
            if task.kind == "binary":
                term = binary_loss(out.reshape(1), y.reshape(1).to(out.device), self.pos_weight[task.name])
            elif self.survival_loss == "nll":
                time, event = float(y[0]), float(y[1])
                if math.isnan(time) or math.isnan(event):
                    term = out.sum() * 0.0
                else:
                    b = torch.tensor([int(time_to_bin(np.array([time]), self.edges[task.name])[0])], device=out.device)
                    term = nll_survival_loss(out.reshape(1, -1), b, torch.tensor([event], device=out.device))
            else:
                continue
            total = total + term
        return total

    def group_loss(self, risks: dict[str, list[torch.Tensor]],
                   labels: list[dict[str, torch.Tensor]]) -> torch.Tensor | None:
        """The Cox term over a group of bags (None without a Cox head)."""
        if not self.grouped:
            return None
        total = None
        for task in self.tasks:
            if task.kind != "survival":
                continue
            r = torch.stack(risks[task.name])
            y = torch.stack([lab[task.name] for lab in labels]).to(r.device)
            term = cox_loss(r, y[:, 0], y[:, 1])
            total = term if total is None else total + term
        return total


@contextlib.contextmanager
def full_bags(dataset: BagDataset):
    """Evaluate on whole bags: lift the training-time instance subsampling for the duration."""
    saved, dataset.max_instances = dataset.max_instances, None
    try:
        yield dataset
    finally:
        dataset.max_instances = saved


def feature_moments(dataset: BagDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bag feature sums, sums of squares (rows, D) and instance counts (rows,), from one
    read of every bag; this also stops a bag with NaN/inf features before the first fold trains
    rather than in the middle of it."""
    n, d = len(dataset), dataset.dim
    sums, squares, counts = np.zeros((n, d)), np.zeros((n, d)), np.zeros(n)
    with full_bags(dataset):
        for i in range(n):
            x = dataset[i]["x"].double().numpy()
            sums[i], squares[i], counts[i] = x.sum(0), np.square(x).sum(0), len(x)
    return sums, squares, counts


def fold_normalization(moments: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every feature over the instances of the bags ``rows``."""
    sums, squares, counts = moments
    total = counts[rows].sum()
    mean = sums[rows].sum(0) / total
    std = np.sqrt(np.maximum(squares[rows].sum(0) / total - mean ** 2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def run_epoch(model: MILModel, dataset: BagDataset, rows: np.ndarray, objective: Objective, optimizer,
              config: TrainConfig, device: torch.device, rng: np.random.Generator) -> float:
    """One training epoch over ``rows`` in a seeded random order; returns the mean loss per bag."""
    model.train()
    order = rng.permutation(rows)
    total, n = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        optimizer.zero_grad(set_to_none=True)
        kept, risks, labels = [], {t.name: [] for t in objective.tasks}, []
        for row in batch:
            item = dataset[int(row)]
            with autocast(device):
                out = model(item["x"].to(device), item["labels"])
            loss = objective.bag_loss(out.logits, item["labels"]) + out.instance_loss.float()
            if objective.grouped:
                kept.append(loss)
                labels.append(item["labels"])
                for name in risks:
                    if name in out.logits:
                        risks[name].append(out.logits[name].float().reshape(-1)[0])
            elif loss.requires_grad:
                (loss / len(batch)).backward()
            total += float(loss.detach())
            n += 1
        if objective.grouped:
            group = objective.group_loss(risks, labels)
            loss = torch.stack(kept).mean() + group
            if loss.requires_grad:
                loss.backward()
            total += float(group.detach()) * len(batch)
        optimizer.step()
    return total / max(n, 1)


@torch.no_grad()
def forward_rows(model: MILModel, dataset: BagDataset, rows: np.ndarray, device: torch.device):
    """Eval-mode outputs for ``rows`` on whole bags: (logits per row, labels per row)."""
    model.eval()
    logits, labels = [], []
    with full_bags(dataset):
        for row in rows:
            item = dataset[int(row)]
            with autocast(device):
                out = model(item["x"].to(device))
            logits.append({k: v.float().cpu() for k, v in out.logits.items()})
            labels.append(item["labels"])
    return logits, labels


def validation_loss(logits: list[dict], labels: list[dict], objective: Objective) -> float:
    """The training objective on validation bags (Cox over all of them at once)."""
    if not logits:
        return math.nan
    with torch.no_grad():
        per_bag = [float(objective.bag_loss(lg, lab)) for lg, lab in zip(logits, labels)]
        loss = float(np.mean(per_bag))
        if objective.grouped:
            risks = {t.name: [lg[t.name].reshape(-1)[0] for lg in logits] for t in objective.tasks
                     if t.kind == "survival"}
            loss += float(objective.group_loss(risks, labels))
    return loss


def train_fold(cohort, config: TrainConfig, fold: Fold, dataset: BagDataset, heads: list[Head],
               device: torch.device, progress: TrainProgress,
               normalization: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[MILModel, Objective, dict]:
    """Train one fold with early stopping; returns the best-epoch model, its objective and a record.

    ``normalization`` (mean, std of the training bags' features) standardizes the inputs: encoder
    features differ in scale by orders of magnitude, and unscaled ones train poorly."""
    torch.manual_seed(config.seed * 1000 + fold.index)
    objective = Objective(cohort, config, fold.train)
    model = create_model(config.model, dataset.dim, heads, hidden=config.hidden, dropout=config.dropout,
                         **config.model_kwargs)
    if normalization is not None:
        model.set_input_normalization(*normalization)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best = (math.inf, -1, None)
    stale = 0
    for epoch in range(config.epochs):
        dataset.set_epoch(epoch)
        rng = np.random.default_rng([config.seed, fold.index, epoch])
        train_loss = run_epoch(model, dataset, fold.train, objective, optimizer, config, device, rng)
        val_loss = validation_loss(*forward_rows(model, dataset, fold.val, device), objective)
        improved = val_loss < best[0]
        if improved:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
            stale = 0
        else:
            stale += 1
        progress.end_epoch(fold.index, epoch, train_loss, val_loss, improved)
        if stale >= config.patience:
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    else:
        log.warning("fold %d: the validation loss was never finite; keeping the last epoch's weights", fold.index)
    record = {"fold": fold.index, "best_epoch": best[1], "best_val_loss": best[0], "epochs_run": epoch + 1,
              "stopped_early": stale >= config.patience, "n_train": len(fold.train), "n_val": len(fold.val),
              "n_test": len(fold.test)}
    progress.end_fold(fold.index, best[1], record["stopped_early"])
    return model, objective, record


def prediction_rows(cohort, rows: np.ndarray, logits: list[dict], config: TrainConfig, fold: int | None) -> list[dict]:
    """``predictions.csv`` rows (one per slide and task) from eval-mode logits.

    A slide with an unknown label for a task keeps its row, with an empty label."""
    table = cohort.table
    out = []
    for row, lg in zip(rows, logits):
        for task in cohort.tasks:
            y = cohort.labels(task.name)[row]
            record = {"slide_id": table.at[row, "slide_id"], "patient_id": table.at[row, "patient_id"],
                      "fold": fold, "task": task.name}
            if task.kind == "binary":
                record.update(label=float(y), score=float(torch.sigmoid(lg[task.name]).reshape(-1)[0]), event=None)
            else:
                record.update(label=float(y[0]), event=float(y[1]),
                              score=float(risk_score(lg[task.name], config.survival_loss).reshape(-1)[0]))
            out.append(record)
    return out


@dataclass
class FoldResult:
    """What one fold returns to the run: its out-of-fold predictions, training record and
    survival bin cuts (its weights are already in ``fold_<k>/model.safetensors``)."""

    rows: list[dict]
    record: dict
    cuts: dict[str, list[float]]


def fit_fold(cohort, config: TrainConfig, fold: Fold, heads: list[Head], moments, out_dir: Path,
             dataset: BagDataset | None = None, progress: TrainProgress | None = None) -> FoldResult:
    """Train one fold, save its weights and predict its test slides. Self-contained (it opens the
    bags itself unless given ``dataset``), so folds can run in parallel as Ray tasks; every random
    draw is seeded by (seed, fold, epoch), so a fold's result does not depend on which others ran."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dataset = dataset or BagDataset(cohort, None, features=config.features, max_instances=config.max_instances,
                                    in_memory=config.in_memory, seed=config.seed)
    with deterministic(device):
        model, objective, record = train_fold(cohort, config, fold, dataset, heads, device, progress or TrainProgress(),
                                              fold_normalization(moments, fold.train))
        save_weights(model, out_dir / f"fold_{fold.index}" / "model.safetensors", config, fold.index)
        logits, _ = forward_rows(model, dataset, fold.test, device)
        if config.calibration == "temperature":  # fitted on the inner validation slides, applied to the test ones
            temperatures = fold_temperatures(*forward_rows(model, dataset, fold.val, device),
                                             {t.name: t.kind for t in cohort.tasks}, fold.index)
            logits, record["temperature"] = [scaled(lg, temperatures) for lg in logits], temperatures
    rows = prediction_rows(cohort, fold.test, logits, config, fold.index)
    cuts = {f"{name}/fold_{fold.index}": e[1:-1].tolist() for name, e in objective.edges.items()}
    return FoldResult(rows, record, cuts)


@dataclass(frozen=True)
class RayFolds:
    """Folds as Ray tasks (``mil train --executor ray``): each with ``cpus`` CPUs (its torch
    threads) and ``gpus`` GPUs (fractions allowed), on the cluster at ``address`` or a local one."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0


def train_cross_validation(cohort, config: TrainConfig, out_dir: str | Path,
                           progress: TrainProgress | None = None, ray_folds: RayFolds | None = None) -> dict:
    """Cross-validate ``config.model`` on ``cohort`` and write the run folder; returns the metrics
    (the content of ``metrics.json``). Folds run one after another, or in parallel on Ray."""
    progress = progress or TrainProgress()
    out_dir = Path(out_dir)
    if ray_folds is not None and not config.threads:  # recorded: a sequential rerun with these threads matches
        config = replace(config, threads=max(1, int(ray_folds.cpus)))
    if not cohort.tasks:
        raise InputError("nothing to train: give at least one --target or --survival")
    folds = make_folds(cohort, config.folds, seed=config.seed, val_fraction=config.val_fraction)
    dataset = BagDataset(cohort, None, features=config.features, max_instances=config.max_instances,
                         in_memory=config.in_memory and ray_folds is None, seed=config.seed)
    moments = feature_moments(dataset)
    heads = build_heads(cohort, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if remove_run(out_dir):  # before training: an interrupted replacement must not look complete
        log.warning("%s: replacing the run in this folder", out_dir)
    kinds = {t.name: t.kind for t in cohort.tasks}
    progress.start(len(folds), config.epochs)
    if ray_folds is None:
        results = []
        for fold in folds:
            progress.start_fold(fold.index, len(fold.train), len(fold.val), len(fold.test))
            results.append(fit_fold(cohort, config, fold, heads, moments, out_dir, dataset, progress))
    else:
        results = _folds_on_ray(ray_folds, cohort, config, folds, heads, moments, out_dir, progress)
    records, rows, cuts = [r.record for r in results], [row for r in results for row in r.rows], {}
    for r in results:
        cuts.update(r.cuts)
    run = run_config(cohort, config, dataset, heads, folds, cuts)
    predictions = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    sums, _, counts = moments   # each bag's mean embedding, for the out-of-distribution reference
    trust, trust_metrics = trust_records(cohort, config, dataset.paths, sums / counts[:, None], folds, records,
                                         predictions, out_dir)
    replace(run, **trust).write(out_dir / CONFIG_NAME)
    write_csv(predictions, out_dir / "predictions.csv")
    tasks_metrics = evaluate_predictions(predictions, kinds, n_boot=config.n_bootstrap, seed=config.seed,
                                         threshold=config.threshold)
    write_plots(out_dir, predictions, kinds, tasks_metrics, time_unit=time_unit_note(config))
    result = {"model": config.model, "n_folds": len(folds), "n_slides": len(cohort.table),
              "n_patients": int(np.unique(cohort.patients()).size), "tasks": tasks_metrics,
              "bootstrap": {"n": config.n_bootstrap, "seed": config.seed, "unit": "patient", "level": 0.95},
              "training": records, **trust_metrics}
    result = M.json_safe(result)
    write_json(out_dir / "metrics.json", result)  # last: its presence means the run is complete
    return result


def _folds_on_ray(ray_folds: RayFolds, cohort, config: TrainConfig, folds: list[Fold], heads, moments,
                  out_dir: Path, progress: TrainProgress) -> list[FoldResult]:
    """Every fold as a Ray task; results in fold order. A worker that dies is retried; a fold that
    fails with a user error (a degenerate split) fails the run as it would sequentially."""
    ray = RayExecutor(address=ray_folds.address).connect()
    task = ray.remote(fit_fold).options(num_cpus=ray_folds.cpus, num_gpus=ray_folds.gpus, max_retries=3)
    pending = {task.remote(cohort, config, fold, heads, moments, out_dir): fold for fold in folds}
    results: dict[int, FoldResult] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        fold = pending.pop(ready[0])
        try:
            results[fold.index] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None  # the fold's own error, as a sequential run raises it
        record = results[fold.index].record
        progress.end_fold(fold.index, record["best_epoch"], record["stopped_early"])
    return [results[f.index] for f in folds]
