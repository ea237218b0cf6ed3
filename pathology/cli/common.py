"""What every command line shares: option definitions (so a flag means one thing everywhere),
logging, renamed-flag warnings, the one-line error and the exit codes.

Exit codes (docs/architecture.md, "Command lines"): 0 all done; 1 some slide failed (the
others were still done); 2 bad input (one line, nothing done).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from ..batch import Outcome
from ..cores import share_cores
from ..errors import InputError, is_user_fixable, one_line
from ..executors import EXECUTORS
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
ExecutorName = Enum("ExecutorName", {n: n for n in EXECUTORS}, type=str)
Executor = Annotated[ExecutorName, typer.Option(help="local: this machine (--workers processes); ray: a Ray "
                                                     "cluster (--address), or a local Ray instance.")]
Address = Annotated[str | None, typer.Option(help="Ray: the cluster to join (e.g. auto, 10.0.0.1:6379, "
                                                  "ray://head:10001); default: start a local instance.")]
CpusPerSlide = Annotated[float | None, typer.Option(min=0.1, help="Ray: CPUs per slide task, its decode threads "
                                                                  "(default: 2).")]
MemoryPerSlide = Annotated[str | None, typer.Option(help="Ray: memory reserved per slide task, e.g. 2G "
                                                         "(default: none reserved).")]
CpusPerWorker = Annotated[float | None, typer.Option(min=0.1, help="Ray: CPUs per embedding worker (its loader "
                                                                   "and torch threads; default: 2).")]
GpusPerWorker = Annotated[float | None, typer.Option(min=0.0, help="Ray: GPUs per embedding worker (one worker "
                                                                   "per GPU at 1; default: 1 if the cluster has "
                                                                   "GPUs, else 0).")]
StageDir = Annotated[Path | None, typer.Option(file_okay=False, help="Copy each slide to this local folder "
                                                                     "before reading it (slides on shared "
                                                                     "storage); the copy is removed afterwards.")]


def Out(help: str) -> Any:  # noqa: N802 - reads as a type in signatures: ``out: Out("...")``
    """``--out/-o``: the command's output folder (or file), with the command's own help."""
    return Annotated[Path, typer.Option("--out", "-o", help=help)]


def RunFolder(help: str = "Trained run folder (the --out of `mil train`).") -> Any:  # noqa: N802
    """``--model/-m``: a trained run folder, in every command that applies one."""
    return Annotated[Path, typer.Option("--model", "-m", help=help, file_okay=False)]


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor options of a batch command, turned into an executor and thread counts."""

    name: str = "local"
    workers: int = 1
    address: str | None = None
    cpus_per_slide: float | None = None
    memory_per_slide: str | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None

    @property
    def is_local(self) -> bool:
        return self.name == "local"

    def slide_threads(self, n_slides: int) -> tuple[int, int]:
        """(slides at once on this machine, threads per slide): local shares the cores between
        ``workers`` processes; on Ray each task gets ``cpus_per_slide``."""
        if self.is_local:
            return share_cores(n_slides, self.workers)
        return self.workers, max(1, int(self.cpus_per_slide or DEFAULT_RAY_CPUS))

    def worker_threads(self) -> int | None:
        """Threads of an embedding worker (None on the local executor: all the cores)."""
        return None if self.is_local else max(1, int(self.cpus_per_worker or DEFAULT_RAY_CPUS))

    def build(self, states: list | None = None):
        """The executor; ``states`` are stage states already built here (used by the local executor)."""
        if self.is_local:
            return EXECUTORS["local"](workers=self.workers, states=states)
        executor = EXECUTORS["ray"](address=self.address, cpus_per_slide=self.cpus_per_slide or DEFAULT_RAY_CPUS,
                                    memory_per_slide=parse_bytes(self.memory_per_slide),
                                    cpus_per_worker=self.cpus_per_worker or DEFAULT_RAY_CPUS,
                                    gpus_per_worker=self.gpus_per_worker)
        executor.connect()  # now: no Ray, or no cluster at --address, is bad input before any slide
        return executor


DEFAULT_RAY_CPUS = 2.0
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | None) -> int | None:
    """``"2G"`` -> 2147483648 (K, M, G, T are powers of 1024; a plain number is bytes)."""
    if text is None:
        return None
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        amount = float(value[: len(value) - len(unit)])
    except ValueError:
        raise InputError(f"--memory-per-slide takes a size such as 512M or 4G, got {text!r}") from None
    if amount <= 0:
        raise InputError(f"--memory-per-slide must be positive, got {text!r}")
    return int(amount * _UNITS[unit])


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
        console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
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
