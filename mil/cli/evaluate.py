"""``mil evaluate``: predictions scored against a manifest's labels (and ``mil version``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pathology import __version__
from pathology.cli.common import Out, Quiet, Verbose, reported, setup_logging

from ..console import metrics_table
from ..evaluate import evaluate_file
from ..metrics import N_BOOTSTRAP
from .options import Clinical, Kinds, Survival, Targets, split_kinds, split_survival, split_targets


def evaluate_command(
    predictions: Annotated[Path, typer.Option(help="predictions.csv of `mil train` or `mil predict`.")],
    manifest: Annotated[Path, typer.Option(help="Manifest with the true labels (joined by slide_id).")],
    out: Out("Folder for metrics.json and plots."),
    target: Targets = None,
    survival: Survival = None,
    kind: Kinds = None,
    clinical: Clinical = None,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples (of patients) for the 95% CIs.")]
    = N_BOOTSTRAP,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score predictions against a manifest's labels: metrics.json, ROC and Kaplan-Meier plots.

    Without --target/--survival, every task in the predictions but survival is evaluated; each
    task's kind is inferred from its manifest column as in training (--kind sets it).
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        result = evaluate_file(predictions, manifest, out, targets=split_targets(target),
                               survival=split_survival(survival), clinical=clinical, kinds=split_kinds(kind),
                               n_boot=bootstrap, seed=seed)
    Console().print(metrics_table(result["tasks"], title=f"{result['n_slides']} slides, "
                                                         f"{result['n_patients']} patients"))
    console.print(f"metrics written to {out / 'metrics.json'}")


def version_command() -> None:
    """Print the installed version."""
    typer.echo(__version__)
