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
import uuid
from collections.abc import Iterator
from pathlib import Path


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
    fresh folder under ``stage_dir``, removed afterwards whatever happens. Modification times
    are kept, so the copy has the original's fingerprint."""
    path = Path(path)
    if stage_dir is None:
        yield path
        return
    folder = Path(stage_dir) / f".slide-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        for item in [path, *companions(path)]:
            target = folder / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)
