"""Run one job per slide with progress, per-slide outcome lines, ``status.csv``, a summary and
an exit code (docs/architecture.md, "Batches").

Shared by every batch command: a slide that fails is reported and the rest go on. A failure
the user can fix (:func:`pathology.errors.is_user_fixable`) is one line; anything else is a bug,
reported as one with its type and message, its traceback kept for ``-v``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .claims import STALE_AFTER, claim_path, is_stale, sweep_claims
from .errors import describe, is_user_fixable
from .executors import Executor, LocalExecutor
from .inputs import SlideInput
from .jobs import Job, Outcome, Stage, as_stage, run_stage
from .publish import publish_csv, sweep_leftovers

log = logging.getLogger(__name__)

STATUS_COLUMNS = ("slide_id", "status", "seconds", "count", "message")
NOT_EVALUABLE = "not evaluable"
"""A slide processed to the end that gives no score (IHC: no tissue, too few cells); its reason is the message."""
STATUSES = ("done", NOT_EVALUABLE, "skipped", "busy", "failed")

__all__ = ["NOT_EVALUABLE", "Job", "Outcome", "Stage", "StatusFile", "run_batch", "run_one", "status_path",
           "summary_table"]


def run_one(job: Job | Stage, slide: SlideInput) -> Outcome:
    """Run one slide through ``job`` (no claim), turning any failure into a ``failed`` outcome."""
    return run_stage(as_stage(job), slide)


class StatusFile:
    """``status.csv``: every slide of the batch (``pending`` until it ends), rewritten atomically
    after each slide so that a cluster log can be read while the batch runs."""

    def __init__(self, path: Path | None, slides: list[SlideInput]):
        self.path = path
        self.rows = {s.slide_id: {"slide_id": s.slide_id, "status": "pending"} for s in slides}
        self.problem = ""

    def update(self, outcome: Outcome) -> None:
        self.rows[outcome.slide_id] = {"slide_id": outcome.slide_id, "status": outcome.status,
                                       "seconds": f"{outcome.seconds:.2f}", "count": outcome.count,
                                       "message": outcome.message}
        self.write()

    def write(self) -> None:
        """Rewrite the file. A full disk or a read-only folder is logged (once) and the batch goes
        on: the slides' own outputs fail with their own message, and the next write may succeed."""
        if self.path is None:
            return
        try:
            publish_csv(self.path, STATUS_COLUMNS, self.rows.values())
        except Exception as exc:
            if not is_user_fixable(exc):
                raise
            if describe(exc) != self.problem:
                log.warning("status file not written: %s", describe(exc))
            self.problem = describe(exc)
        else:
            self.problem = ""


def status_path(folder: Path, shard: tuple[int, int] | None = None, stem: str = "status") -> Path:
    """``folder/status.csv``; ``status.shard-<i>-of-<n>.csv`` for one job of an array (jobs of
    an array share the output folder, each writes its own file)."""
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return folder / f"{stem}{suffix}.csv"


def run_batch(slides: list[SlideInput], job: Job | Stage | Sequence[Stage], *, executor: Executor | None = None,
              workers: int = 1, unit: str = "patches", console: Console | None = None, total: int | None = None,
              status: Path | None = None, clean: Sequence[Path] = ()) -> list[Outcome]:
    """Run ``job`` (a function of a slide, a :class:`Stage`, or stages each slide passes through in
    order) over ``slides`` with ``executor`` (default: local, ``workers`` processes), with a
    progress bar (over ``total`` units of work, when known up front), one log line per slide and
    ``status`` (a ``status.csv`` path) kept up to date. Temporary files and claims that dead
    processes of this host left in the ``clean`` folders (a killed run) are removed first."""
    console = console or Console(stderr=True)
    stages = [as_stage(job)] if callable(job) or isinstance(job, Stage) else list(job)
    executor = executor or LocalExecutor(workers)
    for folder in clean:
        _sweep(Path(folder))
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

        executor.run(slides, stages, finished, lambda n: progress.advance(units_task, n), owner=uuid.uuid4().hex)
    bugs = sum(o.bug for o in outcomes)
    if bugs:
        log.error("%d slide(s) failed because of a bug in this software, not because of their input: please "
                  "report it with the traceback that -v prints", bugs)
    order = {s.slide_id: i for i, s in enumerate(slides)}
    return sorted(outcomes, key=lambda o: order[o.slide_id])


def _claimed(output: Path) -> bool:
    """Whether a live job holds a claim on ``output``."""
    claim = claim_path(output)
    return claim.exists() and not is_stale(claim)


def _sweep(folder: Path) -> None:
    """Remove what killed runs left in ``folder``: temporary files and folders and claims of dead
    processes of this host, and other hosts' temporary files untouched for
    :data:`pathology.claims.STALE_AFTER` whose output no live job claims. A folder that cannot
    be cleaned (read-only) is reported, and the batch goes on."""
    try:
        left = sweep_claims(folder) + sweep_leftovers(folder, stale_after=STALE_AFTER, in_use=_claimed)
    except OSError as exc:
        log.warning("could not remove what killed runs left in %s: %s", folder, describe(exc))
        return
    if left:
        log.info("removed %d file(s) a killed run left in %s", len(left), folder)


def _log_outcome(outcome: Outcome, unit: str) -> None:
    if outcome.status == "failed":
        log.error("%s: failed: %s", outcome.slide_id, outcome.message)
        if outcome.traceback:
            log.debug("%s: %s", outcome.slide_id, outcome.traceback.rstrip())
    elif outcome.status in ("skipped", "busy"):
        log.info("%s: %s (%s)", outcome.slide_id, outcome.status, outcome.message)
    elif outcome.status == NOT_EVALUABLE:
        log.warning("%s: %s: %s", outcome.slide_id, outcome.status, outcome.message)
    else:
        log.info("%s: %s %s in %.1f s%s", outcome.slide_id, outcome.count, unit, outcome.seconds,
                 f" ({outcome.message})" if outcome.message else "")


def summary_table(outcomes: list[Outcome], unit: str = "patches") -> Table:
    """One row per slide, and a caption with the totals."""
    table = Table(title="Summary", title_justify="left")
    for name, justify in (("slide", "left"), ("status", "left"), (unit, "right"), ("seconds", "right"),
                          ("detail", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    style = {"done": "green", NOT_EVALUABLE: "magenta", "skipped": "cyan", "busy": "yellow", "failed": "bold red"}
    for o in outcomes:
        table.add_row(o.slide_id, f"[{style.get(o.status, '')}]{o.status}", str(o.count) if o.status == "done" else "",
                      f"{o.seconds:.1f}" if o.status not in ("skipped", "busy") else "", o.message)
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    table.caption = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s not in ("busy", NOT_EVALUABLE))
    bugs = sum(o.bug for o in outcomes)
    if bugs:
        table.caption += f" ({bugs} by a bug: please report it, with the traceback from -v)"
    return table
