"""The Ray executor: the same stages on a Ray cluster (or a local Ray instance).

One slide is one unit of work. A stage without state (tiling, IHC scoring) runs as one Ray task
per slide with ``cpus_per_slide`` CPUs; a stage with state (embedding: an encoder) runs in a
pool of actors that build it once each (one per GPU, or CPU actors where there is none). The
driver streams every slide through the stages, a slide entering the next stage as soon as it
leaves the previous one, so a GPU never waits for the whole batch to be tiled. Only slide ids,
paths and small outcomes go through the object store; pixels stay in the workers.

Faults: a bad slide fails once with its message (the stage catches it, so Ray never retries
it); a worker that dies (killed, out of memory, node lost) is retried by Ray (``max_retries``
for tasks, restarts for actors). Each attempt publishes by rename and claims its slide under
the batch's run id, so a retry takes over its dead predecessor's claim and never meets a
half-written file.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cores import available_cores
from ..errors import InputError, one_line
from ..inputs import SlideInput
from ..jobs import FINAL, Advance, Outcome, Stage, combine, run_stage
from .base import Finished

log = logging.getLogger(__name__)

INSTALL_HINT = "--executor ray needs Ray: pip install 'pathology-mil[ray]' (core Ray only)"


def import_ray():
    """The ``ray`` module, or a one-line :class:`InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


def _run_task(stage: Stage, slide: SlideInput, owner: str) -> Outcome:
    return run_stage(stage, slide, lambda n: None, None, owner)


class _StageWorker:
    """An actor holding one stage's state (built once) and running it slide after slide."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.state = stage.setup() if stage.setup else None

    def run(self, slide: SlideInput, owner: str) -> Outcome:
        return run_stage(self.stage, slide, lambda n: None, self.state, owner)


@dataclass
class RayExecutor:
    """``address``: a running cluster (``ray start --head``, ``ray up``, a managed cluster);
    None starts a local instance with this machine's cores. Resources per slide (stateless
    stages) and per worker (stages with state); ``workers``: actors per stateful stage (default:
    one per GPU when ``gpus_per_worker`` > 0, else one)."""

    address: str | None = None
    cpus_per_slide: float | None = None
    memory_per_slide: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    workers: int | None = None
    max_retries: int = 3

    def connect(self):
        ray = import_ray()
        if not ray.is_initialized():
            if self.address:
                try:
                    ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise InputError(f"--address {self.address}: cannot join a Ray cluster there "
                                     f"({one_line(exc)[:200]})") from None
            else:
                ray.init(num_cpus=available_cores(), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        return ray

    def run(self, slides: Sequence[SlideInput], stages: Sequence[Stage], finished: Finished, advance: Advance,
            owner: str) -> None:
        ray = self.connect()
        stages = list(stages)
        runners = [self._runner(ray, stage, cpus) for stage, cpus in zip(stages, self._fit(ray, stages), strict=True)]
        todo: list[deque[int]] = [deque() for _ in stages]   # slides waiting for a free actor, per stage
        done: dict[int, list[Outcome]] = {i: [] for i in range(len(slides))}
        flying: dict[Any, tuple[int, int, Any]] = {}        # ref -> (slide, stage, actor or None)

        def submit(i: int, k: int) -> None:
            kind, handle = runners[k]
            if kind == "task":
                flying[handle.remote(stages[k], slides[i], owner)] = (i, k, None)
            else:
                todo[k].append(i)

        def dispatch() -> None:
            for k, (kind, idle) in enumerate(runners):
                while kind == "actors" and todo[k] and idle:
                    actor = idle.pop()
                    i = todo[k].popleft()
                    flying[actor.run.remote(slides[i], owner)] = (i, k, actor)

        for i in range(len(slides)):
            submit(i, 0)
        dispatch()
        while flying:
            ready, _ = ray.wait(list(flying), num_returns=1)
            ref = ready[0]
            i, k, actor = flying.pop(ref)
            outcome = self._result(ray, ref, slides[i], stages[k])
            if actor is not None:
                runners[k][1].append(actor)  # a restarted actor keeps its handle
            done[i].append(outcome)
            if outcome.status in FINAL or k == len(stages) - 1:
                result = combine(stages, done[i])
                advance(result.count)
                finished(result)
            else:
                submit(i, k + 1)
            dispatch()

    def _runner(self, ray, stage: Stage, cpus: float) -> tuple[str, Any]:
        """("task", a remote function of ``cpus`` CPUs) for a stateless stage, ("actors", a pool)
        for one with state."""
        if stage.setup is None:
            options = {"num_cpus": cpus, "max_retries": self.max_retries}
            memory = self.memory_per_slide or stage.memory
            if memory:
                options["memory"] = memory
            return "task", ray.remote(_run_task).options(**options)
        gpus, n = self._worker_gpus(ray, stage), self._pool_size(ray, stage)
        actor = ray.remote(_StageWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=self.max_retries,
                                                 max_task_retries=self.max_retries)
        log.info("%s: %d worker(s) with %g CPU and %g GPU each", stage.name, n, cpus, gpus)
        return "actors", [actor.remote(stage) for _ in range(n)]

    def _worker_gpus(self, ray, stage: Stage) -> float:
        """GPUs per worker of a stage with state: ``gpus_per_worker``, else one where the cluster
        has GPUs and the stage can use one."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if stage.accelerated and ray.cluster_resources().get("GPU", 0) >= 1 else stage.gpus

    def _fit(self, ray, stages: list[Stage]) -> list[float]:
        """CPUs per task or worker of each stage, fitted to the cluster: a request larger than any
        node would wait forever, and on a one-node cluster the workers (which hold their CPUs for
        the whole batch) must leave room for a task, else neither could go on."""
        nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        biggest = max(nodes, default=1.0)
        wanted = [(self.cpus_per_slide if s.setup is None else self.cpus_per_worker) or s.cpus for s in stages]
        fitted = [min(c, biggest) for c in wanted]
        workers = [k for k, s in enumerate(stages) if s.setup is not None]
        tasks = [k for k, s in enumerate(stages) if s.setup is None]
        if len(nodes) == 1 and workers and tasks:
            task_need = min(max(fitted[k] for k in tasks), biggest - 0.5)
            held = sum(fitted[k] * self._pool_size(ray, stages[k]) for k in workers)
            if held > biggest - task_need:
                for k in workers:
                    fitted[k] *= (biggest - task_need) / held
            left = biggest - sum(fitted[k] * self._pool_size(ray, stages[k]) for k in workers)
            for k in tasks:
                fitted[k] = min(fitted[k], left)
        for stage, want, got in zip(stages, wanted, fitted, strict=True):
            if got < want:
                log.warning("%s: %g CPUs asked per %s, %.2g fit beside the others on this cluster (%s CPUs per node)",
                            stage.name, want, "task" if stage.setup is None else "worker", got,
                            ", ".join(f"{c:g}" for c in nodes))
        return fitted

    def _pool_size(self, ray, stage: Stage) -> int:
        """Workers of a stage with state: ``workers``, else one per GPU they take, else one."""
        gpus = self._worker_gpus(ray, stage)
        return self.workers or (max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus else 1)

    def _result(self, ray, ref, slide: SlideInput, stage: Stage) -> Outcome:
        """The outcome behind ``ref``; a worker that died beyond its retries fails the slide."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            message = one_line(exc).split(" Traceback")[0][:300]
            return Outcome(slide.slide_id, "failed", message=f"{stage.name}: the worker died and was retried "
                                                             f"{self.max_retries} times: {message}")
