"""``pathology export``: bags in, feature files for CLAM or TRIDENT out."""

from __future__ import annotations

import functools
from enum import Enum
from typing import Annotated

import typer

from ..batch import run_batch, status_path, summary_table
from ..export import FORMATS, export_job
from ..inputs import expand_bags, parse_shard, take_shard
from .common import Out, Quiet, Shard, Verbose, exit_if_failed, reported, setup_logging

Tool = Enum("Tool", {n: n for n in FORMATS}, type=str)


def export_command(
    bags: Annotated[list[str], typer.Argument(help="Bag files (.h5), folders of bags or globs.", show_default=False)],
    to: Annotated[Tool, typer.Option("--to", help="trident: OUT/<slide_id>.h5; clam: OUT/h5_files/<slide_id>.h5 and "
                                                  "OUT/pt_files/<slide_id>.pt.", show_default=False)],
    out: Out("Folder for the feature files and status.csv."),
    encoder: Annotated[str | None, typer.Option("--encoder", "-e", help="Feature set to export (default: the "
                                                                        "bag's only one).")] = None,
    shard: Shard = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Write each bag's features for CLAM or TRIDENT: `features` (N, D) float32 and `coords` (N, 2) at the
    root of one .h5 per slide, with the coords attributes each tool reads (TRIDENT: patch_size_level0 and the
    magnifications; CLAM: patch_level, patch_size), plus CLAM's .pt tensors.

    A bad bag is reported and skipped; the exit code is 1 if any failed, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        shard_spec = parse_shard(shard)
        inputs = take_shard(expand_bags(bags), shard_spec)
    if not inputs:
        console.print("nothing to do: this shard holds no bags")
        return
    job = functools.partial(export_job, to=to.value, out=out, encoder=encoder)
    outcomes = run_batch(inputs, job, unit="patches", console=console, status=status_path(out, shard_spec),
                         clean=[out])
    console.print(summary_table(outcomes))
    exit_if_failed(outcomes)
