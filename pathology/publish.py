"""Publishing files atomically: write under a temporary name beside the target, rename when
complete (docs/architecture.md, "Files").

A file that exists is whole, and a failure never damages the previous version. The
temporary name is unique per host, process and thread (two jobs on a shared folder never
write the same one), starts with a dot, ends in ``.partial`` and is removed on failure. The
published file gets the permissions of a normally created file (the umask decides), even
when a library wrote the temporary file with a stricter mode. A failure of the storage (a
full disk, a read-only file system) is raised as a :class:`pathology.errors.StorageError`
that names the target, not its temporary name.

Temporary folders (:func:`temporary_folder`) are named the same way, so that what a killed
process left behind, files and folders, is recognised and removed by :func:`sweep_leftovers`
when the next batch starts (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import storage_error

PARTIAL_SUFFIX = ".partial"
LEFTOVER_SUFFIXES = (PARTIAL_SUFFIX, ".old")  # .old: a replaced bag kept alive while it is freed
HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()) or "host"


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def partial_path(path: str | Path) -> Path:
    """The temporary name for writing ``path``: ``.<name>.<host>.<pid>.<thread>.partial`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{threading.get_ident()}{PARTIAL_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def leftover_owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that wrote the temporary file ``path``, None for any other file."""
    name = path.name
    if not name.startswith(".") or not name.endswith(LEFTOVER_SUFFIXES):
        return None
    parts = name.rsplit(".", 4)  # [".<name>", host, pid, thread, suffix]
    if len(parts) != 5 or not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    return parts[1], int(parts[2])


def leftover_target(path: Path) -> Path:
    """The file a temporary file stands for: ``.<name>.<host>.<pid>.<thread>.partial`` -> ``<name>``."""
    return path.with_name(path.name[1:].rsplit(".", 4)[0])


def sweep_leftovers(folder: str | Path, recursive: bool = True, stale_after: float | None = None,
                    in_use: Callable[[Path], bool] = lambda target: False) -> list[Path]:
    """Remove the temporary files and folders that dead processes left in ``folder`` (a killed
    run). On this host, a process that no longer exists is dead. Another host's processes
    cannot be checked from here: with ``stale_after``, its temporary files (not folders: a
    scratch copy may sit unchanged while its slide is read) are removed once untouched for that
    many seconds and ``in_use(target)`` (e.g. a live claim on the file they stand for) is false;
    without it, they are kept. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        owner = leftover_owner(path)
        if owner is None or any(p in removed for p in path.parents):
            continue
        if owner[0] == HOST:
            dead = owner[1] != os.getpid() and not pid_alive(owner[1])
        else:
            dead = stale_after is not None and not path.is_dir() and _untouched_for(path, now) > stale_after \
                and not in_use(leftover_target(path))
        if dead and _remove(path):
            removed.append(path)
    return removed


def _untouched_for(path: Path, now: float) -> float:
    """Seconds since ``path`` was last modified (0 if it is gone)."""
    try:
        return now - path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> bool:
    """Remove a leftover file or folder; False if it was gone already."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def temporary_folder(parent: str | Path, name: str) -> Iterator[Path]:
    """A fresh folder ``.<name>.<host>.<pid>.<thread>.partial`` in ``parent`` for scratch files,
    removed afterwards whatever happens (and by :func:`sweep_leftovers` if this process is
    killed)."""
    folder = partial_path(Path(parent) / name)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def publishing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` at; on success it is renamed into place, on any
    failure (an exception, ``KeyboardInterrupt``) it is removed and the old file stays."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        commit(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        error = storage_error(exc, path) if isinstance(exc, Exception) else None
        if error is not None and error is not exc:
            raise error from exc
        raise


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Give the finished temporary file ``tmp`` normal permissions and rename it to ``path``
    (for writers that manage the temporary file themselves, named by :func:`partial_path`)."""
    try:
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc
    return Path(path)


def publish_with(path: str | Path, write: Callable[[IO], Any], mode: str = "wb") -> Path:
    """Open a temporary file in ``mode`` (text: UTF-8, no newline translation), call ``write``
    on it, and publish it as ``path``."""
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with publishing(path) as tmp, open(tmp, mode, **text) as fh:
        write(fh)
    return Path(path)


def publish_bytes(path: str | Path, data: bytes) -> Path:
    return publish_with(path, lambda fh: fh.write(data))


def publish_text(path: str | Path, text: str) -> Path:
    return publish_with(path, lambda fh: fh.write(text), mode="w")


def publish_json(path: str | Path, obj: Any, *, indent: int | None = 2, default: Callable | None = None) -> Path:
    """JSON without NaN/Infinity (not JSON; readers choke on them), newline-terminated when indented."""
    def write(fh: IO) -> None:
        json.dump(obj, fh, indent=indent, allow_nan=False, default=default,
                  separators=None if indent else (",", ":"))
        if indent is not None:
            fh.write("\n")
    return publish_with(path, write, mode="w")


def publish_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> Path:
    """A CSV with ``header``; rows are sequences in header order or dicts (missing keys left empty)."""
    def write(fh: IO) -> None:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(h, "") for h in header] if isinstance(row, dict) else row)
    return publish_with(path, write, mode="w")
