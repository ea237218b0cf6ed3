"""Cross-validated training of a MIL model on a cohort: the training recipe, out-of-fold
predictions, metrics and plots, all written to a run folder.

The recipe (README, "Training recipe"), per outer fold:

1. **Select** the number of epochs: a fresh model trains on the fold's inner-training patients
   and is scored on its inner-validation patients (~``val_fraction`` of them) after every
   epoch, until ``patience`` epochs bring no better validation loss; the epoch with the
   lowest validation loss is chosen.
2. **Refit** a fresh model on all of the fold's training patients (inner training and
   validation together) for the chosen number of epochs, and predict the test patients
   with it. ``refit=False`` keeps the selection model at its best epoch instead (the recipe
   of pathology-mil 0.1.0), which never sees the validation patients.

One bag per optimizer step (AdamW), as ABMIL, CLAM and most MIL papers train; a Cox head
takes :data:`mil.runconfig.COX_BATCH` bags per step, as its partial likelihood compares
bags. Input features are scaled with the training bags' median and inter-quartile range and
clipped (``scaling="robust"``: heavy-tailed features no longer squash the rest), or
standardized (``"standard"``). Losses are class-balanced; each kind's head, loss and score
are in :mod:`mil.tasks`. A survival NLL head starts at the training patients' baseline
hazard (the Kaplan-Meier estimate on its time bins), so a small cohort starts from it rather
than from hazards of one half. Clinical covariates are encoded per fold (:mod:`mil.covariates`)
and fused with the pooled slide embedding before the heads; a covariates-only model is fitted
on the same folds (:mod:`mil.baseline`) and reported beside the fused one. At the patient
level one bag pools all the slides of a patient. With the same seed, a CPU run gives the same
metrics (seeded torch, deterministic algorithms, seeded bag order and subsampling).

Run folder (docs/architecture.md, "Run folders"; written by :mod:`.runfolder`): ``config.json`` (schema
``mil-run/2``, :mod:`.runconfig`, which also holds :class:`TrainConfig`), ``metrics.json``,
``predictions.csv``, ``fold_<k>/model.safetensors``, the plots of each task, and what judges the
calls (:mod:`.trust`): ``ood.safetensors``, ``reliability_<task>.png``.
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

from . import covariates as C
from . import metrics as M
from .baseline import covariates_only, fit_linear
from .calibration import fold_temperatures, scaled
from .data import BagDataset
from .losses import cox_loss
from .models import Head, MILModel, create_model
from .runconfig import CONFIG_NAME, CovariateFit, TrainConfig
from .runconfig import SURVIVAL_LOSSES as SURVIVAL_LOSSES  # re-exported with TrainConfig for mil.cli.train
from .runfolder import (
    evaluate_predictions,
    prediction_columns,
    prediction_record,
    remove_run,
    run_config,
    save_weights,
    time_unit_note,
    write_csv,
    write_json,
    write_plots,
)
from .splits import Fold, make_folds
from .tasks import KINDS, HeadOptions
from .trust import trust_records

log = logging.getLogger(__name__)

ROBUST_CLIP = 5.0            # robust-scaled features are clipped to +-5 (IQR-based sd units)
SAMPLE_VALUES = 2 ** 22      # feature values sampled once for the robust scaling's quantiles (16 MB)


class TrainProgress:
    """Callbacks of a training run (no-ops here; the CLI draws progress bars with them)."""

    def start(self, n_folds: int, epochs: int) -> None: ...
    def start_fold(self, fold: int, n_train: int, n_val: int, n_test: int) -> None: ...
    def start_stage(self, fold: int, stage: str, epochs: int) -> None: ...
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


def head_options(config: TrainConfig) -> HeadOptions:
    return HeadOptions(survival_loss=config.survival_loss, survival_bins=config.survival_bins,
                       balance=config.class_balance)


def build_heads(cohort, config: TrainConfig) -> list[Head]:
    """One head per task, sized by its kind (:mod:`mil.tasks`)."""
    options = head_options(config)
    return [Head(t.name, KINDS[t.kind].n_outputs(t.n_classes, options)) for t in cohort.tasks]


class Objective:
    """The training loss of one fit: per-bag terms of every task's kind (fitted on the fit's
    training rows: class weights, survival bins, target scaling) and a Cox term over groups of bags."""

    def __init__(self, cohort, config: TrainConfig, train_rows: np.ndarray):
        self.tasks = list(cohort.tasks)
        self.options = head_options(config)
        self.fitted = {t.name: KINDS[t.kind].fit(cohort.labels(t.name)[train_rows], t.n_classes, self.options)
                       for t in self.tasks}

    @property
    def grouped(self) -> bool:
        """Whether part of the loss needs several bags together (Cox)."""
        return self.options.survival_loss == "cox" and any(t.kind == "survival" for t in self.tasks)

    @property
    def edges(self) -> dict[str, np.ndarray]:
        """task -> survival time-bin edges (NLL survival tasks)."""
        return {name: f.edges for name, f in self.fitted.items() if f.edges is not None}

    def bag_loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss terms computable from one bag (summed over tasks)."""
        total = torch.zeros((), device=next(iter(logits.values())).device)
        for task in self.tasks:
            out = logits[task.name].float().reshape(1, -1)
            term = KINDS[task.kind].loss(out, labels[task.name].reshape(1, -1).squeeze(-1) if task.kind != "survival"
                                         else labels[task.name].reshape(1, 2), self.fitted[task.name], self.options)
            if term is not None:
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

    def instance_labels(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The labels a model's auxiliary instance loss may use (CLAM, DSMIL): binary tasks only."""
        return {t.name: labels[t.name] for t in self.tasks if t.kind == "binary"}


@contextlib.contextmanager
def full_bags(dataset: BagDataset):
    """Evaluate on whole bags: lift the training-time instance subsampling for the duration."""
    saved, dataset.max_instances = dataset.max_instances, None
    try:
        yield dataset
    finally:
        dataset.max_instances = saved


@dataclass
class FeatureSample:
    """From one read of every bag: per-bag feature sums, sums of squares (rows, D) and instance
    counts (rows,), for exact standardization, and a seeded sample of instances (``values``,
    each from bag ``owner``), for the robust scaling's quantiles."""

    sums: np.ndarray
    squares: np.ndarray
    counts: np.ndarray
    values: np.ndarray
    owner: np.ndarray


def feature_moments(dataset: BagDataset, seed: int = 0) -> FeatureSample:
    """Read every bag once (this also stops a bag with NaN/inf features before the first fold
    trains, rather than in the middle of it). Every bag gives the sample the same number of
    instances (all of a smaller bag), about :data:`SAMPLE_VALUES` values in all."""
    n, d = len(dataset), dataset.dim
    per_bag = max(8, math.ceil(SAMPLE_VALUES / max(d, 1) / max(n, 1)))
    sums, squares, counts = np.zeros((n, d)), np.zeros((n, d)), np.zeros(n)
    values, owner = [], []
    with full_bags(dataset):
        for i in range(n):
            x = dataset[i]["x"].numpy()
            sums[i], squares[i], counts[i] = x.sum(0, dtype=np.float64), np.square(x, dtype=np.float64).sum(0), len(x)
            pick = np.random.default_rng([seed, i]).choice(len(x), min(per_bag, len(x)), replace=False)
            values.append(x[np.sort(pick)].astype(np.float32))
            owner.append(np.full(len(pick), i))
    return FeatureSample(sums, squares, counts, np.concatenate(values), np.concatenate(owner))


def fold_normalization(sample: FeatureSample, rows: np.ndarray, scaling: str = "standard"
                       ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(centre, scale, clip) of every feature over the instances of the bags ``rows``.

    ``standard``: mean and standard deviation, no clip. ``robust``: median and inter-quartile
    range / 1.349 (the sd of a normal feature) from the sample, clipped at :data:`ROBUST_CLIP`;
    a feature whose IQR is 0 (mostly one value) falls back to its standard deviation."""
    total = sample.counts[rows].sum()
    mean = sample.sums[rows].sum(0) / total
    std = np.sqrt(np.maximum(sample.squares[rows].sum(0) / total - mean ** 2, 0.0))
    if scaling == "standard":
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float(), None
    picked = sample.values[np.isin(sample.owner, rows)]
    q25, median, q75 = np.quantile(picked, [0.25, 0.5, 0.75], axis=0)
    spread = (q75 - q25) / 1.349
    spread = np.where(spread > 1e-6 * np.maximum(std, 1e-12), spread, std)
    return torch.from_numpy(median).float(), torch.from_numpy(spread).float(), ROBUST_CLIP


def run_epoch(model: MILModel, dataset: BagDataset, rows: np.ndarray, objective: Objective, optimizer,
              config: TrainConfig, device: torch.device, rng: np.random.Generator,
              covariates: torch.Tensor | None = None) -> float:
    """One training epoch over ``rows`` in a seeded random order; returns the mean loss per bag."""
    model.train()
    order = rng.permutation(rows)
    total, n = 0.0, 0
    step = config.step_bags
    for start in range(0, len(order), step):
        batch = order[start:start + step]
        optimizer.zero_grad(set_to_none=True)
        kept, risks, labels = [], {t.name: [] for t in objective.tasks}, []
        for row in batch:
            item = dataset[int(row)]
            with autocast(device):
                out = model(item["x"].to(device), objective.instance_labels(item["labels"]),
                            None if covariates is None else covariates[int(row)])
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
def forward_rows(model: MILModel, dataset: BagDataset, rows: np.ndarray, device: torch.device,
                 covariates: torch.Tensor | None = None):
    """Eval-mode outputs for ``rows`` on whole bags: (logits per row, labels per row)."""
    model.eval()
    logits, labels = [], []
    with full_bags(dataset):
        for row in rows:
            item = dataset[int(row)]
            with autocast(device):
                out = model(item["x"].to(device), None, None if covariates is None else covariates[int(row)])
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


class Trainer:
    """One model being trained on ``rows``, an epoch at a time: seeded by (seed, fold, stage,
    epoch), so a fit's result does not depend on which others ran beside it."""

    def __init__(self, cohort, config: TrainConfig, fold: Fold, stage: int, rows: np.ndarray, dataset: BagDataset,
                 heads: list[Head], device: torch.device, normalization, covariates: torch.Tensor | None):
        self.config, self.fold, self.stage, self.rows = config, fold, stage, rows
        self.dataset, self.device, self.covariates = dataset, device, covariates
        torch.manual_seed(config.seed * 1000 + fold.index if stage == 0 else
                          int(np.random.default_rng([config.seed, fold.index, stage]).integers(2 ** 31)))
        self.objective = Objective(cohort, config, rows)
        model = create_model(config.model, dataset.dim, heads, hidden=config.hidden, dropout=config.dropout,
                             n_covariates=0 if covariates is None else covariates.shape[1], **config.model_kwargs)
        model.set_input_normalization(*normalization)
        start_heads(model, cohort, self.objective, rows, covariates)
        self.model = model.to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def epoch(self, epoch: int) -> float:
        """Train one epoch; the mean training loss per bag."""
        self.dataset.set_epoch(epoch)
        rng = np.random.default_rng([self.config.seed, self.fold.index, epoch] + ([self.stage] if self.stage else []))
        return run_epoch(self.model, self.dataset, self.rows, self.objective, self.optimizer, self.config, self.device,
                         rng, self.covariates)

    def validate(self, rows: np.ndarray) -> float:
        return validation_loss(*forward_rows(self.model, self.dataset, rows, self.device, self.covariates),
                               self.objective)


def select_epochs(trainers: list[Trainer], splits: list[np.ndarray], config: TrainConfig, fold: Fold,
                  progress: TrainProgress) -> tuple[list[float], int, bool, dict | None]:
    """Train ``trainers`` side by side, each scored on its validation rows after every epoch,
    until ``patience`` epochs bring no lower mean validation loss (each split's loss weighted
    by its number of rows). Returns (the mean curve, the best epoch, whether it stopped early,
    the first trainer's weights at the best epoch)."""
    weights = np.array([len(v) for v in splits], float)
    best, best_epoch, stale, state, curve = math.inf, -1, 0, None, []
    for epoch in range(config.epochs):
        train_loss = float(np.mean([t.epoch(epoch) for t in trainers]))
        losses = np.array([t.validate(v) for t, v in zip(trainers, splits)])
        loss = float(np.average(losses, weights=weights)) if np.isfinite(losses).all() else math.nan
        curve.append(loss)
        improved = loss < best
        if improved:
            best, best_epoch, stale = loss, epoch, 0
            state = copy.deepcopy(trainers[0].model.state_dict()) if len(trainers) == 1 else None
        else:
            stale += 1
        progress.end_epoch(fold.index, epoch, train_loss, loss, improved)
        if stale >= config.patience:
            return curve, best_epoch, True, state
    return curve, best_epoch, False, state


@torch.no_grad()
def start_heads(model: MILModel, cohort, objective: Objective, rows: np.ndarray,
                covariates: torch.Tensor | None) -> None:
    """Where a fresh model's heads start: a survival NLL head at the baseline hazard of ``rows``;
    with covariates, every head exactly at the covariates-only model fitted on ``rows`` (its
    weights in the covariate heads, its bias as the output bias, the slide's output weights at
    zero), so training adds to what the covariates predict only what the slide carries."""
    linear = fit_linear(cohort, objective, rows, covariates) if covariates is not None else {}
    for i, task in enumerate(objective.tasks):
        layer = model.output_layer(i)
        start = objective.fitted[task.name].hazard_logits
        if task.name in linear:
            weight, start = linear[task.name]
            model.covariate_heads[i].weight.copy_(torch.from_numpy(weight.T))
            if layer is not None:
                layer.weight.zero_()
        if start is not None and layer is not None:
            layer.bias.copy_(torch.as_tensor(start, dtype=layer.bias.dtype))


def fold_covariates(cohort, rows: np.ndarray) -> tuple[tuple[CovariateFit, ...], torch.Tensor | None]:
    """The covariates' encodings fitted on ``rows`` and every row's encoded vector (None without covariates)."""
    if not cohort.covariates:
        return (), None
    fits = tuple(C.fit(cov.name, cov.kind, cohort.covariate_values(cov)[rows]) for cov in cohort.covariates)
    values = {cov.name: cohort.covariate_values(cov) for cov in cohort.covariates}
    return fits, torch.from_numpy(C.encode(fits, values))


def train_fold(cohort, config: TrainConfig, fold: Fold, dataset: BagDataset, heads: list[Head],
               device: torch.device, progress: TrainProgress, normalization,
               covariates: torch.Tensor | None = None) -> tuple[MILModel, Objective, dict]:
    """Train one fold by the recipe (module docstring); returns the final model, its objective
    and a record. ``normalization`` (centre, scale, clip of the training bags' features) scales
    the inputs; ``covariates`` holds every row's encoded covariates."""
    splits = list(fold.inner) if config.refit and fold.inner else [(fold.train, fold.val)]
    progress.start_stage(fold.index, "select" if config.refit else "train", config.epochs)
    trainers = [Trainer(cohort, config, fold, 0 if k == 0 else 10 + k, train, dataset, heads, device, normalization,
                        covariates) for k, (train, _) in enumerate(splits)]
    curve, best_epoch, stopped, state = select_epochs(trainers, [val for _, val in splits], config, fold, progress)
    record = {"fold": fold.index, "best_epoch": best_epoch,
              "best_val_loss": curve[best_epoch] if best_epoch >= 0 else math.nan, "epochs_run": len(curve),
              "stopped_early": stopped, "refit": config.refit, "inner_splits": len(splits),
              "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test)}
    if best_epoch < 0:
        log.warning("fold %d: the validation loss was never finite; using every epoch", fold.index)
        best_epoch = config.epochs - 1
    if config.refit:
        training = fold.training
        progress.start_stage(fold.index, "refit", best_epoch + 1)
        final = Trainer(cohort, config, fold, 1, training, dataset, heads, device, normalization, covariates)
        for epoch in range(best_epoch + 1):
            progress.end_epoch(fold.index, epoch, final.epoch(epoch), math.nan, False)
        record["n_refit"] = len(training)
    else:
        final = trainers[0]
        if state is not None:
            final.model.load_state_dict(state)
    progress.end_fold(fold.index, best_epoch, stopped)
    return final.model, final.objective, record


def prediction_rows(cohort, rows: np.ndarray, logits: list[dict], objective: Objective, fold: int | None) -> list[dict]:
    """``predictions.csv`` rows (one per case and task) from eval-mode logits; a case with an
    unknown label for a task keeps its row, with an empty label."""
    table = cohort.table
    out = []
    for row, lg in zip(rows, logits):
        for task in cohort.tasks:
            score = KINDS[task.kind].score(lg[task.name], objective.fitted[task.name], objective.options)
            out.append(prediction_record(task, str(table.at[row, "slide_id"]), str(table.at[row, "patient_id"]),
                                         fold, cohort.labels(task.name)[row], score))
    return out


@dataclass
class FoldResult:
    """What one fold returns to the run: its out-of-fold predictions, training record, survival
    bin cuts, what was fitted on its training cases (regression targets' mean and sd, covariate
    encodings), and the covariates-only model's predictions (its weights are already in
    ``fold_<k>/model.safetensors``)."""

    rows: list[dict]
    record: dict
    cuts: dict[str, list[float]]
    targets: dict[str, tuple[float, float]]
    covariates: tuple[CovariateFit, ...]
    baseline: list[dict]


def fit_fold(cohort, config: TrainConfig, fold: Fold, heads: list[Head], moments: FeatureSample, out_dir: Path,
             dataset: BagDataset | None = None, progress: TrainProgress | None = None) -> FoldResult:
    """Train one fold, save its weights and predict its test cases. Self-contained (it opens the
    bags itself unless given ``dataset``), so folds can run in parallel as Ray tasks; every random
    draw is seeded by (seed, fold, epoch), so a fold's result does not depend on which others ran."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dataset = dataset or BagDataset(cohort, None, features=config.features, max_instances=config.max_instances,
                                    in_memory=config.in_memory, seed=config.seed)
    training = fold.training
    fits, covariates = fold_covariates(cohort, training)
    with deterministic(device):
        model, objective, record = train_fold(cohort, config, fold, dataset, heads, device, progress or TrainProgress(),
                                              fold_normalization(moments, training, config.scaling), covariates)
        save_weights(model, out_dir / f"fold_{fold.index}" / "model.safetensors", config, fold.index)
        logits, _ = forward_rows(model, dataset, fold.test, device, covariates)
        if config.calibration == "temperature":  # fitted on the inner validation slides, applied to the test ones
            temperatures = fold_temperatures(*forward_rows(model, dataset, fold.val, device, covariates),
                                             {t.name: t.kind for t in cohort.tasks}, fold.index)
            logits, record["temperature"] = [scaled(lg, temperatures) for lg in logits], temperatures
        baseline = covariates_only(cohort, objective, training, fold.test, covariates, fold.index) \
            if covariates is not None else []
    rows = prediction_rows(cohort, fold.test, logits, objective, fold.index)
    cuts = {f"{name}/fold_{fold.index}": e[1:-1].tolist() for name, e in objective.edges.items()}
    targets = {t.name: (objective.fitted[t.name].mean, objective.fitted[t.name].sd) for t in cohort.tasks
               if t.kind == "regression"}
    return FoldResult(rows, record, cuts, targets, fits, baseline)


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
    (the content of ``metrics.json``). Folds run one after another, or in parallel on Ray. At
    ``config.level == "patient"`` the cohort is pooled per patient first."""
    progress = progress or TrainProgress()
    out_dir = Path(out_dir)
    if ray_folds is not None and not config.threads:  # recorded: a sequential rerun with these threads matches
        config = replace(config, threads=max(1, int(ray_folds.cpus)))
    if not cohort.tasks:
        raise InputError("nothing to train: give at least one --target or --survival")
    if config.level == "patient":
        cohort = cohort.by_patient()
    folds = make_folds(cohort, config.folds, seed=config.seed, val_fraction=config.val_fraction,
                       inner_folds=config.inner_folds if config.refit else 1)
    dataset = BagDataset(cohort, None, features=config.features, max_instances=config.max_instances,
                         in_memory=config.in_memory and ray_folds is None, seed=config.seed)
    moments = feature_moments(dataset, config.seed)
    heads = build_heads(cohort, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if remove_run(out_dir):  # before training: an interrupted replacement must not look complete
        log.warning("%s: replacing the run in this folder", out_dir)
    tasks = {t.name: t for t in cohort.tasks}
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
    run = run_config(cohort, config, dataset, heads, folds, cuts, results)
    columns = prediction_columns(tasks.values())
    predictions = pd.DataFrame(rows, columns=columns)
    # each bag's mean embedding, for the out-of-distribution reference
    trust, trust_metrics = trust_records(cohort, config, dataset.paths, moments.sums / moments.counts[:, None], folds,
                                         records, predictions, out_dir)
    replace(run, **trust).write(out_dir / CONFIG_NAME)
    write_csv(predictions, out_dir / "predictions.csv")
    tasks_metrics = evaluate_predictions(predictions, tasks, n_boot=config.n_bootstrap, seed=config.seed,
                                         threshold=config.threshold)
    write_plots(out_dir, predictions, tasks, tasks_metrics, time_unit=time_unit_note(config))
    result = {"model": config.model, "n_folds": len(folds), "level": cohort.level,
              "n_slides": int(len(cohort.table) if cohort.level == "slide" else sum(map(len, cohort.table["slides"]))),
              "n_patients": int(np.unique(cohort.patients()).size), "tasks": tasks_metrics,
              "bootstrap": {"n": config.n_bootstrap, "seed": config.seed, "unit": "patient", "level": 0.95},
              "training": records, **trust_metrics}
    if cohort.covariates:
        baseline = pd.DataFrame([row for r in results for row in r.baseline], columns=columns)
        write_csv(baseline, out_dir / "predictions_covariates_only.csv")
        result["covariates"] = [c.name for c in cohort.covariates]
        result["covariates_only"] = evaluate_predictions(baseline, tasks, n_boot=config.n_bootstrap, seed=config.seed,
                                                         threshold=config.threshold)
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
