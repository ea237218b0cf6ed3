"""The ``pathology`` command line: one module per sub-command, imported when that command runs.

The command modules are the top layer (docs/architecture.md): they parse options, call the
library and turn its errors into exit codes; no library module imports them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from .lazy import LazyCommand, lazy_group

COMMANDS = {
    "tile": LazyCommand("pathology.cli.tile:tile_command",
                        "Find tissue, cut patches at a target µm/px, stain-normalize: one bag per slide."),
    "embed": LazyCommand("pathology.cli.embed:embed_command",
                         "Embed every patch of each bag with an encoder into /features/<encoder>."),
    "heatmap": LazyCommand("pathology.cli.heatmap:heatmap_command",
                           "Attention heatmaps, top/bottom patches, scores CSV and QuPath GeoJSON per slide."),
    "run": LazyCommand("pathology.cli.run:run_command",
                       "Apply a trained model to slides: tile, embed, predict, heatmaps, results and report."),
    "ihc": LazyCommand("pathology.cli.ihc:ihc_command",
                       "Score IHC slides: ER/PgR H-score and Allred, Ki-67 index, HER2 0-3+ (an aid)."),
    "encoders": LazyCommand("pathology.cli.encoders:app", "Feature encoders: list them, fetch their weights."),
    "synth": LazyCommand("pathology.cli.synth:synth_command",
                         "Render synthetic H&E slides (pyramidal SVS) with known tissue and tumour masks."),
    "synth-cohort": LazyCommand("pathology.cli.synth_cohort:cohort_command",
                                "Render the synthetic demo cohort: slides, truth and manifest."),
    "demo": LazyCommand("pathology.cli.demo:demo_command",
                        "The whole pipeline, training included, on a synthetic cohort it generates."),
    "view": LazyCommand("pathology.cli.view:view_command",
                        "Browse an output folder in the browser: zoomable slides with attention, tissue and IHC "
                        "overlays."),
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pathology-mil {__version__}")
        raise typer.Exit()


app = typer.Typer(cls=lazy_group(COMMANDS), no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Whole-slide pathology pipeline: tile, embed, heatmaps, run a trained model, IHC scoring, "
                       "synthetic slides and the demo. Training is `mil`.")


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Whole-slide pathology pipeline: tile, embed, heatmaps, run a trained model, IHC scoring,
    synthetic slides and the demo. Training and prediction on bags is the `mil` command."""
