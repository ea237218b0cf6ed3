"""The ``pathology`` command line: one sub-command per pipeline stage."""

from __future__ import annotations

import typer

from .demo.cli import demo_command
from .embed.cli import embed_command
from .encoders.cli import app as encoders_app
from .heatmap.cli import heatmap_command
from .ihc.cli import ihc_command
from .run.cli import run_command
from .synth.cli import synth_command
from .synth.cohort_cli import cohort_command
from .tile_cli import tile_command

app = typer.Typer(help="Whole-slide pathology pipeline: synthesize, tile, embed, train (mil), predict, heatmaps, IHC scoring, demo.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command("tile")(tile_command)
app.command("embed")(embed_command)
app.command("heatmap")(heatmap_command)
app.command("run")(run_command)
app.add_typer(encoders_app, name="encoders")
app.command("synth")(synth_command)
app.command("synth-cohort")(cohort_command)
app.command("demo")(demo_command)
app.command("ihc")(ihc_command)
