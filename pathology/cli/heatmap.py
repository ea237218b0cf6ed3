"""``pathology heatmap``: bags + attention in, overlays, montages, CSV and QuPath GeoJSON out."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..batch import run_batch, status_path, summary_table
from ..heatmap import NORMALIZERS, AttentionSource, HeatmapError, HeatmapOptions, attention_file, heatmap_job
from ..inputs import expand_bags, parse_shard, take_shard
from .common import Out, Quiet, Shard, Verbose, exit_if_failed, renamed, reported, setup_logging

Normalization = Enum("Normalization", {n: n for n in NORMALIZERS}, type=str)


def attention_source(attention: Path | None, model: Path | None, n_bags: int) -> AttentionSource:
    """The one attention source the user named (exactly one of --attention and --model)."""
    if (attention is None) == (model is None):
        raise HeatmapError("pass exactly one of --attention FILE_OR_DIR and --model RUNDIR")
    if model is not None:
        from ..run.attention import model_attention  # the model side (torch) only when asked for

        return model_attention(model)
    if not attention.exists():
        raise HeatmapError(f"--attention {attention}: no such file or folder")
    if attention.is_file() and n_bags > 1:
        raise HeatmapError(f"--attention {attention} is one slide's file but {n_bags} bags were given; "
                           "pass the attention folder (attention/<slide_id>.h5 from `mil predict`)")
    return attention_file(attention)


def heatmap_command(
    bag: Annotated[list[str], typer.Option("--bag", "-b", help="Bag files (.h5), folders of bags or globs; "
                                                                "repeatable.", show_default=False)],
    out: Out("Folder for <slide_id>/<target>.* outputs and status.csv."),
    attention: Annotated[Path | None, typer.Option(help="Attention file from `mil predict` "
                                                        "(attention/<slide_id>.h5), or its folder.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Trained run folder (runs/<name>): compute "
                                                                     "the attention now from the bags' features.",
                                               file_okay=False)] = None,
    slide: Annotated[Path | None, typer.Option(help="The slide file, or a folder of slides; only read for a "
                                                    "picture finer than the bag's thumbnail or a montage of a "
                                                    "coords-only bag (default: the path in the bag).")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="Target (task) to draw (repeatable; "
                                                                            "default: every one in the "
                                                                            "attention).")] = None,
    normalize: Annotated[Normalization, typer.Option(help="percentile: linear between two percentiles of the "
                                                          "slide's scores; rank: each patch's rank, uniform "
                                                          "colours.")] = Normalization["percentile"],
    percentiles: Annotated[tuple[float, float], typer.Option(help="Low and high percentile for "
                                                                  "--normalize percentile.")] = (1.0, 99.0),
    resolution: Annotated[float | None, typer.Option(help="µm per pixel of the output picture "
                                                          "(default: the bag's thumbnail, 8 µm/px).")] = None,
    max_size: Annotated[int | None, typer.Option(help="Longer side of the output picture in pixels "
                                                      "(instead of --resolution).")] = None,
    smooth: Annotated[float, typer.Option(help="Gaussian smoothing of the map, σ in µm (0: none; overlapping "
                                               "patches are always averaged).")] = 0.0,
    cmap: Annotated[str, typer.Option(help="Matplotlib colour map (jet, inferno, viridis, turbo…).")] = "jet",
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Opacity of the colours over the tissue.")] = 0.5,
    top_k: Annotated[int, typer.Option(min=0, help="Patches in each half of the montage (0: no montage).")] = 8,
    shard: Shard = None,
    old_task: Annotated[list[str] | None, typer.Option("--task", hidden=True, help="Renamed --target.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Attention heatmaps per slide and target: overlay with a colour bar, top/bottom-k patch
    montage, per-patch scores (CSV) and a GeoJSON for QuPath (patches as detections with
    their scores as measurements, tissue outline as annotations).

    Never reads the slide's label or macro image. A bad bag is reported and skipped; the
    exit code is 1 if any failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    target = renamed(old_task, target, "pathology heatmap --task", "--target")
    with reported(console):
        shard_spec = parse_shard(shard)
        bags = take_shard(expand_bags(bag), shard_spec)
        options = HeatmapOptions(tasks=tuple(target or ()), normalization=normalize.value, percentiles=percentiles,
                                 resolution=resolution, max_size=max_size, smooth_um=smooth, cmap=cmap,
                                 alpha=alpha, top_k=top_k, slide=slide)
        source = attention_source(attention, model, len(bags))
    if not bags:
        console.print("nothing to do: this shard holds no bags")
        return
    job = functools.partial(heatmap_job, attention=source, out=out, options=options)
    outcomes = run_batch(bags, job, unit="patches", console=console, status=status_path(out, shard_spec),
                         clean=[out])
    console.print(summary_table(outcomes))
    exit_if_failed(outcomes)
