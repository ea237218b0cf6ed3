"""One slide through the whole chain with a trained model: tile → embed → predict → heatmap.

Each stage reuses what is already there (a complete bag with the same tiling, features
from the same encoder weights), so rerunning a batch after an interruption redoes only
the missing work. Outputs of ``pathology run --out DIR``::

    DIR/bags/<slide_id>.h5, DIR/bags/qc/<slide_id>.png     tiling (+ features)
    DIR/attention/<slide_id>.h5                            per-patch attention per task
    DIR/heatmaps/<slide_id>/<task>.{heatmap.png,montage.png,scores.csv,geojson}
    DIR/results.csv, DIR/report.html                       one row / one card per slide
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mil.predict import Run, predict_file

from ..batch import Outcome
from ..embed import EmbedOptions, embed_bag
from ..encoders import Encoder
from ..errors import UserError
from ..heatmap import HeatmapOptions, heatmap_slide
from ..heatmap.files import safe_name
from ..heatmap.sources import attention_file
from ..inputs import SlideInput
from ..publish import publish_csv
from ..tiling.pipeline import TileOptions, tile_slide
from .report import SlideReport, TaskResult

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything a slide needs, built once per batch (the encoder and models stay loaded)."""

    run: Run
    encoder: Encoder
    tiling: TileOptions
    heatmap: HeatmapOptions
    out: Path
    threads: int = 2
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    reports: dict[str, SlideReport] = field(default_factory=dict)

    @property
    def bags(self) -> Path:
        return self.out / "bags"


def run_slide(slide: SlideInput, advance: Callable[[int], None], *, ctx: RunContext) -> Outcome:
    """Tile, embed, predict and draw one slide; records its :class:`SlideReport` in ``ctx``.

    Raises a :class:`pathology.errors.UserError` (one line) for a bad slide; the batch reports it and goes on."""
    t0 = time.perf_counter()
    sid = slide.slide_id
    tiled = tile_slide(slide.path, sid, ctx.bags, ctx.tiling, threads=ctx.threads)
    bag = ctx.bags / f"{sid}.h5"
    if tiled.status == "done" and tiled.count == 0:
        raise UserError(f"{slide.path}: no tissue found (see {ctx.bags / 'qc' / (sid + '.png')})")
    embedded = embed_bag(bag, ctx.encoder, ctx.embed, advance)
    scores, n = predict_file(ctx.run, sid, bag, ctx.out, ctx.run.features)
    heatmap_slide(bag, attention_file(ctx.out / "attention" / f"{sid}.h5"), ctx.out / "heatmaps", ctx.heatmap)
    thresholds = ctx.run.config.thresholds
    folder = ctx.out / "heatmaps" / sid
    tasks = [TaskResult(task, kind, scores[task], thresholds.get(task) if kind == "binary" else None,
                        folder / f"{safe_name(task)}.heatmap.png") for task, kind in ctx.run.kinds.items()]
    ctx.reports[sid] = SlideReport(sid, "done", n, thumbnail=ctx.bags / "qc" / f"{sid}.png", tasks=tasks)
    stages = "reused bag" if tiled.status == "skipped" else "tiled"
    stages += ", reused features" if embedded.status == "skipped" else ", embedded"
    calls = ", ".join(f"{t.task} {t.call if t.kind == 'binary' else 'risk'} {t.score:.2f}" for t in tasks)
    return Outcome(sid, "done", n, time.perf_counter() - t0, f"{stages}; {calls}")


def results_rows(outcomes: list[Outcome], ctx: RunContext) -> tuple[list[str], list[dict]]:
    """``results.csv``: one row per slide with each task's score, call and threshold."""
    tasks = list(ctx.run.kinds.items())
    header = ["slide_id", "status", "patches"]
    for task, kind in tasks:
        header += [f"{task}_score", f"{task}_call", f"{task}_threshold"] if kind == "binary" else [f"{task}_risk"]
    header.append("message")
    rows = []
    for o in outcomes:
        row: dict = {"slide_id": o.slide_id, "status": o.status, "patches": o.count, "message": o.message}
        report = ctx.reports.get(o.slide_id)
        if o.status == "done" and report:
            for t in report.tasks:
                if t.kind == "binary":
                    row.update({f"{t.task}_score": f"{t.score:.6f}", f"{t.task}_call": t.call,
                                f"{t.task}_threshold": t.threshold})
                else:
                    row[f"{t.task}_risk"] = f"{t.score:.6f}" if math.isfinite(t.score) else ""
        rows.append(row)
    return header, rows


def write_results(path: Path, header: list[str], rows: list[dict]) -> None:
    """Write ``results.csv`` atomically."""
    publish_csv(path, header, rows)
