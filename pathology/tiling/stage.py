"""Tiling as a batch stage: one slide into ``<out>/<slide_id>.h5``, claimed while it is made."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..inputs import SlideInput
from ..jobs import Stage
from .pipeline import TileOptions, tile_job


def bag_output(out: Path, slide: SlideInput) -> Path:
    """The bag a slide is tiled into."""
    return Path(out) / f"{slide.slide_id}.h5"


def tile_stage(out: Path, options: TileOptions, threads: int, stage_dir: Path | None = None) -> Stage:
    """Tile each slide into ``out`` with ``threads`` decode threads (the CPUs a task reserves),
    reading a local copy in ``stage_dir`` when given."""
    return Stage("tile", partial(tile_job, out=out, options=options, threads=threads, stage_dir=stage_dir),
                 claim=partial(bag_output, out), cpus=threads)
