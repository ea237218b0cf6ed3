"""The heatmap outputs as files, each published atomically (:mod:`pathology.publish`)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from ..publish import publish_csv, publish_json, publish_with


def safe_name(name: str) -> str:
    """``name`` usable in a file name (task names come from manifest columns)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def write_png(path: Path, image: Image.Image) -> Path:
    return publish_with(path, lambda fh: image.save(fh, format="PNG", compress_level=3))


def write_json(path: Path, obj: dict) -> Path:
    """Compact JSON (GeoJSON of thousands of patches)."""
    return publish_json(path, obj, indent=None)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    return publish_csv(path, header, rows)
