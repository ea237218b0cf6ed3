"""The local executor: slides one after another in this process, or ``workers`` slides at once
in spawned worker processes (h5py and OpenSlide handles must not be forked), each worker
building a stage's state (an encoder) once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from ..inputs import SlideInput
from ..jobs import Advance, Stage, run_pipeline
from .base import Finished

_WORKER_STATES: list[Any] | None = None  # in a worker process: its stages' states, built on first use


class LocalExecutor:
    def __init__(self, workers: int = 1, states: Sequence[Any] | None = None):
        """``states``: the stages' states, already built by the caller (e.g. an encoder loaded to
        check its weights before any slide); used when the slides run in this process."""
        self.workers = max(1, workers)
        self.states = list(states) if states is not None else None

    def run(self, slides: Sequence[SlideInput], stages: Sequence[Stage], finished: Finished, advance: Advance,
            owner: str) -> None:
        stages = list(stages)
        if self.workers <= 1 or len(slides) <= 1:
            states = self.states or [s.setup() if s.setup else None for s in stages]
            for slide in slides:
                finished(run_pipeline(stages, slide, advance, states, owner))
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(slides)), mp_context=ctx) as pool:
            futures = [pool.submit(_in_worker, stages, slide, owner) for slide in slides]
            for future in as_completed(futures):
                outcome = future.result()
                advance(outcome.count)
                finished(outcome)


def _in_worker(stages: list[Stage], slide: SlideInput, owner: str):
    """One slide in a worker process; the stages' states are built on the worker's first slide."""
    global _WORKER_STATES
    if _WORKER_STATES is None:
        _WORKER_STATES = [s.setup() if s.setup else None for s in stages]
    return run_pipeline(stages, slide, lambda n: None, _WORKER_STATES, owner)
