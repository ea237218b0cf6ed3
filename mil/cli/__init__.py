"""The ``mil`` command line: ``train`` (cross-validation into a run folder), ``predict`` (a run's
fold models applied to bags) and ``evaluate`` (predictions scored against a manifest).

Each command is imported when it runs (``mil --help`` loads no torch). Bad input (manifest
problems, degenerate data, bad bags, unknown options) prints a clear message and exits 2;
``predict`` keeps going past a bad bag and exits 1; a bug shows its traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pathology import __version__
from pathology.cli.lazy import LazyCommand, lazy_group

COMMANDS = {
    "train": LazyCommand("mil.cli.train:train_command",
                         "Cross-validate a MIL model on a cohort: models, metrics, predictions, plots."),
    "predict": LazyCommand("mil.cli.predict:predict_command",
                           "Apply every fold model of a run to bags: scores and per-patch attention."),
    "evaluate": LazyCommand("mil.cli.evaluate:evaluate_command",
                            "Score predictions against a manifest's labels: metrics.json, ROC and KM plots."),
    "version": LazyCommand("mil.cli.evaluate:version_command", "Print the installed version."),
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pathology-mil {__version__}")
        raise typer.Exit()


app = typer.Typer(cls=lazy_group(COMMANDS), no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, help="Attention multiple-instance learning on feature bags.")


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Attention multiple-instance learning on feature bags: train, predict, evaluate."""
