"""Claims and leftovers: one process per slide across drivers and job arrays; what a killed run
left behind is removed, and only that."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

from pathology.claims import Claim, Holder, claim_path, sweep_claims, try_claim
from pathology.publish import HOST, partial_path, sweep_leftovers


def _race(output: str, start, results, done) -> None:
    start.wait()
    got = try_claim(output, heartbeat=0.05)
    results.put(isinstance(got, Claim))
    done.wait(120)  # the winner holds it until every process has tried (a release before would let a late one in)
    if isinstance(got, Claim):
        got.release()


def test_eight_processes_racing_for_one_claim_one_wins(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results, done = ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "slide.h5"), start, results, done)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    wins = [results.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert sum(wins) == 1
    assert not claim_path(tmp_path / "slide.h5").exists()  # the winner released it


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_claim_of_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    output = tmp_path / "s.h5"
    mine = try_claim(output)
    assert isinstance(mine, Claim)
    other = try_claim(output)  # this process again, as another job would see it: held by a live pid
    assert isinstance(other, Holder) and other.pid == os.getpid() and other.host == HOST
    mine.release()
    claim_path(output).write_text(json.dumps({"host": HOST, "pid": dead_pid(), "started": time.time()}))
    taken = try_claim(output)
    assert isinstance(taken, Claim)
    assert json.loads(claim_path(output).read_text())["pid"] == os.getpid()
    taken.release()


def test_a_claim_untouched_for_too_long_is_stale_on_any_host(tmp_path):
    output = tmp_path / "s.h5"
    claim_path(output).write_text(json.dumps({"host": "other-node", "pid": 1, "started": 0}))
    assert isinstance(try_claim(output, stale_after=3600), Holder)  # fresh: the other node may be working
    old = time.time() - 7200
    os.utime(claim_path(output), (old, old))
    got = try_claim(output, stale_after=3600)
    assert isinstance(got, Claim)
    got.release()


def test_a_retry_of_the_same_batch_takes_over_its_own_claim(tmp_path):
    output = tmp_path / "s.h5"
    claim_path(output).write_text(json.dumps({"host": "lost-node", "pid": 7, "started": time.time(),
                                              "owner": "run-1"}))
    assert isinstance(try_claim(output, owner="run-2"), Holder)
    got = try_claim(output, owner="run-1")
    assert isinstance(got, Claim)
    got.release()


def test_a_held_claim_is_kept_fresh_by_its_heartbeat(tmp_path):
    got = try_claim(tmp_path / "s.h5", heartbeat=0.05)
    path = claim_path(tmp_path / "s.h5")
    os.utime(path, (0, 0))
    deadline = time.time() + 10
    while path.stat().st_mtime == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > 0
    got.release()


def test_sweep_removes_only_what_dead_local_processes_left(tmp_path):
    dead = dead_pid()
    (tmp_path / "qc").mkdir()
    gone = [tmp_path / f".a.h5.{HOST}.{dead}.140.partial", tmp_path / "qc" / f".a.png.{HOST}.{dead}.9.partial",
            tmp_path / f".a.h5.{HOST}.{dead}.140.old"]
    kept = [partial_path(tmp_path / "b.h5"),                       # this live process
            tmp_path / f".c.h5.other-node.{dead}.1.partial",       # another host: cannot tell
            tmp_path / "d.h5", tmp_path / ".hidden", tmp_path / f".e.h5.{HOST}.x.1.partial"]
    for path in gone + kept:
        path.write_bytes(b"x")
    claim_path(tmp_path / "a.h5").write_text(json.dumps({"host": HOST, "pid": dead, "started": 0}))
    claim_path(tmp_path / "b.h5").write_text(json.dumps({"host": HOST, "pid": os.getpid(), "started": 0}))
    assert sorted(sweep_leftovers(tmp_path)) == sorted(gone)
    assert sweep_claims(tmp_path) == [claim_path(tmp_path / "a.h5")]
    assert all(p.exists() for p in [*kept, claim_path(tmp_path / "b.h5")])
