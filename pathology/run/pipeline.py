"""One slide through the whole chain with a trained model: tile → embed → predict → heatmap.

Three stages (:mod:`pathology.jobs`): tile, embed (a worker keeps the encoder loaded) and
predict (a worker keeps the run's fold models loaded), so any executor can stream slides
through them. Each stage reuses what is already there (a complete bag with the same tiling,
features from the same encoder weights), so rerunning a batch after an interruption redoes
only the missing work. Outputs of ``pathology run --out DIR``::

    DIR/bags/<slide_id>.h5, DIR/bags/qc/<slide_id>.png     tiling (+ features)
    DIR/attention/<slide_id>.h5                            per-patch attention per task
    DIR/heatmaps/<slide_id>/<task>.{heatmap.png,montage.png,scores.csv,geojson}
    DIR/results.csv, DIR/report.html                       one row / one card per slide

``results.csv`` has, per task: binary ``<task>_score, <task>_call, <task>_threshold``;
multiclass ``<task>_call`` and ``<task>_p_<class>`` per class; regression ``<task>_value``;
survival ``<task>_risk``. A run trained with clinical covariates takes each slide's values
from ``PredictOptions.covariates`` (``pathology run --clinical``); a patient-level run scores
each slide as its own bag (pooling a patient's slides is ``mil predict --manifest``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h5py

from mil.assess import NOT_RELIABLE, assess_slide
from mil.predict import Run, class_map, load_run, predict_file

from ..embed import EmbedOptions
from ..embed.stage import EncoderChoice, embed_stage
from ..errors import UserError
from ..heatmap import HeatmapOptions, heatmap_slide
from ..heatmap.files import safe_name
from ..heatmap.sources import attention_file
from ..inputs import SlideInput
from ..jobs import Outcome, Stage
from ..publish import publish_csv
from ..roi import RoiSource
from ..tiling.pipeline import TileOptions
from ..tiling.stage import tile_stage
from .report import SlideReport, TaskResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOptions:
    """Where the trained run is and where a slide's predictions and heatmaps go."""

    run_dir: Path
    out: Path
    heatmap: HeatmapOptions
    device: str = "auto"
    covariates: dict[str, dict[str, object]] | None = None   # slide_id -> covariate values (--clinical)
    clinical: Path | None = None                             # the table they came from, for messages

    @property
    def bags(self) -> Path:
        return self.out / "bags"

    def load(self) -> Run:
        return load_run(self.run_dir, device=self.device)


def predict_slide(slide: SlideInput, advance: Callable[[int], None], *, options: PredictOptions) -> Outcome:
    """Predict one tiled and embedded slide with every fold model and draw its heatmaps; the
    scores travel back to the driver in ``Outcome.data``. The run's fold models are loaded for
    each slide (a few small safetensors files: milliseconds), so this stage holds no worker."""
    t0 = time.perf_counter()
    run = options.load()
    sid = slide.slide_id
    bag = options.bags / f"{sid}.h5"
    with h5py.File(bag, "r") as f:
        empty = len(f["coords"]) == 0
    if empty:
        raise UserError(f"{slide.path}: no tissue found (see {options.bags / 'qc' / (sid + '.png')})")
    covariates = None
    if run.covariates:
        covariates = (options.covariates or {}).get(sid)
        if covariates is None:
            raise UserError(f"{slide.path}: no row for slide {sid!r} in the clinical table {options.clinical} "
                            f"(the run needs {', '.join(run.covariates)})")
    scores, n = predict_file(run, sid, bag, options.out, run.features, covariates)
    heatmap_slide(bag, attention_file(options.out / "attention" / f"{sid}.h5"), options.out / "heatmaps",
                  options.heatmap)
    calls = ", ".join(f"{t.task} {t.call} {t.score:.2f}" for t in task_results(run, sid, scores, options.out))
    trust = assess_slide(run, bag)
    calls += "" if trust.reliable else f" ({NOT_RELIABLE})"
    return Outcome(sid, "done", n, time.perf_counter() - t0, calls, data={"scores": scores, "trust": trust.to_data()})


def run_stages(options: PredictOptions, tiling: TileOptions, encoder: EncoderChoice, embed: EmbedOptions,
               threads: int, stage_dir: Path | None = None, rois: RoiSource | None = None) -> list[Stage]:
    """tile → embed → predict and draw, each slide entering a stage as soon as it leaves the last;
    tiling reads a local copy of the slide in ``stage_dir`` when given, and tiles only inside each
    slide's ROI when ``rois`` has one."""
    return [tile_stage(options.bags, tiling, threads, stage_dir, rois=rois),
            embed_stage(encoder, embed, bags_dir=options.bags),
            Stage("predict", partial(predict_slide, options=options))]


def task_results(run: Run, slide_id: str, scores: dict, out: Path) -> list[TaskResult]:
    """Each task's score and call (binary: at the run's cut-off; multiclass: the most probable
    class) with its heatmaps."""
    folder = out / "heatmaps" / slide_id
    results = []
    for head in run.config.heads:
        score = scores[head.name]
        heatmap = folder / f"{safe_name(head.name)}.heatmap.png"
        if head.kind == "multiclass":
            probs = tuple(map(float, score))
            maps = tuple(folder / f"{safe_name(class_map(head.name, c))}.heatmap.png" for c in head.classes)
            results.append(TaskResult(head.name, head.kind, max(probs), None, heatmap, head.classes, probs,
                                      maps if all(m.exists() for m in maps) else ()))
        else:
            results.append(TaskResult(head.name, head.kind, float(score), head.threshold if head.kind == "binary"
                                      else None, heatmap, head.classes))
    return results


def slide_reports(outcomes: list[Outcome], run: Run, out: Path) -> list[SlideReport]:
    """One report card per slide, from the outcomes the driver received."""
    reports = []
    for o in outcomes:
        scores = o.data.get("scores")
        tasks = task_results(run, o.slide_id, scores, out) if o.status == "done" and scores else []
        reports.append(SlideReport(o.slide_id, o.status, o.count, o.message if o.status == "failed" else "",
                                   thumbnail=out / "bags" / "qc" / f"{o.slide_id}.png", tasks=tasks))
    return reports


RESULT_COLUMNS = {  # kind -> results.csv columns of a task (multiclass adds one probability per class)
    "binary": ("score", "call", "threshold"),
    "multiclass": ("call",),
    "regression": ("value",),
    "survival": ("risk",),
}


def results_rows(reports: list[SlideReport], outcomes: list[Outcome], run: Run) -> tuple[list[str], list[dict]]:
    """``results.csv``: one row per slide with each task's columns (:data:`RESULT_COLUMNS`)."""
    header = ["slide_id", "status", "patches"]
    for head in run.config.heads:
        header += [f"{head.name}_{c}" for c in RESULT_COLUMNS[head.kind]]
        header += [f"{head.name}_p_{c}" for c in head.classes] if head.kind == "multiclass" else []
    header.append("message")
    rows = []
    for report, o in zip(reports, outcomes, strict=True):
        row: dict = {"slide_id": o.slide_id, "status": o.status, "patches": o.count, "message": o.message}
        for t in report.tasks:
            row.update(_result_cells(t))
        rows.append(row)
    return header, rows


def _result_cells(t: TaskResult) -> dict:
    if t.kind == "binary":
        return {f"{t.task}_score": f"{t.score:.6f}", f"{t.task}_call": t.call, f"{t.task}_threshold": t.threshold}
    if t.kind == "multiclass":
        return {f"{t.task}_call": t.call, **{f"{t.task}_p_{c}": f"{p:.6f}" for c, p in zip(t.classes, t.probabilities)}}
    column = "value" if t.kind == "regression" else "risk"
    return {f"{t.task}_{column}": f"{t.score:.6f}" if math.isfinite(t.score) else ""}


def write_results(path: Path, header: list[str], rows: list[dict]) -> None:
    """Write ``results.csv`` atomically."""
    publish_csv(path, header, rows)
