"""What an output folder holds: its slides with their calls and scores.

Three kinds of folder, each recognised by the table its command writes (a registry, tried
in order):

- ``pathology run``: ``results.csv`` (each task's score, call and cut-off, or a risk);
- ``pathology ihc``: ``scores.csv`` (marker, cells, % positive, H-score, Allred, call);
- ``pathology demo`` (and any folder with ``bags/``): the bags, with the out-of-fold scores
  of ``run/predictions.csv`` and the calls at the run's cut-offs when the run is there.

Only the table is read when the viewer starts (a thousand slides list at once); a slide's
bag, attention and records are opened when it is viewed (:mod:`.slidedata`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..table import number, read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """One score of a slide as the pages show it."""

    name: str        # the task, or the IHC score
    text: str        # "positive 0.873", "risk 0.120", "180"
    tone: str = ""   # "pos", "neg" or "" (how the pages colour it)


@dataclass(frozen=True)
class Entry:
    """One slide of the folder."""

    slide_id: str
    status: str = "done"
    calls: tuple[Call, ...] = ()
    message: str = ""

    def matches(self, query: str) -> bool:
        """Whether ``query`` (lower case) is in the slide id, the status or any call."""
        return any(query in text.lower() for text in (self.slide_id, self.status, *(c.text for c in self.calls)))


@dataclass
class Catalog:
    """The slides of one output folder, in the folder table's order."""

    root: Path
    kind: str
    entries: dict[str, Entry]
    columns: list[str] = field(default_factory=list)   # call names, in order, for the index table

    def search(self, query: str = "", page: int = 1, per_page: int = 50) -> tuple[list[Entry], int]:
        """Page ``page`` (from 1) of the entries matching ``query``, and how many match."""
        query = query.strip().lower()
        found = [e for e in self.entries.values() if e.matches(query)] if query else list(self.entries.values())
        start = (max(1, page) - 1) * per_page
        return found[start:start + per_page], len(found)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


# -- pathology run: results.csv ----------------------------------------------------------------------------------
def read_run(root: Path) -> Catalog | None:
    path = root / "results.csv"
    if not path.is_file():
        return None
    table = _table(path)
    # each task's columns (pathology.run.pipeline): binary <task>_score (+ _call), multiclass
    # <task>_call + <task>_p_<class>, regression <task>_value, survival <task>_risk; in column order
    tasks: dict[str, str] = {}
    for c in table.columns:
        for suffix, kind in (("_score", "binary"), ("_value", "regression"), ("_risk", "survival")):
            if c.endswith(suffix):
                tasks.setdefault(c[:-len(suffix)], kind)
        if c.endswith("_call") and any(o.startswith(c[:-len("_call")] + "_p_") for o in table.columns):
            tasks.setdefault(c[:-len("_call")], "multiclass")
    entries = {}
    for row in table.rows:
        calls = [call for task, kind in tasks.items() if (call := _CALLS[kind](task, row, table.columns))]
        if row.get("reliable") or row.get("warning"):     # mil.assess's columns
            calls.append(_reliability(row))
        entries[row["slide_id"]] = Entry(row["slide_id"], row.get("status", "done"), tuple(calls),
                                         row.get("message", ""))
    extra = [RELIABILITY] if {"reliable", "warning"} & set(table.columns) else []
    return Catalog(root, "run", entries, [*tasks, *extra])


def _binary(task: str, row: dict, columns: list[str]) -> Call | None:
    score = number(row.get(f"{task}_score", ""))
    if score is None:
        return None
    call = row.get(f"{task}_call", "")
    return Call(task, f"{call} {score:.3f}".strip(), _tone(call))


def _multiclass(task: str, row: dict, columns: list[str]) -> Call | None:
    """The called class and its probability."""
    call = row.get(f"{task}_call", "")
    p = number(row.get(f"{task}_p_{call}", "")) if call else None
    return Call(task, f"{call} · p {p:.3f}" if p is not None else call) if call else None


def _regression(task: str, row: dict, columns: list[str]) -> Call | None:
    value = number(row.get(f"{task}_value", ""))
    return None if value is None else Call(task, f"{value:.3g}")


def _survival(task: str, row: dict, columns: list[str]) -> Call | None:
    risk = number(row.get(f"{task}_risk", ""))
    return None if risk is None else Call(task, f"risk {risk:.3f}")


_CALLS = {"binary": _binary, "multiclass": _multiclass, "regression": _regression, "survival": _survival}


RELIABILITY = "reliability"
NOT_RELIABLE = "not reliable"  # how mil.assess ends a flag's warning (not imported: mil.ood loads scikit-learn)


def _reliability(row: dict) -> Call:
    """A slide's reliability: "not reliable" (out of distribution, stain, resolution) or "ok", its
    warnings (a flag's own warning gives its distance), and the distance when nothing flagged it."""
    text = "not reliable" if row.get("reliable") == "no" else "ok"
    warnings = [w.removesuffix(f": {NOT_RELIABLE}") for w in row.get("warning", "").split("; ") if w]
    ood = number(row.get("ood_distance", ""))
    if ood is not None and not any("out of distribution" in w for w in warnings):
        threshold = number(row.get("ood_threshold", ""))
        text += f" · distance {ood:.3g}" + (f" (threshold {threshold:.3g})" if threshold is not None else "")
    text += "".join(f" · {w}" for w in warnings)
    return Call(RELIABILITY, text, "pos" if row.get("reliable") == "no" or warnings else "")


def _tone(call: str) -> str:
    return {"positive": "pos", "negative": "neg"}.get(call, "")


# -- pathology ihc: scores.csv -----------------------------------------------------------------------------------
IHC_COLUMNS = {"marker": "marker", "cells": "cells", "percent_positive": "% positive", "h_score": "H-score",
               "allred_total": "Allred", "call": "call"}


def read_ihc(root: Path) -> Catalog | None:
    path = root / "scores.csv"
    if not path.is_file():
        return None
    table = _table(path)
    if "marker" not in table.columns:
        return None
    entries = {row["slide_id"]: Entry(row["slide_id"], calls=tuple(Call(name, row.get(column, ""))
                                                                  for column, name in IHC_COLUMNS.items()))
               for row in table.rows}
    return Catalog(root, "ihc", entries, list(IHC_COLUMNS.values()))


# -- pathology demo, or any folder of bags: bags/ (+ run/predictions.csv) ---------------------------------------
def read_bags(root: Path) -> Catalog | None:
    bags = root / "bags"
    if not bags.is_dir():
        return None
    ids = sorted(p.stem for p in bags.glob("*.h5") if not p.name.startswith("."))
    calls, tasks = _predictions(root / "run")
    entries = {sid: Entry(sid, calls=tuple(calls.get(sid, ()))) for sid in ids}
    return Catalog(root, "demo" if (root / "demo_summary.json").is_file() else "bags", entries, tasks)


def _predictions(run: Path) -> tuple[dict[str, list[Call]], list[str]]:
    """Out-of-fold scores of ``run/predictions.csv`` (the demo's run), called at the run's cut-offs."""
    path = run / "predictions.csv"
    if not path.is_file():
        return {}, []
    thresholds: dict[str, float | None] = {}
    if (run / "config.json").is_file():
        from mil.runconfig import RunConfig  # the model side's typed reader, only for a folder with a run

        thresholds = RunConfig.read(run / "config.json").thresholds
    calls: dict[str, list[Call]] = {}
    tasks: list[str] = []
    for row in _table(path).rows:
        task, score = row.get("task", ""), number(row.get("score", ""))
        if score is None:
            continue
        tasks += [task] if task not in tasks else []
        label = f" · label {row['label']}" if number(row.get("label", "")) is not None else ""
        calls.setdefault(row["slide_id"], []).append(_scored(task, score, thresholds, label))
    return calls, tasks


def _scored(task: str, score: float, thresholds: dict[str, float | None], label: str) -> Call:
    """A score, called at the run's cut-off (binary), as a risk (survival), or plain (no run config)."""
    if task not in thresholds:
        return Call(task, f"{score:.3f}{label}")
    cut = thresholds[task]
    if cut is None:
        return Call(task, f"risk {score:.3f}{label}")
    call = "positive" if score >= cut else "negative"
    return Call(task, f"{call} {score:.3f}{label}", _tone(call))


def _table(path: Path):
    problems: list[str] = []
    table = read_table(path, problems)
    for problem in problems:
        log.warning("%s", problem)
    if "slide_id" not in table.columns:
        raise InputError(f"{path}: no slide_id column")
    return table


READERS: dict[str, Callable[[Path], Catalog | None]] = {"run": read_run, "ihc": read_ihc, "bags": read_bags}


def read_catalog(root: str | Path) -> Catalog:
    """The slides of the output folder ``root``; :class:`InputError` (one line) if it is none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    for reader in READERS.values():
        catalog = reader(root)
        if catalog is not None:
            return catalog
    raise InputError(f"{root}: not an output folder of `pathology run`, `pathology demo` or `pathology ihc` "
                     "(no results.csv, scores.csv or bags/)")
