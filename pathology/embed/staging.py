"""A bag rewritten atomically without the rewrite costing the encoder its time.

``embed`` writes features into a copy of the bag and renames it over the original, so an
interrupted run never leaves a half-written HDF5 file. With stored patches (~200 KB each)
both ends of that are slow next to a fast encoder: copying the bag, and freeing the
replaced file's blocks (rename frees them inline, ~40 ms for a 240 MB bag on ext4). So
the copy is made on a background thread while the encoder runs (the kernel copies, with
``copy_file_range``, which shares the extents instead of copying them on XFS, btrfs and
ZFS; the GIL is free meanwhile), and the replaced file is kept alive by a hard link across
the rename and deleted on a background thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from ..errors import storage_errors
from ..publish import commit, partial_path


def kernel_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` in the kernel: a reflink where the filesystem shares extents.
    Without ``copy_file_range`` (macOS, or refused between these filesystems), shutil's copy
    (sendfile on Linux, fcopyfile on macOS)."""
    done, size = -1, os.path.getsize(src)
    if hasattr(os, "copy_file_range"):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            done = 0
            try:
                while done < size:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                done = -1
    if done != size:
        shutil.copyfile(src, dst)


class StagedCopy:
    """``path`` copied to ``tmp`` (beside it) on a background thread, to be edited and then
    swapped in by :meth:`commit`, or dropped by :meth:`discard`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self._error: BaseException | None = None
        self._copying = threading.Thread(target=self._copy, name=f"copy {self.path.name}", daemon=True)
        self._copying.start()

    def _copy(self) -> None:
        try:
            with storage_errors(self.path):  # a full disk names the bag, not its temporary copy
                kernel_copy(self.path, self.tmp)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by ready()
            self._error = exc

    def ready(self) -> Path:
        """The complete copy, once the background copy is done (its error re-raised)."""
        self._copying.join()
        if self._error is not None:
            raise self._error
        return self.tmp

    def commit(self) -> threading.Thread | None:
        """Atomically replace ``path`` by the edited copy; the thread freeing the old file's
        blocks (joined at interpreter exit), or None where they were freed inline."""
        old = partial_path(self.path).with_suffix(".old")
        try:
            os.link(self.path, old)
        except OSError:  # no hard links here: the rename frees the old file inline
            commit(self.tmp, self.path)
            return None
        commit(self.tmp, self.path)
        freeing = threading.Thread(target=old.unlink, name=f"free {old.name}")
        freeing.start()
        return freeing

    def discard(self) -> None:
        """Drop the copy (after the background copy has stopped); ``path`` is untouched."""
        self._copying.join()
        with contextlib.suppress(OSError):  # the error being raised is the one to report
            self.tmp.unlink(missing_ok=True)
