"""``mil predict``: every fold model of a run applied to bags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pathology.batch import summary_table
from pathology.cli.common import Device, Out, Quiet, RunFolder, Verbose, exit_if_failed, reported, setup_logging

from ..predict import TRUST_FILE, load_run, predict_cohort


def predict_command(
    model: RunFolder(),
    bags: Annotated[Path, typer.Option(help="Folder of bags to predict.")],
    out: Out("Folder for predictions.csv, attention/, trust.csv (is each slide like the training slides?) and "
             "status.csv."),
    manifest: Annotated[Path | None, typer.Option(help="Slides to predict (default: every bag in --bags); its "
                                                       "label columns, when present, fill the labels.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature set to read (default: the run's).")] = None,
    device: Device = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Apply every fold model of a run to bags: mean scores in predictions.csv, mean attention per slide.

    A bad bag is reported and skipped; the exit code is 1 if any failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        run = load_run(model, device)
        outcomes = predict_cohort(run, bags, out, manifest=manifest, features=features, console=console)
    Console().print(summary_table(outcomes, unit="instances"))
    console.print(f"predictions written to {out / 'predictions.csv'}; each slide's reliability in "
                  f"{out / TRUST_FILE}")
    exit_if_failed(outcomes)
