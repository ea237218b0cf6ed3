"""``pathology embed``: bags in, ``/features/<encoder>`` added to each."""

from __future__ import annotations

import functools
import glob
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import h5py
import torch
import typer

from ..batch import Outcome, run_batch, summary_table
from ..cli_exits import bad_input, exit_if_failed
from ..cores import available_cores
from ..encoders import ENCODERS, Encoder, WeightsError, load_encoder
from ..inputs import InputError, SlideInput, parse_shard, take_shard
from ..logs import setup_logging
from .run import DTYPES, EmbedOptions, embed_bag, existing_features

log = logging.getLogger(__name__)

EncoderName = Enum("EncoderName", {n: n for n in ENCODERS}, type=str)
Dtype = Enum("Dtype", {n: n for n in DTYPES}, type=str)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def expand_bags(inputs: list[str]) -> list[SlideInput]:
    """Bag files, folders (their ``*.h5``) or globs; every problem reported at once."""
    found: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            hits = sorted(path.glob("*.h5"))
        elif path.is_file():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(item) if p.endswith(".h5"))
        if not hits:
            problems.append(f"{item}: no bag (.h5) found")
        found.extend(hits)
    bags = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for bag in bags:
        if bag.stem in stems:
            problems.append(f"{bag}: same slide id as {stems[bag.stem]}")
        stems[bag.stem] = bag
    if problems:
        raise InputError("\n".join(problems))
    return [SlideInput(b.stem, b) for b in bags]


def pending_patches(bags: list[SlideInput], encoder: str, overwrite: bool) -> int | None:
    """Patches to embed across the batch (for the progress bar), or None if unknown."""
    total = 0
    for bag in bags:
        try:
            if overwrite or existing_features(bag.path, encoder) is None:
                with h5py.File(bag.path, "r") as f:
                    total += len(f["coords"])
        except (OSError, ValueError, KeyError):
            continue  # the job reports the problem
    return total


def embed_job(bag: SlideInput, advance, *, encoder: Encoder, options: EmbedOptions) -> Outcome:
    return embed_bag(bag.path, encoder, options, advance)


def embed_command(
    bags: Annotated[list[str], typer.Argument(help="Bag files (.h5), folders of bags, or globs.",
                                              show_default=False)],
    encoder: Annotated[EncoderName, typer.Option("--encoder", "-e", help="Encoder from the registry "
                                                 "(`pathology encoders list`).")] = EncoderName("stain-texture"),
    weights: Annotated[Path | None, typer.Option(help="Weights file (safetensors, or a PyTorch state dict read "
                                                      "with weights_only=True); default: the local cache.",
                                                 dir_okay=False)] = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), or a torch device.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="Autocast precision; auto: the encoder's preference on "
                                                      "a GPU, fp32 on the CPU.")] = Precision.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes reading patches (with a "
                                                     "GPU; on a CPU they slow the encoder down).")] = 0,
    dtype: Annotated[Dtype, typer.Option(help="Stored feature precision.")] = Dtype("float16"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute features already in a bag.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder (pays off on GPUs "
                                                            "and large batches).")] = False,
    slides: Annotated[Path | None, typer.Option(help="Folder with the slides of coords-only bags "
                                                     "(default: the path recorded in each bag).",
                                                file_okay=False)] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", hidden=True,
                                                 help="Skip loading weights (tests, benchmarks).")] = False,
    shard: Annotated[str | None, typer.Option(help="Process share i/n of the batch (0 <= i < n).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging with tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and the summary.")] = False,
) -> None:
    """Embed every patch of each bag with an encoder into /features/<encoder>.

    Bags that already hold these features are skipped (--overwrite recomputes). A bag
    without stored patches is read from its slide, normalized as the tiler did. The bag
    is replaced only when its features are complete. Exit code 1 if any bag failed.
    """
    console = setup_logging(verbose, quiet)
    try:
        inputs = take_shard(expand_bags(bags), parse_shard(shard))
        model = load_encoder(encoder.value, weights, random_weights=random_weights, device=device,
                             precision=precision.value, compile=compile)
    except (InputError, WeightsError, ValueError) as exc:
        raise bad_input(console, exc) from None
    if workers and model.device.type == "cpu":
        log.warning("--workers %d on the CPU: loader processes compete with the encoder's threads for the "
                    "cores and make embedding slower (benchmarks/RESULTS.md); they pay with a GPU", workers)
    threads = available_cores()
    torch.set_num_threads(threads)
    options = EmbedOptions(batch_size=batch_size, workers=workers, dtype=dtype.value, overwrite=overwrite,
                           slides=slides, threads=threads)
    job = functools.partial(embed_job, encoder=model, options=options)
    outcomes = run_batch(inputs, job, unit="patches", console=console,
                         total=pending_patches(inputs, model.spec.name, overwrite))
    console.print(summary_table(outcomes))
    exit_if_failed(outcomes)
