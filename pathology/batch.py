"""Run one job per slide with progress, per-slide outcome lines, a summary and an exit code.

Shared by every batch command: a bad slide is reported and skipped, the rest go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .inputs import SlideInput
from .slide import SlideError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    slide_id: str
    status: str            # "done", "skipped" or "failed"
    count: int = 0         # patches (or whatever unit the job counts)
    seconds: float = 0.0
    message: str = ""


# A job gets the slide and a callback to report units of work done.
Job = Callable[[SlideInput, Callable[[int], None]], Outcome]

# Errors that mean "this slide is bad" (reported in one line); anything else is a bug
# in our code, reported with its type and logged with a traceback.
EXPECTED_ERRORS = (SlideError, ValueError, OSError)


def run_one(job: Job, slide: SlideInput, advance: Callable[[int], None] = lambda n: None) -> Outcome:
    """Run ``job`` on one slide, turning any failure into a ``failed`` outcome."""
    t0 = time.perf_counter()
    try:
        return job(slide, advance)
    except EXPECTED_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
    except Exception as exc:  # keep the batch going; the traceback is in the debug log
        log.debug("%s failed", slide.slide_id, exc_info=True)
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return Outcome(slide.slide_id, "failed", 0, time.perf_counter() - t0, message)


def run_batch(slides: list[SlideInput], job: Job, *, workers: int = 1, unit: str = "patches",
              console: Console | None = None, total: int | None = None) -> list[Outcome]:
    """Run ``job`` over ``slides`` (``workers`` processes when > 1) with a progress bar
    (over ``total`` units of work across the batch, when known up front)."""
    console = console or Console(stderr=True)
    outcomes: list[Outcome] = []
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        slides_task = progress.add_task("slides", total=len(slides))
        units_task = progress.add_task(unit, total=total)

        def finished(outcome: Outcome) -> None:
            outcomes.append(outcome)
            _log_outcome(outcome, unit)
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
    order = {s.slide_id: i for i, s in enumerate(slides)}
    return sorted(outcomes, key=lambda o: order[o.slide_id])


def _log_outcome(outcome: Outcome, unit: str) -> None:
    if outcome.status == "failed":
        log.error("%s: failed: %s", outcome.slide_id, outcome.message)
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
    return table
