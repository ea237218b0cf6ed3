"""Exit codes shared by every batch command: 2 for bad input (one line, nothing done),
1 when any slide of the batch failed (the others were still done)."""

from __future__ import annotations

from collections.abc import Iterable

import typer
from rich.console import Console

from .batch import Outcome


def bad_input(console: Console, exc: Exception) -> typer.Exit:
    """Print ``exc`` as a one-line error and return the exit (code 2) to raise."""
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(2)


def exit_if_failed(outcomes: Iterable[Outcome]) -> None:
    """Exit with code 1 if any slide failed."""
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)
