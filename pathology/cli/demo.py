"""``pathology demo [--small] [--out DIR]``: the README's first command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape

from mil.console import metrics_table
from mil.models import MODELS

from ..cores import available_cores
from ..demo import DemoError, DemoOptions, run_demo
from .common import EXIT_FAILED, Quiet, Verbose, renamed, reported, setup_logging

Arch = Enum("Arch", {n: n for n in sorted(MODELS)}, type=str)


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the cohort, bags, run, heatmaps and "
                                                          "report.html.")] = Path("demo_out"),
    small: Annotated[bool, typer.Option("--small", help="A smaller cohort (24 slides of 20 patients) that "
                                                        "finishes in under 3 minutes.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the cohort, the folds and the training.")] = 0,
    arch: Annotated[Arch, typer.Option(help="MIL architecture (`mil train --help` lists them).")]
    = Arch["gated-abmil"],
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per fold.")] = 40,
    old_model: Annotated[Arch | None, typer.Option("--model", hidden=True, help="Renamed --arch.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic breast-cancer cohort and run the whole pipeline on it: tile, embed
    (offline encoder), cross-validated multi-task attention MIL (tumour, ER, PR, HER2, survival),
    out-of-fold heatmaps, and OUT/report.html. No download, no GPU; reruns resume.

    Exit code 1 if a stage fails, 2 for bad input.
    """
    console = setup_logging(verbose, quiet)
    arch = renamed(old_model, arch, "pathology demo --model", "--arch")
    torch.set_num_threads(available_cores())
    options = DemoOptions(out=out, size="small" if small else "default", seed=seed, model=arch.value, epochs=epochs)
    try:
        with reported(console):
            result = run_demo(options, console)
    except DemoError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    Console().print(metrics_table(result.metrics["tasks"], title="Out-of-fold metrics (synthetic cohort)"))
    stages = ", ".join(f"{name.split(' ', 1)[1]} {s:.0f} s" for name, s in result.seconds.items())
    console.print(f"tumour attention: {result.tumour_precision:.0%} of the top-5 patches of tumour slides lie in "
                  f"the true tumour · {stages}")
    console.print(f"report: {result.report}")
