"""Local copies of slides on shared storage (``--stage-dir``).

OpenSlide needs local files and network file systems are slow at the small random reads a
tiler makes, so a worker can copy a slide to local disk first, read the copy, and remove it.
Formats that keep their pixels beside the named file come with their companions: MIRAX
(``x.mrxs`` + the folder ``x/``), DICOM (every file of the slide's folder) and Hamamatsu VMS/VMU
(the files the index names, copied as the whole folder's files with the same stem).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import storage_errors
from .publish import temporary_folder


def companions(path: Path) -> list[Path]:
    """The files and folders a slide needs besides ``path`` itself."""
    suffix = path.suffix.lower()
    if suffix == ".mrxs":
        folder = path.with_suffix("")
        return [folder] if folder.is_dir() else []
    if suffix == ".dcm":
        return sorted(p for p in path.parent.iterdir() if p != path and p.is_file())
    if suffix in (".vms", ".vmu"):
        return sorted(p for p in path.parent.glob(f"{path.stem}*") if p != path and p.is_file())
    return []


@contextlib.contextmanager
def local_copy(path: str | Path, stage_dir: str | Path | None) -> Iterator[Path]:
    """``path`` itself without ``stage_dir``; else a copy of the slide (and its companions) in a
    fresh folder under ``stage_dir``, removed afterwards whatever happens (and, if this process
    is killed, by the next batch that cleans ``stage_dir``: :func:`pathology.publish.temporary_folder`).
    Modification times are kept, so the copy has the original's fingerprint. A full stage disk
    is a :class:`pathology.errors.StorageError` naming the copy."""
    path = Path(path)
    if stage_dir is None:
        yield path
        return
    with contextlib.ExitStack() as stack:
        with storage_errors(Path(stage_dir) / path.name):  # only the copying: the caller's errors pass
            folder = stack.enter_context(temporary_folder(stage_dir, f"stage-{path.name}"))
            for item in [path, *companions(path)]:
                target = folder / item.name
                if item.is_dir():
                    shutil.copytree(item, target)
                else:
                    shutil.copy2(item, target)
        yield folder / path.name
