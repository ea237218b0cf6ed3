"""The whole flow on a synthetic cohort, with no download and no GPU (``pathology demo``).

cohort (slides + manifest) → tile → embed (offline ``stain-texture``) → multi-task MIL with
patient-level cross-validation → out-of-fold attention → heatmaps → report. Every stage
reuses finished work, so an interrupted demo resumes where it stopped. Layout of ``out``::

    cohort/ (slides/, manifest.csv, cohort.json)   bags/ (+ qc/)   run/ (the `mil train` run)
    attention/   heatmaps/<slide_id>/   report.html   demo_summary.json
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console

from mil.console import RichProgress
from mil.manifest import load_manifest
from mil.metrics import json_safe
from mil.predict import Run, load_run
from mil.train import TrainConfig, train_cross_validation

from ..batch import Outcome, run_batch, status_path
from ..cores import available_cores
from ..embed.run import EmbedOptions, embed_job
from ..encoders import load_encoder
from ..heatmap import HeatmapOptions, attention_file, heatmap_job
from ..heatmap.files import safe_name
from ..inputs import SlideInput
from ..publish import publish_json
from ..run.card import card_html
from ..run.report import SlideReport, TaskResult, write_report
from ..synth.cohort import SIZES, make_cohort
from ..tiling.pipeline import TileOptions, tile_job
from .attention import in_tumour, out_of_fold_attention, top_k_precision

log = logging.getLogger(__name__)

TARGETS = ("tumor", "er", "pr", "her2")
SURVIVAL = ("os_time", "os_event")
ENCODER = "stain-texture"
TOP_K = 5            # top-attention patches per tumour slide scored against the tumour mask
COHORT_NAME = "pathology demo: synthetic breast-cancer cohort"
INTENDED_USE = "trying the software on synthetic slides; not for tissue"


class DemoError(RuntimeError):
    """A stage of the demo could not finish (the message names the stage and the slide)."""


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo_out")
    size: str = "default"           # a key of pathology.synth.cohort.SIZES
    seed: int = 0
    model: str = "gated-abmil"      # on this cohort: the best tumour attention and receptor AUCs
    folds: int = 5
    epochs: int = 40
    lr: float = 1e-3
    stain: str = "macenko"


@dataclass
class DemoResult:
    metrics: dict
    tumour_precision: float
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)


def _check(outcomes: list[Outcome], stage: str) -> None:
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise DemoError(f"{stage}: {len(failed)} slide(s) failed, first {failed[0].slide_id}: {failed[0].message}")


def run_demo(options: DemoOptions, console: Console) -> DemoResult:
    """Run every stage into ``options.out``; raises :class:`DemoError` if a stage fails."""
    out, size, cores = Path(options.out), SIZES[options.size], available_cores()
    seconds: dict[str, float] = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        seconds[name] = time.perf_counter()

    def done(name: str) -> None:
        seconds[name] = time.perf_counter() - seconds[name]

    stage("1 cohort")
    info = make_cohort(out / "cohort", n_slides=size.n_slides, n_patients=size.n_patients, seed=options.seed,
                       width=size.width, height=size.height, mpp=size.mpp, workers=cores, console=console)
    _check(info.outcomes, "cohort")
    slides = [SlideInput(s.slide_id, out / "cohort" / s.slide_path) for s in info.slides]
    done("1 cohort")

    stage("2 tile")
    bags_dir = out / "bags"
    tiling = TileOptions(stain=options.stain)
    _check(run_batch(slides, functools.partial(tile_job, out=bags_dir, options=tiling, threads=cores),
                     console=console, status=status_path(bags_dir), clean=[bags_dir]), "tile")
    bags = {s.slide_id: bags_dir / f"{s.slide_id}.h5" for s in slides}
    done("2 tile")

    stage("3 embed")
    encoder = load_encoder(ENCODER, device="auto")
    bag_inputs = [SlideInput(sid, path) for sid, path in bags.items()]
    _check(run_batch(bag_inputs, functools.partial(embed_job, encoder=encoder, options=EmbedOptions(threads=cores)),
                     console=console, status=status_path(bags_dir, stem="status.embed"), clean=[bags_dir]), "embed")
    done("3 embed")

    stage("4 train")
    cohort = load_manifest(info.manifest_path, targets=TARGETS, survival=SURVIVAL, bags_dir=bags_dir)
    # the demo's 24 slides train with the 0.1.0 recipe (the early-stopped model of one inner split, 8 bags a
    # step, standardized features): a third of the default recipe's training time, and enough steps per
    # epoch for its Cox head
    config = TrainConfig(model=options.model, targets=TARGETS, survival=SURVIVAL, folds=options.folds,
                         seed=options.seed, epochs=options.epochs, lr=options.lr, patience=10, in_memory=True,
                         survival_loss="cox", refit=False, batch_size=8, scaling="standard",
                         calibration="temperature", synthetic=True, cohort_name=COHORT_NAME,
                         intended_use=INTENDED_USE)
    with RichProgress(console) as progress:
        metrics = train_cross_validation(cohort, config, out / "run", progress)
    done("4 train")

    stage("5 attention and heatmaps")
    run = load_run(out / "run")
    scores = out_of_fold_attention(run, bags, out / "attention")
    heat = HeatmapOptions(max_size=768, top_k=6)
    _check(run_batch(bag_inputs, functools.partial(heatmap_job, attention=attention_file(out / "attention"),
                                                   out=out / "heatmaps", options=heat),
                     console=console, status=status_path(out / "heatmaps"), clean=[out / "heatmaps"]), "heatmaps")
    precision = tumour_attention_precision(cohort, bags, slides, out / "attention")
    done("5 attention and heatmaps")

    report = demo_report(out, run, cohort, scores, metrics, precision)
    summary = {"metrics": {t: m["metrics"] for t, m in metrics["tasks"].items()},
               "tumour_attention_precision": precision, "top_k": TOP_K, "seconds": seconds,
               "options": {k: str(v) for k, v in options.__dict__.items()}}
    publish_json(out / "demo_summary.json", json_safe(summary), default=str)
    return DemoResult(metrics, precision, report, seconds)


def tumour_attention_precision(cohort, bags: dict[str, Path], slides: list[SlideInput], attention_dir: Path) -> float:
    """Pooled share of the tumour task's top-``TOP_K`` attention patches whose centre lies in
    the ground-truth tumour, over the slides labelled tumour-positive."""
    labels = dict(zip(cohort.table["slide_id"], cohort.labels("tumor")))
    paths = {s.slide_id: s.path for s in slides}
    hits = total = 0
    for sid, label in labels.items():
        if label != 1:
            continue
        with h5py.File(attention_dir / f"{sid}.h5", "r") as f:
            attention, coords = f["attention/tumor"][:], f["coords"][:]
        with h5py.File(bags[sid], "r") as f:
            size0 = float(np.mean(f["coords"].attrs["patch_size_level0"]))
        h, k = top_k_precision(attention, in_tumour(paths[sid], coords, size0), TOP_K)
        hits, total = hits + h, total + k
    return hits / total if total else float("nan")


def demo_report(out: Path, run: Run, cohort, scores: dict[str, dict[str, float]], metrics: dict,
                precision: float) -> Path:
    """report.html: metrics, ROC/KM pictures, then every slide with its out-of-fold calls and heatmaps."""
    thresholds = run.config.thresholds
    reports = []
    for sid in cohort.table["slide_id"]:
        folder = out / "heatmaps" / sid
        tasks = [TaskResult(t, kind, scores[sid][t], thresholds.get(t) if kind == "binary" else None,
                            folder / f"{safe_name(t)}.heatmap.png") for t, kind in run.kinds.items()]
        with h5py.File(out / "bags" / f"{sid}.h5", "r") as f:
            n = len(f["coords"])
        reports.append(SlideReport(sid, "done", n, thumbnail=out / "bags" / "qc" / f"{sid}.png", tasks=tasks))
    rows = []
    for task, summary in metrics["tasks"].items():
        for name, m in summary["metrics"].items():
            ci = m.get("ci95") or [None, None]
            rows.append((task, name, _fmt(m.get("mean")), _fmt(m.get("pooled")),
                         f"{_fmt(ci[0])}–{_fmt(ci[1])}"))
    figures = [*sorted((out / "run").glob("roc_*.png")), *sorted((out / "run").glob("km_*.png")),
               *sorted((out / "run").glob("reliability_*.png"))]
    return write_report(reports, out, title="pathology demo · synthetic cohort", model=str((out / "run").resolve()),
                        metrics=rows, figures=figures, card=card_html(run),
                        notes=[f"Out-of-fold predictions of {run.config.model.name} "
                               f"({len(run.models)}-fold patient-level cross-validation); each slide's scores and "
                               "heatmaps come from the fold model that did not train on it.",
                               f"Tumour task: {precision:.0%} of the top-{TOP_K} attention patches of tumour slides "
                               "lie in the ground-truth tumour.",
                               "Synthetic data: the tissue cues of ER, PR and HER2 are made up for the demo."])


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
