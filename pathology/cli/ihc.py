"""``pathology ihc``: IHC slides in, biomarker scores, maps and QC pictures out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import NOT_EVALUABLE, run_batch, status_path, summary_table
from ..errors import InputError
from ..ihc.deconvolution import BASES
from ..ihc.markers import MARKERS, IntensityThresholds
from ..ihc.nuclei import NucleusParams
from ..ihc.pipeline import IHCOptions
from ..ihc.results import write_scores_csv
from ..ihc.stage import ihc_stage
from ..ihc.tissue import IHCTissueParams
from ..inputs import expand_inputs, parse_shard, take_shard
from ..roi import roi_source
from .common import (
    EXIT_FAILED,
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
    StageDir,
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
                                                     "(columns slide_id, slide_path; optional roi_path).",
                                                show_default=False)],
    out: Out("Folder for <slide_id>.json, scores.csv, status.csv, qc/, maps/, tiles/, cells/."),
    marker: Annotated[MarkerName | None, typer.Option("--marker", help="er, pr, ki67 (nuclear) or her2 "
                                                                       "(membrane). Required.",
                                                      show_default=False)] = None,
    roi: Annotated[Path | None, typer.Option(help="GeoJSON annotation (QuPath export, level-0 pixels) of what to "
                                                  "score: one file for one slide, or a folder of "
                                                  "<slide_id>.geojson. A manifest's roi_path column also works.",
                                             show_default=False)] = None,
    roi_class: Annotated[list[str] | None, typer.Option(help="Only ROI annotations of this QuPath class (e.g. "
                                                             "Tumor); repeatable.", show_default=False)] = None,
    thresholds: Annotated[str | None, typer.Option(help="DAB OD cuts weak,moderate,strong; nuclear: a nucleus's "
                                                        "DAB above its surroundings (default 0.1,0.3,0.55); her2: "
                                                        "membrane DAB (default 0.12,0.22,0.45).")] = None,
    stain_matrix: Annotated[StainMatrix, typer.Option(help="standard: fixed Ruifrok-Johnston H-DAB (comparable "
                                                           "across slides); fitted: Macenko per slide.")]
    = StainMatrix["standard"],
    nucleus_threshold: Annotated[float, typer.Option(help="Least mean OD of a nucleus above its local "
                                                          "background.")] = NucleusParams().min_contrast,
    min_cells: Annotated[int, typer.Option(help="Fewer counted cells make a slide not evaluable.")] = 50,
    hotspot_mm2: Annotated[float, typer.Option(help="Area of the Ki-67 hotspot circle (mm²).")] = 0.2,
    working_mpp: Annotated[float, typer.Option(help="Resolution the cells are found at (µm/px).")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Working tile side in pixels (one map cell).")] = 512,
    backend: Backend = BackendName.auto,
    mpp: Mpp = None,
    mask_mpp: Annotated[float, typer.Option(help="Resolution (µm/px) of the tissue mask on a whole slide "
                                                 "(finer for small images).")] = IHCTissueParams().mask_mpp,
    shard: Shard = None,
    workers: Workers = 1,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_slide: CpusPerSlide = None,
    memory_per_slide: MemoryPerSlide = None,
    stage_dir: StageDir = None,
    old_marker: Annotated[MarkerName | None, typer.Option("-m", hidden=True, help="Renamed --marker "
                                                                                  "(-m is --model).")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score IHC slides: % positive nuclei, H-score, Allred, ER/PgR call, Ki-67 index, or HER2 0-3+ (an aid).

    Scores the tissue, or only inside the ROI (--roi); an image at most 2 mm wide is a field, scored whole.

    Per slide: <slide_id>.json, qc/<slide_id>.png, maps/, tiles/, cells/; one row per slide in scores.csv.

    Ki-67: the global index and the hotspot index (--hotspot-mm2). Reruns skip slides already scored.

    No tissue or too few cells (--min-cells): status "not evaluable" with its reason, never a 0% score.

    Exit code: 0 all scored; 1 some slide failed or was not evaluable (the rest go on); 2 bad input.
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
            nuclei=NucleusParams(min_contrast=nucleus_threshold), stain_matrix=stain_matrix.value,
            working_mpp=working_mpp, tile_size=tile_size, tissue=IHCTissueParams(mask_mpp=mask_mpp),
            backend=backend.value, mpp=mpp, min_cells=min_cells, hotspot_mm2=hotspot_mm2)
        rois = roi_source(roi, inputs, [s.slide_id for s in slides], roi_class or ())
        for s in slides:        # every ROI file read once up front: a bad one stops the batch before any work
            rois.load(s.slide_id)
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    _, threads = choice.slide_threads(len(slides))
    outcomes = run_batch(slides, ihc_stage(out, options, threads, rois, stage_dir), executor=engine, unit="tiles",
                         console=console, status=status_path(out, shard_spec),
                         clean=[out, *([stage_dir] if stage_dir else [])])
    scores = write_scores_csv(out) if out.is_dir() else None
    Console().print(summary_table(outcomes, unit="tiles"))
    if scores:
        console.print(f"scores: {scores}", highlight=False)
    exit_if_failed(outcomes)
    if any(o.status == NOT_EVALUABLE for o in outcomes):  # a score was asked for and cannot be given
        raise typer.Exit(EXIT_FAILED)
