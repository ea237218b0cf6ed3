"""Logging set-up for the command lines: rich, on stderr, one line per event."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


def setup_logging(verbose: bool = False, quiet: bool = False) -> Console:
    """Route library logging through rich; returns the stderr console to share with progress bars."""
    console = Console(stderr=True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False,
                          rich_tracebacks=verbose)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    for noisy in ("PIL", "h5py", "matplotlib", "numcodecs", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return console
