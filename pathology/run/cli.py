"""``pathology run``: the pathologist's command: slides in, scores, calls and heatmaps out."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from ..batch import run_batch, summary_table
from ..cli_exits import bad_input, exit_if_failed
from ..cores import available_cores
from ..embed import EmbedOptions
from ..encoders import WeightsError, load_encoder
from ..heatmap import NORMALIZERS, HeatmapOptions
from ..inputs import InputError, expand_inputs, parse_shard, take_shard
from ..logs import setup_logging
from .pipeline import RunContext, results_rows, run_slide, write_results
from .report import SlideReport, write_report
from .settings import SettingsError, check_encoder, encoder_settings, tile_options


def run_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path).", show_default=False)],
    model: Annotated[Path, typer.Option("--model", "-m", help="Trained run folder (the --out of `mil train`).",
                                        file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (bags, attention, heatmaps, "
                                                          "results.csv, report.html).")],
    weights: Annotated[Path | None, typer.Option(help="Encoder weights file, if the run's encoder needs one "
                                                      "that is not in the local cache.", dir_okay=False)] = None,
    mpp: Annotated[float | None, typer.Option(help="Level-0 µm/px for slides without it (plain images).")] = None,
    stain_ref: Annotated[Path | None, typer.Option(help="The custom stain reference the run was trained with.",
                                                   exists=True, dir_okay=False)] = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), or a torch device.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per encoder forward pass.")] = 64,
    normalize: Annotated[str, typer.Option(help=f"Heatmap normalization: {', '.join(NORMALIZERS)}.")]
    = "percentile",
    max_size: Annotated[int, typer.Option(min=16, help="Longer side of the heatmap pictures, px.")] = 1024,
    top_k: Annotated[int, typer.Option(min=0, help="Patches in each half of the heatmap montages.")] = 8,
    shard: Annotated[str | None, typer.Option(help="Process share i/n of the batch (0 <= i < n).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging with tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and the summary.")] = False,
) -> None:
    """Apply a trained model to slides: tile → embed → predict → heatmap, with the tiling and
    encoder settings the model was trained with (a mismatch is an error).

    Writes OUT/results.csv (one row per slide: each task's score and call with its cut-off),
    OUT/heatmaps/<slide>/ and OUT/report.html. Reruns reuse finished bags and features.
    A bad slide is reported and skipped; exit code 1 if any failed, 2 for bad arguments.
    """
    from mil.predict import RunError, load_run

    console = setup_logging(verbose, quiet)
    try:
        slides = take_shard(expand_inputs(inputs), parse_shard(shard))
        run = load_run(model, device=device)
        tiling = tile_options(run.config, model, mpp=mpp, stain_ref=stain_ref)
        features = encoder_settings(run.config, model)
        encoder = load_encoder(features["encoder"], weights, device=device)
        check_encoder(encoder, features)
        heat = HeatmapOptions(normalization=normalize, max_size=max_size, top_k=top_k)
    except (InputError, RunError, SettingsError, WeightsError, ValueError) as exc:
        raise bad_input(console, exc) from None
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    threads = available_cores()
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run, encoder, tiling, heat, out, threads, EmbedOptions(batch_size=batch_size, threads=threads))
    outcomes = run_batch(slides, functools.partial(run_slide, ctx=ctx), unit="patches", console=console)
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
