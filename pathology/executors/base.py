"""What an executor does: take slides through stages and report each slide's outcome as it ends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..inputs import SlideInput
from ..jobs import Advance, Outcome, Stage

# Called on the driver as each slide ends (in completion order).
Finished = Callable[[Outcome], None]


class Executor(Protocol):
    """Runs ``stages`` on every slide; calls ``finished`` once per slide as it ends and
    ``advance`` with units of work done (live where the executor can see them, else at the
    end of each slide). ``owner`` names the batch run in claims."""

    def run(self, slides: Sequence[SlideInput], stages: Sequence[Stage], finished: Finished, advance: Advance,
            owner: str) -> None: ...
