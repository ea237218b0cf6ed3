"""``pathology ihc``: IHC slides in, biomarker scores, maps and QC pictures out."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.console import Console

from ..batch import run_batch, status_path, summary_table
from ..errors import InputError
from ..ihc.deconvolution import BASES
from ..ihc.markers import MARKERS, IntensityThresholds
from ..ihc.nuclei import NucleusParams
from ..ihc.pipeline import IHCOptions
from ..ihc.results import write_scores_csv
from ..ihc.stage import ihc_stage
from ..inputs import expand_inputs, parse_shard, take_shard
from ..tissue import TissueParams
from .common import (
    Address,
    Backend,
    BackendName,
    CpusPerSlide,
    Executor,
    ExecutorChoice,
    ExecutorName,
    MemoryPerSlide,
    Mpp,
    Out,
    Quiet,
    Shard,
    Verbose,
    Workers,
    exit_if_failed,
    renamed,
    reported,
    setup_logging,
)

MarkerName = Enum("MarkerName", {n: n for n in MARKERS}, type=str)
StainMatrix = Enum("StainMatrix", {n: n for n in BASES}, type=str)


def ihc_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path).", show_default=False)],
    out: Out("Folder for <slide_id>.json, scores.csv, status.csv, qc/, maps/, tiles/."),
    marker: Annotated[MarkerName | None, typer.Option("--marker", help="er, pr, ki67 (nuclear) or her2 "
                                                                       "(membrane). Required.",
                                                      show_default=False)] = None,
    thresholds: Annotated[str | None, typer.Option(help="DAB OD cuts weak,moderate,strong (default: nuclear "
                                                        "0.15,0.35,0.6; her2 membrane 0.08,0.2,0.45).")] = None,
    stain_matrix: Annotated[StainMatrix, typer.Option(help="standard: fixed Ruifrok-Johnston H-DAB (comparable "
                                                           "across slides); fitted: Macenko per slide.")]
    = StainMatrix["standard"],
    nucleus_threshold: Annotated[float, typer.Option(help="Background-subtracted OD above which a pixel is "
                                                          "nucleus.")] = NucleusParams().threshold,
    working_mpp: Annotated[float, typer.Option(help="Resolution the cells are found at (µm/px).")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Working tile side in pixels (one map cell).")] = 512,
    backend: Backend = BackendName.auto,
    mpp: Mpp = None,
    mask_mpp: Annotated[float, typer.Option(help="Resolution (µm/px) of the tissue mask.")]
    = TissueParams().mask_mpp,
    shard: Shard = None,
    workers: Workers = 1,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_slide: CpusPerSlide = None,
    memory_per_slide: MemoryPerSlide = None,
    old_marker: Annotated[MarkerName | None, typer.Option("-m", hidden=True, help="Renamed --marker "
                                                                                  "(-m is --model).")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score IHC slides: % positive nuclei, H-score, Allred, ER/PgR call, Ki-67 index, or HER2 0-3+ (an aid).

    Per slide: <slide_id>.json, qc/<slide_id>.png (nuclei outlined by class), maps/ and tiles/.

    One row per slide in scores.csv. Reruns skip slides already scored with the same parameters.

    A bad slide is reported and skipped; the exit code is 1 if any slide failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    marker = renamed(old_marker, marker, "pathology ihc -m", "--marker")
    choice = ExecutorChoice(executor.value, workers, address, cpus_per_slide, memory_per_slide)
    with reported(console):
        engine = choice.build()
        if marker is None:
            raise InputError(f"--marker is required: one of {', '.join(MARKERS)}")
        shard_spec = parse_shard(shard)
        slides = take_shard(expand_inputs(inputs), shard_spec)
        options = IHCOptions(
            marker=marker.value, thresholds=IntensityThresholds.parse(thresholds) if thresholds else None,
            nuclei=NucleusParams(threshold=nucleus_threshold), stain_matrix=stain_matrix.value,
            working_mpp=working_mpp, tile_size=tile_size, tissue=TissueParams(mask_mpp=mask_mpp),
            backend=backend.value, mpp=mpp)
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    _, threads = choice.slide_threads(len(slides))
    outcomes = run_batch(slides, ihc_stage(out, options, threads), executor=engine, unit="tiles", console=console,
                         status=status_path(out, shard_spec), clean=[out])
    scores = write_scores_csv(out) if out.is_dir() else None
    Console().print(summary_table(outcomes, unit="tiles"))
    if scores:
        console.print(f"scores: {scores}", highlight=False)
    exit_if_failed(outcomes)
