"""``pathology run``: the pathologist's command: slides in, scores, calls and heatmaps out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from mil.predict import case_covariates, load_run

from ..batch import run_batch, status_path, summary_table
from ..cores import available_cores
from ..embed import EmbedOptions
from ..embed.stage import EncoderChoice
from ..errors import InputError
from ..heatmap import NORMALIZERS, HeatmapOptions
from ..inputs import expand_inputs, parse_shard, take_shard
from ..roi import roi_source
from ..run.card import card_html, model_line
from ..run.pipeline import PredictOptions, results_rows, run_stages, slide_reports, write_results
from ..run.report import write_report
from ..run.settings import check_encoder, encoder_settings, tile_options
from ..run.trust import attach, trust_columns, trust_summary
from .common import (
    Address,
    CpusPerSlide,
    CpusPerWorker,
    Device,
    Executor,
    ExecutorChoice,
    ExecutorName,
    GpusPerWorker,
    MemoryPerSlide,
    Mpp,
    Out,
    Quiet,
    RunFolder,
    Shard,
    StageDir,
    Verbose,
    exit_if_failed,
    reported,
    setup_logging,
)


def run_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path; optional mpp, roi_path).",
                                                show_default=False)],
    model: RunFolder(),
    out: Out("Output folder (bags, attention, heatmaps, results.csv, status.csv, report.html)."),
    weights: Annotated[Path | None, typer.Option(help="Encoder weights file, if the run's encoder needs one "
                                                      "that is not in the local cache.", dir_okay=False)] = None,
    mpp: Mpp = None,
    roi: Annotated[Path | None, typer.Option(help="GeoJSON annotation (QuPath export, level-0 pixels) of the region "
                                                  "to analyse: one file for one slide, or a folder of "
                                                  "<slide_id>.geojson. A manifest's roi_path column also works.",
                                             show_default=False)] = None,
    roi_class: Annotated[list[str] | None, typer.Option(help="Only ROI annotations of this QuPath class (e.g. "
                                                             "Tumor); repeatable.", show_default=False)] = None,
    stain_ref: Annotated[Path | None, typer.Option(help="The custom stain reference the run was trained with.",
                                                   exists=True, dir_okay=False)] = None,
    clinical: Annotated[Path | None, typer.Option(help="Table of each slide's clinical covariates (columns slide_id "
                                                       "and the run's covariates), for a run trained with them.",
                                                  exists=True, dir_okay=False)] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per encoder forward pass.")] = 64,
    normalize: Annotated[str, typer.Option(help=f"Heatmap normalization: {', '.join(NORMALIZERS)}.")]
    = "percentile",
    max_size: Annotated[int, typer.Option(min=16, help="Longer side of the heatmap pictures, px.")] = 1024,
    top_k: Annotated[int, typer.Option(min=0, help="Patches in each half of the heatmap montages.")] = 8,
    shard: Shard = None,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_slide: CpusPerSlide = None,
    memory_per_slide: MemoryPerSlide = None,
    cpus_per_worker: CpusPerWorker = None,
    gpus_per_worker: GpusPerWorker = None,
    stage_dir: StageDir = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Apply a trained model to slides: tile → embed → predict → heatmap, with the tiling and
    encoder settings the model was trained with (a mismatch is an error).

    Writes OUT/results.csv (one row per slide: each task's score and call with its cut-off, class
    probabilities, value or risk), OUT/heatmaps/<slide>/ and OUT/report.html. A run trained with
    clinical covariates needs --clinical. Reruns reuse finished bags and features.
    A bad slide is reported and skipped; exit code 1 if any failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    choice = ExecutorChoice(executor.value, 1, address, cpus_per_slide, memory_per_slide, cpus_per_worker,
                            gpus_per_worker)
    with reported(console):
        shard_spec = parse_shard(shard)
        slides = take_shard(expand_inputs(inputs), shard_spec)
        rois = roi_source(roi, inputs, [s.slide_id for s in slides], roi_class or ())
        for s in slides:        # every ROI file read once up front: a bad one stops the batch before any work
            rois.load(s.slide_id)
        run = load_run(model, device=device if choice.is_local else "cpu")
        if run.covariates and clinical is None:
            raise InputError(f"{model}: the run uses clinical covariates ({', '.join(run.covariates)}); give each "
                             f"slide's values with --clinical TABLE (columns slide_id, {', '.join(run.covariates)})")
        covariates = case_covariates(run, clinical) if run.covariates else None
        tiling = tile_options(run.config, model, mpp=mpp, stain_ref=stain_ref)
        features = encoder_settings(run.config, model)
        threads = available_cores() if choice.is_local else choice.slide_threads(len(slides))[1]
        encoder = EncoderChoice(features.encoder, weights, device=device, threads=choice.worker_threads())
        loaded = (encoder if choice.is_local else EncoderChoice(features.encoder, weights, device="cpu")).load()
        check_encoder(loaded, features)  # the run's encoder and weights, before any slide is touched
        heat = HeatmapOptions(normalization=normalize, max_size=max_size, top_k=top_k)
        options = PredictOptions(model, out, heat, device, covariates, clinical)
        stages = run_stages(options, tiling, encoder, EmbedOptions(batch_size=batch_size, threads=threads), threads,
                            stage_dir, rois or None)
        engine = choice.build(states=[None, loaded, None])
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    torch.set_num_threads(available_cores())
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_batch(slides, stages, executor=engine, unit="patches", console=console,
                         status=status_path(out, shard_spec), clean=[out, *([stage_dir] if stage_dir else [])])
    reports = slide_reports(outcomes, run, out)
    attach(reports, outcomes)
    write_results(out / "results.csv", *trust_columns(*results_rows(reports, outcomes, run), outcomes))
    report = write_report(reports, out, title=f"pathology run · {model.name}", model=str(model.resolve()),
                          notes=["Scores are model outputs for research use, not a diagnosis. Heatmaps show "
                                 "where the model looked (attention), not where the disease is."], card=card_html(run))
    Console().print(summary_table(outcomes))
    console.print(f"model: {model_line(run)}", highlight=False)
    for line in trust_summary(reports):
        console.print(f"[bold red]warning:[/] {line}", highlight=False)
    console.print(f"results: {out / 'results.csv'} · report: {report}")
    exit_if_failed(outcomes)
