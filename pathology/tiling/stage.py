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


def tile_stage(out: Path, options: TileOptions, threads: int, stage_dir: Path | None = None,
               on_bad_tile: str = "fail", verify_slides: bool = False) -> Stage:
    """Tile each slide into ``out`` with ``threads`` decode threads (the CPUs a task reserves),
    reading a local copy in ``stage_dir`` when given; ``on_bad_tile`` and ``verify_slides`` as in
    :func:`pathology.tiling.pipeline.tile_slide`."""
    return Stage("tile", partial(tile_job, out=out, options=options, threads=threads, stage_dir=stage_dir,
                                 on_bad_tile=on_bad_tile, verify_slides=verify_slides),
                 claim=partial(bag_output, out), cpus=threads)
