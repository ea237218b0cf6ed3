"""``mil train``: patient-level cross-validation of a MIL model into a run folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pathology.cli.common import (
    Address,
    Device,
    Executor,
    ExecutorName,
    Out,
    Quiet,
    Verbose,
    renamed,
    reported,
    setup_logging,
)
from pathology.errors import InputError

from ..calibration import METHODS as CALIBRATIONS
from ..console import RichProgress, metrics_table
from ..manifest import load_manifest
from ..models import MODELS
from ..runconfig import LEVELS, SCALINGS
from ..train import SURVIVAL_LOSSES, RayFolds, TrainConfig, train_cross_validation
from ..trust import trust_lines
from .options import (
    Clinical,
    Covariates,
    Kinds,
    Survival,
    Targets,
    split_covariates,
    split_kinds,
    split_survival,
    split_targets,
)

Arch = Enum("Arch", {n: n for n in sorted(MODELS)}, type=str)
Calibration = Enum("Calibration", {n: n for n in CALIBRATIONS}, type=str)
SurvivalLoss = Enum("SurvivalLoss", {n: n for n in SURVIVAL_LOSSES}, type=str)
Level = Enum("Level", {n: n for n in LEVELS}, type=str)
Scaling = Enum("Scaling", {n: n for n in SCALINGS}, type=str)
DEFAULTS = TrainConfig()


def train_command(
    manifest: Annotated[Path, typer.Option(help="Cohort manifest CSV (slide_id, patient_id, labels).")],
    bags: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 bags (or CLAM/TRIDENT feature files).")],
    out: Out("Run folder to write."),
    target: Targets = None,
    survival: Survival = None,
    kind: Kinds = None,
    covariates: Covariates = None,
    level: Annotated[Level, typer.Option(help="slide: one bag per slide (splits still keep a patient's slides "
                                              "together); patient: one bag pools all of a patient's slides.")]
    = Level[DEFAULTS.level],
    arch: Annotated[Arch, typer.Option(help="MIL architecture from the registry.")] = Arch[DEFAULTS.model],
    folds: Annotated[int, typer.Option(help="Cross-validation folds (patient-level; a fold/split column in the "
                                            "manifest takes precedence).")] = DEFAULTS.folds,
    seed: Annotated[int, typer.Option(help="Seed of folds, initialisation and bag order.")] = DEFAULTS.seed,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs of the selection fit (the refit runs the "
                                                    "chosen number).")] = DEFAULTS.epochs,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = DEFAULTS.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = DEFAULTS.weight_decay,
    dropout: Annotated[float, typer.Option(help="Dropout after the instance encoder.")] = DEFAULTS.dropout,
    hidden: Annotated[int, typer.Option(min=1, help="Width of the instance encoder.")] = DEFAULTS.hidden,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Bags per optimizer step (default: 1; 16 with a "
                                                               "Cox head).")] = DEFAULTS.batch_size,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation loss before "
                                                      "stopping.")] = DEFAULTS.patience,
    refit: Annotated[bool, typer.Option(help="Refit on all training bags for the epoch count chosen on 3 inner "
                                             "splits (--no-refit: keep the early-stopped model of one split).")]
    = DEFAULTS.refit,
    scaling: Annotated[Scaling, typer.Option(help="Input features: robust (median/IQR, clipped) or standard "
                                                  "(mean/sd), fitted on each fold's training bags.")]
    = Scaling[DEFAULTS.scaling],
    balance: Annotated[bool, typer.Option(help="Class-balanced losses (binary, multi-class).")]
    = DEFAULTS.class_balance,
    max_instances: Annotated[int | None, typer.Option(min=1, help="Random subset of larger bags in training.")]
    = DEFAULTS.max_instances,
    in_memory: Annotated[bool, typer.Option("--in-memory", help="Read every bag once into RAM.")] = False,
    features: Annotated[str | None, typer.Option(help="Feature set in the bags (needed when they hold several).")]
    = None,
    device: Device = "auto",
    survival_loss: Annotated[SurvivalLoss, typer.Option(help="nll: discrete-time hazards; cox: partial "
                                                             "likelihood.")] = SurvivalLoss[DEFAULTS.survival_loss],
    clinical: Clinical = None,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples (of patients) for the 95% CIs.")]
    = DEFAULTS.n_bootstrap,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a complete run in --out.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads per fold (default: all cores; "
                                                            "with --executor ray: --cpus-per-fold).")] = None,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_fold: Annotated[float, typer.Option(min=0.1, help="Ray: CPUs per fold task (its torch threads).")]
    = 1.0,
    gpus_per_fold: Annotated[float, typer.Option(min=0.0, help="Ray: GPUs per fold task (fractions share a "
                                                               "GPU).")] = 0.0,
    calibration: Annotated[Calibration, typer.Option(help="temperature (with --no-refit): fit a temperature per task "
                                                          "and fold on the inner validation slides; applied at "
                                                          "prediction.")]
    = Calibration[DEFAULTS.calibration],
    cohort_name: Annotated[str | None, typer.Option(help="The cohort's name on the model card (default: the "
                                                         "manifest's folder).")] = None,
    synthetic: Annotated[bool | None, typer.Option("--synthetic/--real", help="Whether the slides are synthetic "
                                                   "(default: synthetic when pathology synth-cohort's cohort.json "
                                                   "is beside the manifest); a synthetic model's results say "
                                                   "so.")] = None,
    intended_use: Annotated[str, typer.Option(help="What the model is for, on its model card.")] = "",
    ood_alpha: Annotated[float, typer.Option(min=0.001, max=0.5, help="Out-of-distribution threshold: the share "
                                                                     "of slides like the training ones expected to "
                                                                     "be flagged.")] = DEFAULTS.ood_alpha,
    old_model: Annotated[Arch | None, typer.Option("--model", hidden=True, help="Renamed --arch "
                                                                                "(--model is a run folder).")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Cross-validate a MIL model on a cohort and write the run folder (models, metrics, predictions, plots)."""
    console = setup_logging(verbose, quiet)
    arch = renamed(old_model, arch, "mil train --model", "--arch")
    with reported(console):
        targets, surv = split_targets(target), split_survival(survival)
        kinds, covs = split_kinds(kind), split_covariates(covariates)
        config = TrainConfig(model=arch.value, targets=tuple(targets), survival=surv, folds=folds, seed=seed,
                             epochs=epochs, lr=lr, weight_decay=weight_decay, dropout=dropout, hidden=hidden,
                             batch_size=batch_size, patience=patience, max_instances=max_instances,
                             in_memory=in_memory, features=features, device=device,
                             survival_loss=survival_loss.value, n_bootstrap=bootstrap, threads=threads,
                             kinds=kinds, covariates=tuple(covs), level=level.value, refit=refit,
                             scaling=scaling.value, class_balance=balance,
                             calibration=calibration.value, cohort_name=cohort_name, synthetic=synthetic,
                             intended_use=intended_use, ood_alpha=ood_alpha)
        ray_folds = None if executor.value == "local" else RayFolds(address, cpus_per_fold, gpus_per_fold)
        if not targets and surv is None:
            raise InputError("nothing to train: give at least one --target or --survival")
        if (out / "metrics.json").exists() and not overwrite:
            raise InputError(f"{out} already holds a complete run; choose another --out or pass --overwrite")
        cohort = load_manifest(manifest, targets=targets, survival=surv, bags_dir=bags, features=features,
                               clinical=clinical, kinds=kinds, covariates=covs)
        with RichProgress(console) as progress:
            result = train_cross_validation(cohort, config, out, progress, ray_folds=ray_folds)
    level_note = ", patient level" if result["level"] == "patient" else ""
    Console().print(metrics_table(result["tasks"], title=f"{arch.value}, {result['n_folds']} folds, "
                                                         f"{result['n_patients']} patients{level_note}"))
    if "covariates_only" in result:
        Console().print(metrics_table(result["covariates_only"], title=f"covariates only ({', '.join(covs)}), "
                                                                       "same folds: what the slide adds is the "
                                                                       "difference"))
    for line in trust_lines(result):
        console.print(line, highlight=False)
    console.print(f"run written to {out}")
