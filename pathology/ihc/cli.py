"""``pathology ihc``: IHC slides in, biomarker scores, maps and QC pictures out."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import Outcome, run_batch, summary_table
from ..cli_exits import bad_input, exit_if_failed
from ..cores import share_cores
from ..inputs import InputError, SlideInput, expand_inputs, parse_shard, take_shard
from ..logs import setup_logging
from ..slide import BACKENDS
from ..tissue import TissueParams
from .deconvolution import BASES
from .markers import MARKERS, IntensityThresholds
from .nuclei import NucleusParams
from .pipeline import IHCOptions, score_slide
from .results import write_scores_csv

MarkerName = Enum("MarkerName", {n: n for n in MARKERS}, type=str)
StainMatrix = Enum("StainMatrix", {n: n for n in BASES}, type=str)
Backend = Enum("Backend", {n: n for n in ["auto", *BACKENDS]}, type=str)


def ihc_job(slide: SlideInput, advance, *, out: Path, options: IHCOptions, threads: int) -> Outcome:
    """One slide of a ``pathology ihc`` batch (module level so worker processes can run it)."""
    return score_slide(slide.path, slide.slide_id, out, options, threads=threads, on_tiles=advance)


def ihc_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path).", show_default=False)],
    marker: Annotated[MarkerName, typer.Option("--marker", "-m", help="er, pr, ki67 (nuclear) or her2 "
                                                                      "(membrane).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <slide_id>.json, scores.csv, qc/, maps/, "
                                                          "tiles/.")],
    thresholds: Annotated[str | None, typer.Option(help="DAB OD cuts weak,moderate,strong (default: nuclear "
                                                        "0.15,0.35,0.6; her2 membrane 0.08,0.2,0.45).")] = None,
    stain_matrix: Annotated[StainMatrix, typer.Option(help="standard: fixed Ruifrok-Johnston H-DAB (comparable "
                                                           "across slides); fitted: Macenko per slide.")]
    = StainMatrix("standard"),
    nucleus_threshold: Annotated[float, typer.Option(help="Background-subtracted OD above which a pixel is "
                                                          "nucleus.")] = NucleusParams().threshold,
    working_mpp: Annotated[float, typer.Option(help="Resolution the cells are found at (µm/px).")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Working tile side in pixels (one map cell).")] = 512,
    backend: Annotated[Backend, typer.Option(help="Slide reader; auto picks the first that opens the file.")]
    = Backend.auto,
    mpp: Annotated[float | None, typer.Option(help="Level-0 µm/px, overriding (or supplying) the metadata.")]
    = None,
    mask_mpp: Annotated[float, typer.Option(help="Resolution (µm/px) of the tissue mask.")]
    = TissueParams().mask_mpp,
    shard: Annotated[str | None, typer.Option(help="Process share i/n of the batch (0 <= i < n).")] = None,
    workers: Annotated[int, typer.Option(help="Slides scored in parallel (processes).")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging with tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and the summary.")] = False,
) -> None:
    """Score IHC slides: % positive nuclei, H-score, Allred, ER/PgR call, Ki-67 index, or HER2 0-3+ (an aid).

    Per slide: <slide_id>.json, qc/<slide_id>.png (nuclei outlined by class), maps/ and tiles/.

    One row per slide in scores.csv. Reruns skip slides already scored with the same parameters.

    A bad slide is reported and skipped; the exit code is 1 if any slide failed.
    """
    console = setup_logging(verbose, quiet)
    try:
        slides = take_shard(expand_inputs(inputs), parse_shard(shard))
        options = IHCOptions(
            marker=marker.value, thresholds=IntensityThresholds.parse(thresholds) if thresholds else None,
            nuclei=NucleusParams(threshold=nucleus_threshold), stain_matrix=stain_matrix.value,
            working_mpp=working_mpp, tile_size=tile_size, tissue=TissueParams(mask_mpp=mask_mpp),
            backend=backend.value, mpp=mpp)
    except (InputError, ValueError) as exc:
        raise bad_input(console, exc) from None
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    workers, threads = share_cores(len(slides), workers)
    job = functools.partial(ihc_job, out=out, options=options, threads=threads)
    outcomes = run_batch(slides, job, workers=workers, unit="tiles", console=console)
    scores = write_scores_csv(out) if out.is_dir() else None
    Console().print(summary_table(outcomes, unit="tiles"))
    if scores:
        console.print(f"scores: {scores}", highlight=False)
    exit_if_failed(outcomes)


__all__ = ["ihc_command"]
