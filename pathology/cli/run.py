"""``pathology run``: the pathologist's command: slides in, scores, calls and heatmaps out."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from mil.predict import load_run

from ..batch import run_batch, status_path, summary_table
from ..cores import available_cores
from ..embed import EmbedOptions
from ..encoders import load_encoder
from ..heatmap import NORMALIZERS, HeatmapOptions
from ..inputs import expand_inputs, parse_shard, take_shard
from ..run.pipeline import RunContext, results_rows, run_slide, write_results
from ..run.report import SlideReport, write_report
from ..run.settings import check_encoder, encoder_settings, tile_options
from .common import Device, Mpp, Out, Quiet, RunFolder, Shard, Verbose, exit_if_failed, reported, setup_logging


def run_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path).", show_default=False)],
    model: RunFolder(),
    out: Out("Output folder (bags, attention, heatmaps, results.csv, status.csv, report.html)."),
    weights: Annotated[Path | None, typer.Option(help="Encoder weights file, if the run's encoder needs one "
                                                      "that is not in the local cache.", dir_okay=False)] = None,
    mpp: Mpp = None,
    stain_ref: Annotated[Path | None, typer.Option(help="The custom stain reference the run was trained with.",
                                                   exists=True, dir_okay=False)] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per encoder forward pass.")] = 64,
    normalize: Annotated[str, typer.Option(help=f"Heatmap normalization: {', '.join(NORMALIZERS)}.")]
    = "percentile",
    max_size: Annotated[int, typer.Option(min=16, help="Longer side of the heatmap pictures, px.")] = 1024,
    top_k: Annotated[int, typer.Option(min=0, help="Patches in each half of the heatmap montages.")] = 8,
    shard: Shard = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Apply a trained model to slides: tile → embed → predict → heatmap, with the tiling and
    encoder settings the model was trained with (a mismatch is an error).

    Writes OUT/results.csv (one row per slide: each task's score and call with its cut-off),
    OUT/heatmaps/<slide>/ and OUT/report.html. Reruns reuse finished bags and features.
    A bad slide is reported and skipped; exit code 1 if any failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        shard_spec = parse_shard(shard)
        slides = take_shard(expand_inputs(inputs), shard_spec)
        run = load_run(model, device=device)
        tiling = tile_options(run.config, model, mpp=mpp, stain_ref=stain_ref)
        features = encoder_settings(run.config, model)
        encoder = load_encoder(features.encoder, weights, device=device)
        check_encoder(encoder, features)
        heat = HeatmapOptions(normalization=normalize, max_size=max_size, top_k=top_k)
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    threads = available_cores()
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run, encoder, tiling, heat, out, threads, EmbedOptions(batch_size=batch_size, threads=threads))
    outcomes = run_batch(slides, functools.partial(run_slide, ctx=ctx), unit="patches", console=console,
                         status=status_path(out, shard_spec))
    header, rows = results_rows(outcomes, ctx)
    write_results(out / "results.csv", header, rows)
    reports = [ctx.reports.get(o.slide_id) or SlideReport(o.slide_id, o.status, o.count, o.message)
               for o in outcomes]
    report = write_report(reports, out, title=f"pathology run · {model.name}", model=str(model.resolve()),
                          notes=["Scores are model outputs for research use, not a diagnosis. Heatmaps show "
                                 "where the model looked (attention), not where the disease is."])
    Console().print(summary_table(outcomes))
    console.print(f"results: {out / 'results.csv'} · report: {report}")
    exit_if_failed(outcomes)
