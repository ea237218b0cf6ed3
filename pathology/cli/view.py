"""``pathology view``: browse an output folder's slides, zoomable, with their overlays."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .common import Quiet, Verbose, reported, setup_logging

log = logging.getLogger(__name__)


def view_command(
    folder: Annotated[Path, typer.Argument(help="Output folder of `pathology run`, `pathology demo` or "
                                                "`pathology ihc`.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on. The default answers this computer only; "
                                           "0.0.0.0 shares the slides with the whole network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    slide: Annotated[Path | None, typer.Option(help="Folder holding the slide files, when they are no longer "
                                                    "where the records say (default: the recorded paths).",
                                               file_okay=False, exists=True)] = None,
    cache_mb: Annotated[float, typer.Option(min=0, help="Memory for recently served tiles, MiB.")] = 256,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Serve FOLDER as a local web application: the slide list with calls and scores, and each
    slide zoomable at full resolution with its attention heatmaps, top and bottom patches,
    tissue outline and IHC overlays.

    Read-only: serves the folder and the slides its records name, never a label or macro image.

    Stop with Ctrl+C.
    """
    console = setup_logging(verbose, quiet)
    with reported(console):
        from ..view import ViewServer

        server = ViewServer(folder, host, port, slides_dir=slide, cache_mb=cache_mb)
    if not server.httpd.loopback:
        log.warning("listening on %s: anyone who can reach this computer can see these slides and their scores "
                    "(there is no login); patient data must stay on a network you trust", host)
    slides = len(server.viewer.catalog.entries)
    console.print(f"pathology view: {slides} slides of {folder} at {server.url} (Ctrl+C to stop)", highlight=False,
                  markup=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.close()
