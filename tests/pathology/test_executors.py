"""Executors: local (inline, processes) and Ray give the same outcomes, stream slides through
stages, build a stage's state once per worker, keep going past a bad slide, and retry a slide
whose worker died."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pathology.batch import run_batch
from pathology.errors import InputError
from pathology.executors import EXECUTORS, LocalExecutor
from pathology.inputs import SlideInput
from pathology.jobs import Outcome, Stage

ray = pytest.importorskip("ray", reason="the ray extra")  # CI installs it with .[test]


def write_stage(slide: SlideInput, advance) -> Outcome:
    """Stage 1: 'tile' = write the slide's output file (fails for a bad slide)."""
    if slide.slide_id.startswith("bad"):
        raise InputError(f"{slide.path}: not a slide")
    out = slide.path.with_suffix(".out")
    out.write_text(slide.slide_id)
    advance(2)
    return Outcome(slide.slide_id, "done", 2, message=f"pid {os.getpid()}")


def setup_counter() -> dict:
    """Stage 2's state, built once per worker: counts how many states were built in this process."""
    setup_counter.built = getattr(setup_counter, "built", 0) + 1
    return {"pid": os.getpid(), "built": setup_counter.built}


def read_stage(slide: SlideInput, advance, state: dict) -> Outcome:
    """Stage 2: 'embed' = read stage 1's output with the worker's state."""
    text = slide.path.with_suffix(".out").read_text()
    return Outcome(slide.slide_id, "done", len(text), data={"text": text, "state_pid": state["pid"],
                                                             "states_built": state["built"]})


def die_once(slide: SlideInput, advance) -> Outcome:
    """Kills its worker the first time it sees a slide (a marker file remembers), then succeeds."""
    marker = slide.path.with_suffix(".died")
    if not marker.exists():
        marker.write_text("x")
        os._exit(1)
    return Outcome(slide.slide_id, "done", 1)


def slides(tmp_path: Path, names: list[str]) -> list[SlideInput]:
    return [SlideInput(n, tmp_path / f"{n}.svs") for n in names]


STAGES = [Stage("tile", write_stage), Stage("embed", read_stage, setup=setup_counter)]


def outcomes_by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.slide_id: o for o in outcomes}


@pytest.mark.parametrize("executor", ["local", "processes", "ray"])
def test_executors_stream_slides_through_stages_and_go_past_a_bad_one(tmp_path, executor, request):
    if executor == "ray":
        request.getfixturevalue("local_ray")
    chosen = {"local": LocalExecutor(), "processes": LocalExecutor(workers=2), "ray": EXECUTORS["ray"]()}[executor]
    batch = slides(tmp_path, ["a", "b", "bad1", "c"])
    got = outcomes_by_id(run_batch(batch, STAGES, executor=chosen, status=tmp_path / "status.csv"))
    assert {sid: o.status for sid, o in got.items()} == {"a": "done", "b": "done", "bad1": "failed", "c": "done"}
    assert got["bad1"].message == f"tile: failed · {tmp_path / 'bad1.svs'}: not a slide" and not got["bad1"].bug
    for sid in "abc":
        assert got[sid].data["text"] == sid                            # stage 2 read what stage 1 wrote
        assert got[sid].message.startswith("tile: done, embed: done")
    # the embed state is built once per worker, not per slide
    per_worker = {got[s].data["state_pid"]: got[s].data["states_built"] for s in "abc"}
    assert all(built == 1 for built in per_worker.values())
    if executor == "ray":
        assert os.getpid() not in per_worker                           # ran in Ray's actor, not the driver


def test_ray_retries_a_slide_whose_worker_died(tmp_path, local_ray):
    batch = slides(tmp_path, ["a", "b"])
    got = outcomes_by_id(run_batch(batch, Stage("flaky", die_once), executor=EXECUTORS["ray"](max_retries=2)))
    assert {sid: o.status for sid, o in got.items()} == {"a": "done", "b": "done"}
    assert all(p.with_suffix(".died").exists() for p in (s.path for s in batch))  # each worker did die once


def test_without_ray_installed_the_ray_executor_is_one_line_of_bad_input(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'pathology-mil\[ray\]'"):
        EXECUTORS["ray"]().connect()
