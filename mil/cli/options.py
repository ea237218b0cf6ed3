"""Options the ``mil`` commands share (beyond pathology.cli.common's): targets, survival
columns and the STAMP clinical table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathology.errors import InputError

Targets = Annotated[list[str] | None, typer.Option("--target", "-t", help="Label column(s) to predict: repeat or "
                                                   "comma-separate (--target er,pr,her2).")]
Survival = Annotated[str | None, typer.Option(help="Survival columns TIME_COL,EVENT_COL (e.g. os_time,os_event).")]
Clinical = Annotated[Path | None, typer.Option(help="STAMP clinical table (one row per PATIENT); --manifest is "
                                                    "then STAMP's slide table (PATIENT, FILENAME).")]


def split_targets(values: list[str] | None) -> list[str]:
    """``["er,pr", "her2"]`` -> ``["er", "pr", "her2"]``."""
    return [t.strip() for v in values or [] for t in v.split(",") if t.strip()]


def split_survival(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--survival takes TIME_COL,EVENT_COL (two column names), got {value!r}")
    return parts[0], parts[1]
