"""Atomic writes of the heatmap outputs: a temporary name, then ``os.replace``, so a file
that exists is complete."""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from PIL import Image


def safe_name(name: str) -> str:
    """``name`` usable in a file name (task names come from manifest columns)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write`` on a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its 0600 mode would hide the outputs from colleagues; the umask decides
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        with open(tmp, mode, **({"newline": "", "encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_png(path: Path, image: Image.Image) -> Path:
    return write_atomic(path, lambda fh: image.save(fh, format="PNG", compress_level=3))


def write_json(path: Path, obj: dict) -> Path:
    return write_atomic(path, lambda fh: json.dump(obj, fh, separators=(",", ":"), allow_nan=False), mode="w")


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    def write(fh: IO) -> None:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)
    return write_atomic(path, write, mode="w")
