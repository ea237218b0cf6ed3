"""``pathology embed``: bags in, ``/features/<encoder>`` added to each."""

from __future__ import annotations

import logging
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..batch import run_batch, status_path, summary_table
from ..cores import available_cores
from ..embed.run import DTYPES, EmbedOptions, pending_patches
from ..embed.stage import EncoderChoice, embed_stage
from ..encoders import ENCODERS
from ..inputs import expand_bags, parse_shard, take_shard
from .common import (
    Address,
    CpusPerWorker,
    Device,
    Executor,
    ExecutorChoice,
    ExecutorName,
    GpusPerWorker,
    Quiet,
    Shard,
    Verbose,
    exit_if_failed,
    renamed,
    reported,
    setup_logging,
)

log = logging.getLogger(__name__)

EncoderName = Enum("EncoderName", {n: n for n in ENCODERS}, type=str)
Dtype = Enum("Dtype", {n: n for n in DTYPES}, type=str)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def embed_command(
    bags: Annotated[list[str], typer.Argument(help="Bag files (.h5), folders of bags, or globs.",
                                              show_default=False)],
    encoder: Annotated[EncoderName, typer.Option("--encoder", "-e", help="Encoder from the registry "
                                                 "(`pathology encoders list`).")] = EncoderName["stain-texture"],
    weights: Annotated[Path | None, typer.Option(help="Weights file (safetensors, or a PyTorch state dict read "
                                                      "with weights_only=True); default: the local cache.",
                                                 dir_okay=False)] = None,
    device: Device = "auto",
    precision: Annotated[Precision, typer.Option(help="Autocast precision; auto: the encoder's preference on "
                                                      "a GPU, fp32 on the CPU.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per forward pass.")] = 64,
    loader_workers: Annotated[int, typer.Option(min=0, help="DataLoader processes reading patches (with a "
                                                            "GPU; on a CPU they slow the encoder down).")] = 0,
    dtype: Annotated[Dtype, typer.Option(help="Stored feature precision.")] = Dtype["float16"],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute features already in a bag.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder (pays off on GPUs "
                                                            "and large batches).")] = False,
    slides: Annotated[Path | None, typer.Option(help="Folder with the slides of coords-only bags "
                                                     "(default: the path recorded in each bag).",
                                                file_okay=False)] = None,
    verify_slides: Annotated[bool, typer.Option(
        "--verify-slides", help="Check the slide of a coords-only bag by the SHA-256 of the whole file (the "
                                "bag must have been tiled with --verify-slides) instead of its size and "
                                "sampled content.")] = False,
    random_weights: Annotated[bool, typer.Option("--random-weights", hidden=True,
                                                 help="Skip loading weights (tests, benchmarks).")] = False,
    shard: Shard = None,
    executor: Executor = ExecutorName.local,
    address: Address = None,
    cpus_per_worker: CpusPerWorker = None,
    gpus_per_worker: GpusPerWorker = None,
    old_workers: Annotated[int | None, typer.Option("--workers", hidden=True,
                                                    help="Renamed --loader-workers.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Embed every patch of each bag with an encoder into /features/<encoder>.

    Bags that already hold these features are skipped (--overwrite recomputes). A bag
    without stored patches is read from its slide, normalized as the tiler did. The bag
    is replaced only when its features are complete. Writes status.embed.csv beside the
    bags. Exit code 1 if any bag failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    loader_workers = renamed(old_workers, loader_workers, "pathology embed --workers", "--loader-workers")
    choice = ExecutorChoice(executor.value, 1, address, cpus_per_worker=cpus_per_worker,
                            gpus_per_worker=gpus_per_worker)
    threads = choice.worker_threads() or available_cores()
    encoder_choice = EncoderChoice(encoder.value, weights, device=device, precision=precision.value,
                                   compile=compile, random_weights=random_weights, threads=threads)
    with reported(console):
        shard_spec = parse_shard(shard)
        inputs = take_shard(expand_bags(bags), shard_spec)
        # loaded here to refuse bad weights before any bag; the local executor embeds with it
        model = (encoder_choice if choice.is_local else replace(encoder_choice, device="cpu", compile=False)).load()
        engine = choice.build(states=[model])
    if not inputs:
        console.print("nothing to do: this shard holds no bags")
        return
    if loader_workers and model.device.type == "cpu" and choice.is_local:
        log.warning("--loader-workers %d on the CPU: loader processes compete with the encoder's threads for the "
                    "cores and make embedding slower (benchmarks/RESULTS.md); they pay with a GPU", loader_workers)
    options = EmbedOptions(batch_size=batch_size, workers=loader_workers, dtype=dtype.value, overwrite=overwrite,
                           slides=slides, threads=threads, verify_slides=verify_slides)
    folder = inputs[0].path.parent
    outcomes = run_batch(inputs, embed_stage(encoder_choice, options), executor=engine, unit="patches",
                         console=console, total=pending_patches(inputs, model.spec.name, overwrite),
                         status=status_path(folder, shard_spec, stem="status.embed"),
                         clean=sorted({b.path.parent for b in inputs}))
    console.print(summary_table(outcomes))
    exit_if_failed(outcomes)
