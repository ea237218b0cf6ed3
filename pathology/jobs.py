"""The unit of work of every batch: one slide through one stage, and what came of it.

A :class:`Stage` is a picklable description of per-slide work (tile a slide, embed a bag,
score an IHC slide), so that any executor (:mod:`pathology.executors`) can run it: inline, in
worker processes, or as Ray tasks and actors on a cluster. Heavy per-worker state (a loaded
encoder, a trained run) is built once per worker by ``setup``; only slide ids, paths and the
small :class:`Outcome` travel between processes, never pixels.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claims import Claim, try_claim
from .errors import describe, is_user_fixable, storage_errors
from .inputs import SlideInput

Advance = Callable[[int], None]


@dataclass
class Outcome:
    slide_id: str
    status: str            # "done", "skipped" (complete already), "busy" (another job has it) or "failed"
    count: int = 0         # patches (or whatever unit the job counts)
    seconds: float = 0.0
    message: str = ""
    bug: bool = False      # failed because of a bug in this software, not because of its input
    traceback: str = ""    # of a bug, for -v (worker processes cannot log it themselves)
    data: dict[str, Any] = field(default_factory=dict)  # small results for the driver (scores, calls)


# A job gets the slide and a callback to report units of work done.
Job = Callable[[SlideInput, Advance], Outcome]


@dataclass(frozen=True)
class Stage:
    """Per-slide work: ``run(slide, advance)`` or, with ``setup``, ``run(slide, advance, state)``
    where ``state = setup()`` is built once per worker. ``claim(slide)`` names the output a
    worker claims before it starts (:mod:`pathology.claims`), so two drivers or two jobs of an
    array never work on one slide at once. Resources are per slide (stateless stages: one task
    each) or per worker (stages with ``setup``: a pool of workers that keep their state)."""

    name: str
    run: Callable[..., Outcome]
    setup: Callable[[], Any] | None = None
    claim: Callable[[SlideInput], Path] | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None          # bytes reserved per task or worker (Ray), None: no reservation
    accelerated: bool = False          # its workers use a GPU where the cluster has one


def as_stage(job: Job | Stage, name: str = "job") -> Stage:
    """A plain job function as a :class:`Stage` (no state, no claim)."""
    return job if isinstance(job, Stage) else Stage(name, job)


def run_stage(stage: Stage, slide: SlideInput, advance: Advance = lambda n: None, state: Any = None,
              owner: str = "") -> Outcome:
    """Run ``stage`` on one slide under its claim, turning any failure into a ``failed`` outcome:
    a user-fixable error is its one-line message, anything else is marked a bug with its
    traceback. ``owner`` identifies the batch run, whose retries may take over their own claims."""
    t0 = time.perf_counter()
    claim: Claim | None = None
    try:
        if stage.claim is not None:
            output = stage.claim(slide)
            with storage_errors(output):  # a read-only or full folder: name the output, not its claim
                got = try_claim(output, owner=owner)
            if not isinstance(got, Claim):
                return Outcome(slide.slide_id, "busy", message=f"{stage.name}: another job is on it "
                                                               f"({got.describe()})")
            claim = got
        args = (slide, advance) if stage.setup is None else (slide, advance, state)
        return stage.run(*args)
    except Exception as exc:  # noqa: BLE001 - keep the batch going: the outcome says what happened
        bug = not is_user_fixable(exc)
        return Outcome(slide.slide_id, "failed", 0, time.perf_counter() - t0, describe(exc), bug=bug,
                       traceback=traceback.format_exc() if bug else "")
    finally:
        if claim is not None:
            claim.release()


FINAL = ("failed", "busy")  # a slide goes no further after these


def run_pipeline(stages: list[Stage], slide: SlideInput, advance: Advance, states: list[Any],
                 owner: str = "") -> Outcome:
    """``slide`` through ``stages`` in order, stopping at the first that fails or is busy."""
    outcomes = []
    for stage, state in zip(stages, states, strict=True):
        outcomes.append(run_stage(stage, slide, advance, state, owner))
        if outcomes[-1].status in FINAL:
            break
    return combine(stages, outcomes)


def combine(stages: list[Stage], outcomes: list[Outcome]) -> Outcome:
    """One outcome for a slide's way through several stages: the last one's, its message led by
    what each stage did (``tile: skipped, embed: done · …``), the seconds summed."""
    last = outcomes[-1]
    if len(stages) == 1:
        return last
    steps = ", ".join(f"{s.name}: {o.status}" for s, o in zip(stages, outcomes))
    return Outcome(last.slide_id, last.status, last.count, sum(o.seconds for o in outcomes),
                   f"{steps} · {last.message}" if last.message else steps, last.bug, last.traceback, last.data)
