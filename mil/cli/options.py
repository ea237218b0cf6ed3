"""Options the ``mil`` commands share (beyond pathology.cli.common's): targets, their kinds,
survival columns, clinical covariates and the STAMP clinical table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathology.errors import InputError

Targets = Annotated[list[str] | None, typer.Option("--target", "-t", help="Label column(s) to predict: repeat or "
                                                   "comma-separate (--target er,pr,her2).")]
Survival = Annotated[str | None, typer.Option(help="Survival columns TIME_COL,EVENT_COL (e.g. os_time,os_event).")]
Kinds = Annotated[list[str] | None, typer.Option("--kind", help="A target's task kind, NAME=binary|multiclass|"
                                                 "regression (repeat or comma-separate; default: inferred from "
                                                 "the column).")]
Covariates = Annotated[str | None, typer.Option(help="Clinical covariate columns fused with the slide, numbers or "
                                                     "categories (e.g. age,stage,grade,nodes).")]
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


def split_kinds(values: list[str] | None) -> dict[str, str]:
    """``["her2=multiclass,ki67=regression"]`` -> ``{"her2": "multiclass", "ki67": "regression"}``."""
    out = {}
    for item in (t.strip() for v in values or [] for t in v.split(",")):
        if not item:
            continue
        name, sep, kind = item.partition("=")
        if not sep or not name.strip() or not kind.strip():
            raise InputError(f"--kind takes NAME=KIND (e.g. her2=multiclass), got {item!r}")
        out[name.strip()] = kind.strip().lower()
    return out


def split_covariates(value: str | None) -> list[str]:
    return [c.strip() for c in (value or "").split(",") if c.strip()]
