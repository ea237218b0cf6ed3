"""``pathology tile``: slides in, one HDF5 bag per slide out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import run_batch, status_path, summary_table
from ..inputs import expand_inputs, parse_shard, take_shard
from ..stain import METHODS
from ..tiling.grid import GridSpec
from ..tiling.pipeline import TileOptions
from ..tiling.stage import tile_stage
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
    StageDir,
    Verbose,
    Workers,
    exit_if_failed,
    reported,
    setup_logging,
)

Stain = Enum("Stain", {n: n for n in METHODS}, type=str)


class Kind(str, Enum):
    he = "he"
    ihc = "ihc"


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"


class OnBadTile(str, Enum):
    fail = "fail"
    skip = "skip"


def tile_command(
    inputs: Annotated[list[str], typer.Argument(help="Slide files, folders, globs or a manifest CSV "
                                                     "(columns slide_id, slide_path).", show_default=False)],
    out: Out("Folder for <slide_id>.h5 bags, qc/ pictures and status.csv."),
    target_mpp: Annotated[float, typer.Option(help="Patch resolution in µm/px (0.5 ≈ 20x, 0.25 ≈ 40x).")] = 0.5,
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels at the target resolution.")] = 256,
    overlap: Annotated[int, typer.Option(help="Pixels shared by neighbouring patches.")] = 0,
    min_tissue: Annotated[float, typer.Option(help="Minimum tissue share of a kept patch.")] = 0.5,
    stain: Annotated[Stain, typer.Option(help="Stain normalization (IHC: none, or macenko/vahadane "
                                              "with H-DAB handling).")] = Stain["none"],
    stain_ref: Annotated[Path | None, typer.Option(help="Reference image for normalization "
                                                        "(default: the packaged one for --kind).",
                                                   exists=True, dir_okay=False)] = None,
    kind: Annotated[Kind, typer.Option(help="he: H&E. ihc: hematoxylin + DAB (normalization keeps DAB brown).")]
    = Kind.he,
    backend: Backend = BackendName.auto,
    mpp: Mpp = None,
    no_patches: Annotated[bool, typer.Option("--no-patches", help="Store coordinates only; the encoder "
                                                                  "reads from the slide.")] = False,
    compression: Annotated[Compression, typer.Option(
        help="Patch storage. gzip saves ~20% of disk on H&E and costs more CPU to decode than the "
             "default encoder takes to embed the patch.")] = Compression.none,
    mask_mpp: Annotated[float, typer.Option(help="Resolution (µm/px) of the tissue mask.")]
    = TissueParams().mask_mpp,
    on_bad_tile: Annotated[OnBadTile, typer.Option(
        help="A corrupt tile in the slide: fail the slide (naming the tile), or skip the patches that touch "
             "it (listed in the bag and status.csv).")] = OnBadTile.fail,
    verify_slides: Annotated[bool, typer.Option(
        "--verify-slides", help="Identify each slide by the SHA-256 of the whole file (reads all of it) "
                                "instead of its size, modification time and sampled content.")] = False,
    shard: Shard = None,
    workers: Workers = 1,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_slide: CpusPerSlide = None,
    memory_per_slide: MemoryPerSlide = None,
    stage_dir: StageDir = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Find tissue, cut patches at a target µm/px, stain-normalize, and write one bag per slide.

    Reruns skip slides whose bag is complete with the same parameters and was made from the same
    slide file (size, modification time and content samples; --verify-slides: the whole file).

    A bad slide is reported and skipped; the exit code is 1 if any slide failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    choice = ExecutorChoice(executor.value, workers, address, cpus_per_slide, memory_per_slide)
    with reported(console):
        engine = choice.build()
        shard_spec = parse_shard(shard)
        slides = take_shard(expand_inputs(inputs), shard_spec)
        options = TileOptions(
            grid=GridSpec(target_mpp=target_mpp, patch_size=patch_size, overlap=overlap, min_tissue=min_tissue),
            tissue=TissueParams(mask_mpp=mask_mpp), stain=stain.value,
            stain_ref=str(stain_ref) if stain_ref else None, kind=kind.value, backend=backend.value, mpp=mpp,
            store_patches=not no_patches, compression=compression.value)
    if not slides:
        console.print("nothing to do: this shard holds no slides")
        return
    _, threads = choice.slide_threads(len(slides))
    stage = tile_stage(out, options, threads, stage_dir, on_bad_tile=on_bad_tile.value, verify_slides=verify_slides)
    outcomes = run_batch(slides, stage, executor=engine, unit="patches", console=console,
                         status=status_path(out, shard_spec), clean=[out, *([stage_dir] if stage_dir else [])])
    Console().print(summary_table(outcomes))
    exit_if_failed(outcomes)
