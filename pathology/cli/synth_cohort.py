"""``pathology synth-cohort``: write the synthetic demo cohort (slides, truth and manifest)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import summary_table
from ..cores import available_cores
from ..errors import InputError
from ..synth.cohort import SIZES, make_cohort
from .common import EXIT_FAILED, Quiet, Verbose, reported, setup_logging

Size = Enum("Size", {n: n for n in SIZES}, type=str)


def cohort_command(
    out: Annotated[Path, typer.Argument(help="Folder for slides/, manifest.csv and cohort.json.", show_default=False)],
    size: Annotated[Size, typer.Option(help="Cohort size: default (48 slides of 40 patients, ~110 patches "
                                            "each at 0.5 µm/px) or small (24 of 20, ~50 patches, for CI).")]
    = Size["default"],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same cohort, byte for byte.")] = 0,
    slides: Annotated[int | None, typer.Option(help="Number of slides (overrides --size).", show_default=False)]
    = None,
    patients: Annotated[int | None, typer.Option(help="Number of patients (overrides --size); the slides beyond "
                                                      "one per patient go to patients with two.",
                                                 show_default=False)] = None,
    stain_variation: Annotated[float, typer.Option(help="Per-slide spread of stain colours and intensities.")]
    = 0.5,
    workers: Annotated[int, typer.Option(help="Slides rendered in parallel (processes); 0: one per core.")] = 0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Render a synthetic breast-cancer cohort whose tumour, ER, PR, HER2 and survival show in the tissue.

    Writes OUT/slides/<slide_id>.svs (with tumour masks and truth JSON), OUT/manifest.csv (slide_id,
    patient_id, slide_path, tumor, er, pr, her2, os_time, os_event; some labels left unknown) and
    OUT/cohort.json (the full truth). Reruns skip slides already written; exit code 1 if any slide failed.
    """
    console = setup_logging(verbose, quiet)
    preset = SIZES[size.value]
    n_slides, n_patients = slides or preset.n_slides, patients or preset.n_patients
    if patients and not slides:
        n_slides = max(n_patients, min(preset.n_slides, 2 * n_patients))
    elif slides and not patients:
        n_patients = min(n_slides, max(-(-n_slides // 2), preset.n_patients))
    with reported(console):
        if workers < 0:
            raise InputError(f"--workers must be >= 0, got {workers}")
        info = make_cohort(out, n_slides=n_slides, n_patients=n_patients, seed=seed, width=preset.width,
                           height=preset.height, mpp=preset.mpp, stain_variation=stain_variation,
                           workers=workers or available_cores(), console=console)
    Console().print(summary_table(info.outcomes, unit="rows"))
    if not quiet:
        console.print(f"cohort of {n_slides} slides from {n_patients} patients in {out}: manifest "
                      f"{info.manifest_path}, truth {info.truth_path}", highlight=False)
    if info.failed:
        raise typer.Exit(EXIT_FAILED)
