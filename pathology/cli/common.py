"""What every command line shares: option definitions (so a flag means one thing everywhere),
logging, renamed-flag warnings, the one-line error and the exit codes.

Exit codes (docs/architecture.md, "Command lines"): 0 all done; 1 some slide failed (the
others were still done); 2 bad input (one line, nothing done).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from ..batch import Outcome
from ..errors import is_user_fixable, one_line
from ..slide import BACKENDS

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

log = logging.getLogger("pathology.cli")

# --- options every command spells the same way --------------------------------------------------------------
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, with the traceback of any bug.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings, errors and the summary.")]
Shard = Annotated[str | None, typer.Option(help="Process share i/n of the batch (0 <= i < n), for cluster job "
                                                "arrays; the status file is then status.shard-<i>-of-<n>.csv.")]
Workers = Annotated[int, typer.Option(min=1, help="Slides processed in parallel (processes, each with its share "
                                                  "of the cores).")]
Mpp = Annotated[float | None, typer.Option(help="Level-0 µm/px, overriding (or supplying) the slide's metadata.")]
BackendName = Enum("BackendName", {n: n for n in ["auto", *BACKENDS]}, type=str)
Backend = Annotated[BackendName, typer.Option(help="Slide reader; auto picks the first that opens the file.")]
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), or a torch device.")]


def Out(help: str) -> Any:  # noqa: N802 - reads as a type in signatures: ``out: Out("...")``
    """``--out/-o``: the command's output folder (or file), with the command's own help."""
    return Annotated[Path, typer.Option("--out", "-o", help=help)]


def RunFolder(help: str = "Trained run folder (the --out of `mil train`).") -> Any:  # noqa: N802
    """``--model/-m``: a trained run folder, in every command that applies one."""
    return Annotated[Path, typer.Option("--model", "-m", help=help, file_okay=False)]


# --- logging ----------------------------------------------------------------------------------------------------
def setup_logging(verbose: bool = False, quiet: bool = False) -> Console:
    """Route library logging through rich on stderr; returns the console to share with progress bars."""
    console = Console(stderr=True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False,
                          rich_tracebacks=verbose)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    for noisy in ("PIL", "h5py", "matplotlib", "numcodecs", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return console


# --- renamed flags ------------------------------------------------------------------------------------------------
def renamed(old_value: Any, new_value: Any, old: str, new: str) -> Any:
    """The value of a flag given under its old spelling ``old`` (with a deprecation warning),
    else ``new_value``. Old spellings keep working for one release."""
    if old_value is None:
        return new_value
    log.warning("%s is deprecated and will be removed in the next release; use %s", old, new)
    return old_value


# --- errors and exit codes ------------------------------------------------------------------------------------
def bad_input(console: Console, exc: BaseException) -> typer.Exit:
    """Print ``exc`` as a bad-input error (one line per problem) and return the exit (code 2) to raise."""
    lines = [one_line(line) for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    for line in lines:
        console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def reported(console: Console) -> Iterator[None]:
    """Turn an error the user can fix (:func:`pathology.errors.is_user_fixable`) raised inside
    the block into the one-line bad-input exit; anything else is a bug and propagates with
    its traceback."""
    try:
        yield
    except Exception as exc:
        if is_user_fixable(exc):
            raise bad_input(console, exc) from None
        raise


def exit_if_failed(outcomes: Iterable[Outcome]) -> None:
    """Exit with code 1 if any slide failed."""
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_FAILED)
