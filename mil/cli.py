"""The ``mil`` command line: ``train`` (cross-validation into a run folder), ``predict`` (a run's
fold models applied to bags) and ``evaluate`` (predictions scored against a manifest).

Bad input (manifest problems, degenerate data, bad bags, unknown options) prints a clear
message and exits 2 without a traceback; ``predict`` keeps going past a bad bag and exits 1.
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pathology import __version__
from pathology.batch import summary_table
from pathology.cli_exits import exit_if_failed
from pathology.logs import setup_logging

from .manifest import ManifestError, load_manifest
from .models import MODELS
from .train import SURVIVAL_LOSSES, TrainConfig, TrainProgress, train_cross_validation

log = logging.getLogger(__name__)

app = typer.Typer(help="Attention multiple-instance learning on feature bags.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ModelName = Enum("ModelName", {n: n for n in sorted(MODELS)}, type=str)
SurvivalLoss = Enum("SurvivalLoss", {n: n for n in SURVIVAL_LOSSES}, type=str)
DEFAULTS = TrainConfig()

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging with tracebacks.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and the results.")]
Targets = Annotated[list[str] | None, typer.Option("--target", "-t", help="Binary label column(s): repeat or "
                                                   "comma-separate (--target er,pr,her2).")]
Survival = Annotated[str | None, typer.Option(help="Survival columns TIME_COL,EVENT_COL (e.g. os_time,os_event).")]
Clinical = Annotated[Path | None, typer.Option(help="STAMP clinical table (one row per PATIENT); --manifest is "
                                                    "then STAMP's slide table (PATIENT, FILENAME).")]


class RichProgress(TrainProgress):
    """Progress bars over folds and epochs (on the stderr console), with the losses of the last epoch."""

    def __init__(self, console: Console):
        self.bars = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                             console=console)
        self.epochs_total = 0

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def start(self, n_folds: int, epochs: int) -> None:
        self.epochs_total = epochs
        self.folds = self.bars.add_task("folds", total=n_folds, detail="")
        self.epochs = self.bars.add_task("epochs", total=epochs, detail="")

    def start_fold(self, fold: int, n_train: int, n_val: int, n_test: int) -> None:
        self.bars.reset(self.epochs, total=self.epochs_total, description=f"fold {fold} epochs",
                        detail=f"{n_train} train / {n_val} val / {n_test} test slides")

    def end_epoch(self, fold: int, epoch: int, train_loss: float, val_loss: float, best: bool) -> None:
        self.bars.update(self.epochs, completed=epoch + 1,
                         detail=f"loss {train_loss:.4f}, val {val_loss:.4f}{' (best)' if best else ''}")

    def end_fold(self, fold: int, best_epoch: int, stopped_early: bool) -> None:
        self.bars.update(self.epochs, completed=self.epochs_total)
        self.bars.advance(self.folds)
        log.info("fold %d: best epoch %d%s", fold, best_epoch + 1, " (stopped early)" if stopped_early else "")


def metrics_table(tasks: dict, title: str = "Metrics") -> Table:
    """Task, metric, mean ± sd over folds, and the pooled value with its 95% CI."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("task", "left"), ("metric", "left"), ("folds: mean ± sd", "right"),
                          ("pooled (95% CI)", "right")):
        table.add_column(name, justify=justify)
    for task, summary in tasks.items():
        for i, (metric, m) in enumerate(summary["metrics"].items()):
            ci = m.get("ci95") or (None, None)
            pooled = _fmt(m.get("pooled"))
            if pooled != "n/a" and all(c is not None for c in ci):
                pooled += f" ({ci[0]:.3f}–{ci[1]:.3f})"
            spread = _fmt(m.get("mean")) + (f" ± {m['sd']:.3f}" if m.get("sd") is not None else "")
            table.add_row(f"{task} (n={summary['n']})" if i == 0 else "", metric, spread, pooled)
    return table


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def split_targets(values: list[str] | None) -> list[str]:
    """``["er,pr", "her2"]`` -> ``["er", "pr", "her2"]``."""
    return [t.strip() for v in values or [] for t in v.split(",") if t.strip()]


def split_survival(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--survival takes TIME_COL,EVENT_COL (two column names), got {value!r}")
    return parts[0], parts[1]


def fail(console: Console, exc: Exception) -> typer.Exit:
    """Print a bad-input error (every problem of a manifest, else one line) and return exit code 2."""
    text = str(exc) if isinstance(exc, ManifestError) else " ".join(str(exc).split())
    console.print(f"[bold red]error:[/] {text}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(2)


@app.command("version")
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command("train")
def train_command(
    manifest: Annotated[Path, typer.Option(help="Cohort manifest CSV (slide_id, patient_id, labels).")],
    bags: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 bags (or CLAM/TRIDENT feature files).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")],
    target: Targets = None,
    survival: Survival = None,
    model: Annotated[ModelName, typer.Option(help="MIL model from the registry.")] = ModelName(DEFAULTS.model),
    folds: Annotated[int, typer.Option(help="Cross-validation folds (patient-level; a fold/split column in the "
                                            "manifest takes precedence).")] = DEFAULTS.folds,
    seed: Annotated[int, typer.Option(help="Seed of folds, initialisation and bag order.")] = DEFAULTS.seed,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per fold.")] = DEFAULTS.epochs,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = DEFAULTS.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = DEFAULTS.weight_decay,
    dropout: Annotated[float, typer.Option(help="Dropout after the instance encoder.")] = DEFAULTS.dropout,
    hidden: Annotated[int, typer.Option(min=1, help="Width of the instance encoder.")] = DEFAULTS.hidden,
    batch_size: Annotated[int, typer.Option(min=1, help="Bags per optimizer step.")] = DEFAULTS.batch_size,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation loss before "
                                                      "stopping.")] = DEFAULTS.patience,
    max_instances: Annotated[int | None, typer.Option(min=1, help="Random subset of larger bags in training.")]
    = DEFAULTS.max_instances,
    in_memory: Annotated[bool, typer.Option("--in-memory", help="Read every bag once into RAM.")] = False,
    features: Annotated[str | None, typer.Option(help="Feature set in the bags (needed when they hold several).")]
    = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), or a torch device.")] = "auto",
    survival_loss: Annotated[SurvivalLoss, typer.Option(help="nll: discrete-time hazards; cox: partial "
                                                             "likelihood.")] = SurvivalLoss(DEFAULTS.survival_loss),
    clinical: Clinical = None,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples (of patients) for the 95% CIs.")]
    = DEFAULTS.n_bootstrap,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a complete run in --out.")] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Cross-validate a MIL model on a cohort and write the run folder (models, metrics, predictions, plots)."""
    console = setup_logging(verbose, quiet)
    try:
        targets, surv = split_targets(target), split_survival(survival)
        config = TrainConfig(model=model.value, targets=tuple(targets), survival=surv, folds=folds, seed=seed,
                             epochs=epochs, lr=lr, weight_decay=weight_decay, dropout=dropout, hidden=hidden,
                             batch_size=batch_size, patience=patience, max_instances=max_instances,
                             in_memory=in_memory, features=features, device=device,
                             survival_loss=survival_loss.value, n_bootstrap=bootstrap)
        if not targets and surv is None:
            raise ValueError("nothing to train: give at least one --target or --survival")
        if (out / "metrics.json").exists() and not overwrite:
            raise ValueError(f"{out} already holds a complete run; choose another --out or pass --overwrite")
        cohort = load_manifest(manifest, targets=targets, survival=surv, bags_dir=bags, features=features,
                               clinical=clinical)
        with RichProgress(console) as progress:
            result = train_cross_validation(cohort, config, out, progress)
    except ValueError as exc:  # ManifestError, SplitError, BagError: bad input
        raise fail(console, exc) from None
    Console().print(metrics_table(result["tasks"], title=f"{model.value}, {result['n_folds']} folds, "
                                                         f"{result['n_patients']} patients"))
    console.print(f"run written to {out}")


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run folder written by `mil train`.")],
    bags: Annotated[Path, typer.Option(help="Folder of bags to predict.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for predictions.csv and attention/.")],
    manifest: Annotated[Path | None, typer.Option(help="Slides to predict (default: every bag in --bags); its "
                                                       "label columns, when present, fill the labels.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature set to read (default: the run's).")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), or a torch device.")] = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Apply every fold model of a run to bags: mean scores in predictions.csv, mean attention per slide.

    A bad bag is reported and skipped; the exit code is 1 if any failed.
    """
    from .predict import load_run, predict_cohort

    console = setup_logging(verbose, quiet)
    try:
        run = load_run(model, device)
        outcomes = predict_cohort(run, bags, out, manifest=manifest, features=features, console=console)
    except ValueError as exc:  # RunError, ManifestError: bad input
        raise fail(console, exc) from None
    Console().print(summary_table(outcomes, unit="instances"))
    console.print(f"predictions written to {out / 'predictions.csv'}")
    exit_if_failed(outcomes)


@app.command("evaluate")
def evaluate_command(
    predictions: Annotated[Path, typer.Option(help="predictions.csv of `mil train` or `mil predict`.")],
    manifest: Annotated[Path, typer.Option(help="Manifest with the true labels (joined by slide_id).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and plots.")],
    target: Targets = None,
    survival: Survival = None,
    clinical: Clinical = None,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples (of patients) for the 95% CIs.")]
    = DEFAULTS.n_bootstrap,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score predictions against a manifest's labels: metrics.json, ROC and Kaplan-Meier plots.

    Without --target/--survival, every binary task in the predictions is evaluated.
    """
    from .evaluate import evaluate_file

    console = setup_logging(verbose, quiet)
    try:
        result = evaluate_file(predictions, manifest, out, targets=split_targets(target),
                               survival=split_survival(survival), clinical=clinical, n_boot=bootstrap, seed=seed)
    except ValueError as exc:
        raise fail(console, exc) from None
    Console().print(metrics_table(result["tasks"], title=f"{result['n_slides']} slides, "
                                                         f"{result['n_patients']} patients"))
    console.print(f"metrics written to {out / 'metrics.json'}")
