"""IHC scoring as a batch stage: one slide into ``<out>/<slide_id>.json`` (and its maps), claimed
while it is scored."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..inputs import SlideInput
from ..jobs import Stage
from ..roi import RoiSource
from .pipeline import IHCOptions, ihc_job, result_path


def result_output(out: Path, slide: SlideInput) -> Path:
    return result_path(Path(out), slide.slide_id)


def ihc_stage(out: Path, options: IHCOptions, threads: int, rois: RoiSource | None = None,
              stage_dir: Path | None = None) -> Stage:
    """Score each slide into ``out`` with ``threads`` threads (the CPUs a task reserves), inside
    its ROI from ``rois`` when it has one, reading a local copy in ``stage_dir`` when given."""
    return Stage("ihc", partial(ihc_job, out=out, options=options, threads=threads, rois=rois, stage_dir=stage_dir),
                 claim=partial(result_output, out), cpus=threads)
