"""Errors a user can fix, and how any failure is classed (docs/architecture.md, "Errors").

Every error that a user can fix (a bad file, manifest, parameter, weights file or run folder)
derives from :class:`UserError`: the command lines print it as one line (exit 2 before any
work, or a failed slide in a batch). So does an environment problem the user must fix (a full
disk, a folder without write permission). Anything else is a bug in this software: it is
reported as one, with its type, and ``-v`` prints the traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Base of every error a user can fix; ``str()`` is the message to print (names the file,
    row or field)."""


class InputError(UserError):
    """Bad command-line inputs or parameters; the message lists every problem, one per line."""


# OSErrors that come from the machine, not from this software: the user frees space, fixes
# permissions or mounts; the message names the file.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                                errno.EMFILE, errno.ENFILE, errno.ENOTDIR, errno.EISDIR, errno.EEXIST})


def is_user_fixable(exc: BaseException) -> bool:
    """True for a :class:`UserError` and for an environment OSError (full disk, permissions)."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """What a user reads about a failure: the message of a user-fixable error; for a bug, its
    type and message, marked as a bug."""
    if is_user_fixable(exc):
        return one_line(exc)
    return f"bug: {type(exc).__name__}: {one_line(exc)}"
