"""Errors a user can fix, and how any failure is classed (docs/architecture.md, "Errors").

Every error that a user can fix (a bad file, manifest, parameter, weights file or run folder)
derives from :class:`UserError`: the command lines print it as one line (exit 2 before any
work, or a failed slide in a batch). So does an environment problem the user must fix (a full
disk, a folder without write permission, a failing disk): :class:`StorageError` names the file
and says what the machine refused. Anything else is a bug in this software: it is reported as
one, with its type, and ``-v`` prints the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """Base of every error a user can fix; ``str()`` is the message to print (names the file,
    row or field)."""


class InputError(UserError):
    """Bad command-line inputs or parameters; the message lists every problem, one per line."""


# OSErrors that come from the machine, not from this software: the user frees space, fixes
# permissions or mounts; the message names the file.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                                errno.EMFILE, errno.ENFILE, errno.ENOTDIR, errno.EISDIR, errno.EEXIST})

# What the user reads for the storage errors worth a sentence of their own; others get strerror.
STORAGE_PROBLEMS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error: the disk or network file system failed (EIO)",
}

# HDF5 reports a failed system call inside its own message ("..., errno = 28, error message =
# 'No space left on device', ...") and h5py raises it as an OSError without ``errno`` or as a
# RuntimeError; the number is recovered from the text.
_ERRNO_IN_TEXT = re.compile(r"\berrno = (\d+)")
LOW_SPACE = 1 << 20  # a file system with less free space than this is full for any write


class StorageError(UserError):
    """A file could not be written (or read back) because of the storage: a full disk, a
    read-only file system, missing permissions, an I/O error. ``str()`` names the file the
    user knows (the bag, not its temporary name) and the problem."""

    def __init__(self, path: str | Path, errnum: int | None, action: str = "write"):
        self.path, self.errno = str(path), errnum
        problem = STORAGE_PROBLEMS.get(errnum) or (os.strerror(errnum) if errnum else "input/output error")
        super().__init__(f"cannot {action} {self.path}: {problem}" if action else f"{self.path}: {problem}")


def storage_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, also when HDF5 put it in the message text; None otherwise."""
    if isinstance(exc, StorageError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (OSError, RuntimeError)):
        found = _ERRNO_IN_TEXT.search(str(exc))
        return int(found.group(1)) if found else None
    return None


def storage_error(exc: BaseException, path: str | Path, action: str = "write") -> StorageError | None:
    """``exc`` as a :class:`StorageError` naming ``path`` (``action``: "write" or "read"), when
    the machine caused it: an environment errno (also one HDF5 wrote into its message), or a
    failure without an errno on a file system with no space left. None for anything else (a
    bug stays a bug)."""
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    errnum = storage_errno(exc)
    if errnum in ENVIRONMENT_ERRNOS:
        return StorageError(path, errnum, action)
    if errnum is None and _free_space(path) < LOW_SPACE:
        return StorageError(path, errno.ENOSPC, action)
    return None


def _free_space(path: str | Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``path`` (huge if unknown)."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 1 << 62


@contextlib.contextmanager
def storage_errors(path: str | Path, action: str = "write") -> Iterator[None]:
    """Raise a failure of the storage inside the block as a :class:`StorageError` naming
    ``path`` (see :func:`storage_error`); anything else passes unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = storage_error(exc, path, action)
        if error is None or error is exc:
            raise
        raise error from exc


def is_user_fixable(exc: BaseException) -> bool:
    """True for a :class:`UserError` and for an environment OSError (full disk, permissions),
    also when HDF5 reports it in the message of another exception type."""
    return isinstance(exc, UserError) or storage_errno(exc) in ENVIRONMENT_ERRNOS


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """What a user reads about a failure: the message of a user-fixable error (an environment
    error as the file and the problem, without HDF5's internals); for a bug, its type and
    message, marked as a bug."""
    if isinstance(exc, UserError):
        return one_line(exc)
    if is_user_fixable(exc):
        errnum = storage_errno(exc)
        path = getattr(exc, "filename", None) or _hdf5_file(str(exc))
        if path:
            return one_line(StorageError(path, errnum, ""))
        return STORAGE_PROBLEMS.get(errnum) or one_line(exc)
    return f"bug: {type(exc).__name__}: {one_line(exc)}"


def _hdf5_file(text: str) -> str | None:
    found = re.search(r"\b(?:file)?name = '([^']+)'", text)
    return found.group(1) if found else None
