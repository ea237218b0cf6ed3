"""``pathology synth``: write synthetic H&E slides with known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import InputError
from ..synth.config import SynthConfig, derive_seed
from ..synth.recipe import RECIPES
from ..synth.writer import write_synthetic_slide
from .common import Quiet, Verbose, reported, setup_logging

_DEFAULT = SynthConfig()
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")


def _targets(out: Path, seed: int, count: int | None) -> list[tuple[Path, int]]:
    """(slide path, seed) of each slide to write."""
    if count is None:
        if out.suffix.lower() not in SLIDE_SUFFIXES:
            raise InputError(f"OUT must be a slide file ending in .svs (got {out}); "
                             "pass --count N to write N slides into a folder")
        return [(out, seed)]
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    if out.suffix.lower() in SLIDE_SUFFIXES:
        raise InputError(f"with --count, OUT is a folder, not a slide file (got {out})")
    return [(out / f"synthetic_{i:03d}.svs", derive_seed(seed, i)) for i in range(count)]


def synth_command(
    out: Annotated[Path, typer.Argument(help="Slide to write (.svs); with --count, a folder.", show_default=False)],
    width: Annotated[int, typer.Option(help="Level-0 width in pixels.")] = _DEFAULT.width,
    height: Annotated[int, typer.Option(help="Level-0 height in pixels.")] = _DEFAULT.height,
    mpp: Annotated[float, typer.Option(help="Level-0 resolution in µm/px (0.25 ≈ 40x).")] = _DEFAULT.mpp,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same slide.")] = _DEFAULT.seed,
    tumor_fraction: Annotated[float, typer.Option(help="Share of the tissue that is tumor (0-1).")]
    = _DEFAULT.tumor_fraction,
    stain_variation: Annotated[float, typer.Option(help="Per-slide perturbation of stain colours and "
                                                        "intensities; 0 is a fixed standard H&E look.")]
    = _DEFAULT.stain_variation,
    tile_size: Annotated[int, typer.Option(help="TIFF tile side in pixels (multiple of 16).")] = _DEFAULT.tile_size,
    quality: Annotated[int, typer.Option(help="JPEG quality (1-100).")] = _DEFAULT.quality,
    recipe: Annotated[str, typer.Option(help="Staining look: " + ", ".join(RECIPES) + " (IHC: the ihc-* "
                                             "recipes).")] = _DEFAULT.recipe,
    count: Annotated[int | None, typer.Option(help="Write N slides synthetic_000.svs… into the folder OUT, "
                                                   "their seeds derived from --seed.", show_default=False)] = None,
    processes: Annotated[int, typer.Option(help="Worker processes rendering each slide (worth it for large "
                                                "slides); 0 renders in two threads.")] = 0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Render synthetic H&E slides (pyramidal Aperio SVS) with tissue/tumor masks and a JSON truth file.

    Beside each slide: <stem>.tissue.png and <stem>.tumor.png, 0/255 masks with one pixel per 32x32 level-0 pixels.

    And <stem>.json: size, µm/px, seed, stain vectors, actual tumor share of the tissue, pyramid levels.
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        targets = _targets(out, seed, count)
        configs = [SynthConfig(width=width, height=height, mpp=mpp, seed=s, tumor_fraction=tumor_fraction,
                               stain_variation=stain_variation, tile_size=tile_size, quality=quality,
                               recipe=recipe)
                   for _, s in targets]
        if processes < 0:
            raise InputError(f"--processes must be >= 0, got {processes}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet, transient=True) as bar:
        overall = bar.add_task("slides", total=len(targets))
        for (path, _), config in zip(targets, configs, strict=True):
            rows = bar.add_task(f"  {path.name} (rows)", total=config.height)
            write_synthetic_slide(path, config,
                                  progress=lambda done, total, task=rows: bar.update(task, completed=done),
                                  processes=processes)
            bar.remove_task(rows)
            bar.advance(overall)
    if not quiet:
        console.print(f"wrote {len(targets)} synthetic slide{'s' * (len(targets) != 1)} "
                      f"to {out if count is not None else out.parent}", highlight=False)
