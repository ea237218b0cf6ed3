"""The ``mil`` command line (training and prediction arrive with the MIL issue)."""

from __future__ import annotations

import typer

from pathology import __version__

app = typer.Typer(help="Attention multiple-instance learning on feature bags.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("version")
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
