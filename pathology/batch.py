"""Run one job per slide with progress, per-slide outcome lines, ``status.csv``, a summary and
an exit code (docs/architecture.md, "Batches").

Shared by every batch command: a slide that fails is reported and the rest go on. A failure
the user can fix (:func:`pathology.errors.is_user_fixable`) is one line; anything else is a bug,
reported as one with its type and message, its traceback kept for ``-v``.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import describe, is_user_fixable
from .inputs import SlideInput
from .publish import publish_csv

log = logging.getLogger(__name__)

STATUS_COLUMNS = ("slide_id", "status", "seconds", "count", "message")


@dataclass
class Outcome:
    slide_id: str
    status: str            # "done", "skipped" or "failed"
    count: int = 0         # patches (or whatever unit the job counts)
    seconds: float = 0.0
    message: str = ""
    bug: bool = False      # failed because of a bug in this software, not because of its input
    traceback: str = ""    # of a bug, for -v (worker processes cannot log it themselves)


# A job gets the slide and a callback to report units of work done.
Job = Callable[[SlideInput, Callable[[int], None]], Outcome]


def run_one(job: Job, slide: SlideInput, advance: Callable[[int], None] = lambda n: None) -> Outcome:
    """Run ``job`` on one slide, turning any failure into a ``failed`` outcome."""
    t0 = time.perf_counter()
    try:
        return job(slide, advance)
    except Exception as exc:  # noqa: BLE001 - keep the batch going: the outcome says what happened
        bug = not is_user_fixable(exc)
        return Outcome(slide.slide_id, "failed", 0, time.perf_counter() - t0, describe(exc), bug=bug,
                       traceback=traceback.format_exc() if bug else "")


class StatusFile:
    """``status.csv``: every slide of the batch (``pending`` until it ends), rewritten atomically
    after each slide so that a cluster log can be read while the batch runs."""

    def __init__(self, path: Path | None, slides: list[SlideInput]):
        self.path = path
        self.rows = {s.slide_id: {"slide_id": s.slide_id, "status": "pending"} for s in slides}

    def update(self, outcome: Outcome) -> None:
        self.rows[outcome.slide_id] = {"slide_id": outcome.slide_id, "status": outcome.status,
                                       "seconds": f"{outcome.seconds:.2f}", "count": outcome.count,
                                       "message": outcome.message}
        self.write()

    def write(self) -> None:
        if self.path is not None:
            publish_csv(self.path, STATUS_COLUMNS, self.rows.values())


def status_path(folder: Path, shard: tuple[int, int] | None = None, stem: str = "status") -> Path:
    """``folder/status.csv``; ``status.shard-<i>-of-<n>.csv`` for one job of an array (jobs of
    an array share the output folder, each writes its own file)."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return folder / f"{stem}{suffix}.csv"


def run_batch(slides: list[SlideInput], job: Job, *, workers: int = 1, unit: str = "patches",
              console: Console | None = None, total: int | None = None,
              status: Path | None = None) -> list[Outcome]:
    """Run ``job`` over ``slides`` (``workers`` processes when > 1) with a progress bar (over
    ``total`` units of work across the batch, when known up front), keeping ``status`` (a
    ``status.csv`` path) up to date."""
    console = console or Console(stderr=True)
    outcomes: list[Outcome] = []
    status_file = StatusFile(status, slides)
    status_file.write()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        slides_task = progress.add_task("slides", total=len(slides))
        units_task = progress.add_task(unit, total=total)

        def finished(outcome: Outcome) -> None:
            outcomes.append(outcome)
            _log_outcome(outcome, unit)
            status_file.update(outcome)
            progress.advance(slides_task)

        if workers <= 1:
            for slide in slides:
                progress.update(units_task, description=f"{unit} · {slide.slide_id}")
                finished(run_one(job, slide, lambda n: progress.advance(units_task, n)))
        else:
            ctx = multiprocessing.get_context("spawn")  # h5py/OpenSlide handles must not be forked
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(run_one, job, slide) for slide in slides]
                for future in as_completed(futures):
                    outcome = future.result()
                    progress.advance(units_task, outcome.count)
                    finished(outcome)
    bugs = sum(o.bug for o in outcomes)
    if bugs:
        log.error("%d slide(s) failed because of a bug in this software, not because of their input: please "
                  "report it with the traceback that -v prints", bugs)
    order = {s.slide_id: i for i, s in enumerate(slides)}
    return sorted(outcomes, key=lambda o: order[o.slide_id])


def _log_outcome(outcome: Outcome, unit: str) -> None:
    if outcome.status == "failed":
        log.error("%s: failed: %s", outcome.slide_id, outcome.message)
        if outcome.traceback:
            log.debug("%s: %s", outcome.slide_id, outcome.traceback.rstrip())
    elif outcome.status == "skipped":
        log.info("%s: skipped (%s)", outcome.slide_id, outcome.message)
    else:
        log.info("%s: %s %s in %.1f s%s", outcome.slide_id, outcome.count, unit, outcome.seconds,
                 f" ({outcome.message})" if outcome.message else "")


def summary_table(outcomes: list[Outcome], unit: str = "patches") -> Table:
    """One row per slide, and a caption with the totals."""
    table = Table(title="Summary", title_justify="left")
    for name, justify in (("slide", "left"), ("status", "left"), (unit, "right"), ("seconds", "right"),
                          ("detail", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    style = {"done": "green", "skipped": "cyan", "failed": "bold red"}
    for o in outcomes:
        table.add_row(o.slide_id, f"[{style.get(o.status, '')}]{o.status}", str(o.count) if o.status == "done" else "",
                      f"{o.seconds:.1f}" if o.status != "skipped" else "", o.message)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    table.caption = ", ".join(f"{n} {s}" for s, n in counts.items())
    bugs = sum(o.bug for o in outcomes)
    if bugs:
        table.caption += f" ({bugs} by a bug: please report it, with the traceback from -v)"
    return table
