"""Claims: at most one process works on an output at a time, across drivers, job arrays and hosts.

Before a slide is processed, its worker creates ``.<output name>.claim`` beside the output with
``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+): the one that creates it
works, the others skip the slide. The claim holds the holder's host, pid and start time, and
the holder touches it every :data:`HEARTBEAT` seconds. A claim is stale, and taken over, when
its process is gone (same host) or it has not been touched for :data:`STALE_AFTER` seconds
(any host: a node that died), and when it was made by an earlier attempt of the same batch
run (``owner``: a retry after its worker died). Taking over is itself guarded by an ``O_EXCL``
file, so two processes that find the same stale claim never both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .publish import HOST, pid_alive

CLAIM_SUFFIX = ".claim"
HEARTBEAT = 30.0      # seconds between touches of a held claim
STALE_AFTER = 600.0   # a claim untouched this long belongs to a dead holder (a lost node)


def claim_path(output: str | Path) -> Path:
    """The claim file of ``output``: ``.<name>.claim`` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


@dataclass
class Holder:
    """Who holds a claim, as written in the claim file."""

    host: str
    pid: int
    started: float
    owner: str = ""       # the batch run that made the claim

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {time.strftime('%H:%M:%S', time.localtime(self.started))}"


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in claim file ``path``; None if it is gone or unreadable (half-written)."""
    try:
        record = json.loads(path.read_text())
        return Holder(str(record["host"]), int(record["pid"]), float(record["started"]), str(record.get("owner", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(path: Path, stale_after: float = STALE_AFTER) -> bool:
    """Whether the claim at ``path`` belongs to a dead holder."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_after:  # a live holder touches its claim; a lost node or a reused pid does not
        return True
    holder = read_holder(path)
    return holder is not None and holder.host == HOST and not pid_alive(holder.pid)


@dataclass
class Claim:
    """A held claim; :meth:`release` removes it (also on ``with`` exit)."""

    path: Path
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _beat: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self, every: float = HEARTBEAT) -> None:
        def beat() -> None:
            while not self._stop.wait(every):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._beat = threading.Thread(target=beat, name=f"claim {self.path.name}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, owner: str) -> bool:
    """Create the claim file exclusively with this process as holder; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"host": HOST, "pid": os.getpid(), "started": time.time(), "owner": owner}, fh)
    return True


def try_claim(output: str | Path, owner: str = "", stale_after: float = STALE_AFTER,
              heartbeat: float = HEARTBEAT) -> Claim | Holder:
    """Claim ``output`` for batch run ``owner``: the :class:`Claim` when this process may work on
    it, else the live :class:`Holder` that has it (the caller leaves the slide to it)."""
    path = claim_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path, owner):
            claim = Claim(path)
            claim.start_heartbeat(heartbeat)
            return claim
        holder = read_holder(path)
        ours = bool(owner) and holder is not None and holder.owner == owner  # an earlier attempt of this run
        if not ours and not is_stale(path, stale_after):
            return holder or Holder("?", 0, time.time())  # being written by its holder
        _take_over(path, stale_after, force=ours)
    return read_holder(path) or Holder("?", 0, time.time())


def _take_over(path: Path, stale_after: float, force: bool = False) -> None:
    """Remove the stale (or, with ``force``, our own earlier) claim at ``path`` unless another
    process is already doing so."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if time.time() - guard.stat().st_mtime > stale_after:  # a taker that died halfway
            guard.unlink(missing_ok=True)
        return
    os.close(fd)
    try:
        if force or is_stale(path, stale_after):  # still stale now that we alone may remove it
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def sweep_claims(folder: str | Path) -> list[Path]:
    """Remove the claims that dead processes of this host left in ``folder`` (a killed run)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(f".*{CLAIM_SUFFIX}"):
        holder = read_holder(path)
        if holder is not None and holder.host == HOST and not pid_alive(holder.pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
