"""``pathology encoders list|fetch``: what the registry holds, and the one explicit download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..encoders.registry import ENCODERS, get_spec
from ..encoders.weights import WeightsError, locate_weights
from ..errors import one_line
from .common import EXIT_FAILED, reported

app = typer.Typer(help="Feature encoders: list them, fetch their weights.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def _weights_status(name: str) -> tuple[str, str | None]:
    """A short status for the table and, when found, the file's path."""
    spec = ENCODERS[name]
    if not spec.weights.needed:
        return "[green]built in[/]", None
    try:
        return "[green]found[/]", str(locate_weights(spec))
    except WeightsError:
        return "[yellow]missing[/]", None


@app.command("list")
def list_command() -> None:
    """The registry: name, output dimension, input size, weights found or not, source, licence.

    Missing weights: `pathology encoders fetch NAME`, or `pathology embed --weights FILE`.
    """
    table = Table(title="Encoders", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("dim", justify="right")
    table.add_column("input", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("licence", overflow="fold")
    found = []
    for name, spec in ENCODERS.items():
        status, path = _weights_status(name)
        if path:
            found.append(f"{name}: {path}")
        table.add_row(name, str(spec.dim), "bag size" if spec.input_size is None else f"{spec.input_size} px",
                      status, spec.weights.hf_repo or spec.weights.url or "built in",
                      spec.weights.licence + (" (gated)" if spec.weights.gated else ""))
    console = Console()
    console.print(table)
    for line in found:
        console.print(line, soft_wrap=True)
    console.print("Missing weights: `pathology encoders fetch NAME`, or `pathology embed --weights FILE`.")


@app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="Encoder name (see `pathology encoders list`).")],
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hugging Face token for gated models.")]
    = None,
) -> None:
    """Download an encoder's published weights into the local cache (the only command that downloads)."""
    console = Console(stderr=True)
    with reported(console):
        spec = get_spec(name)
    source = spec.weights
    if not source.needed:
        console.print(f"{spec.name} has no weights to fetch (its parameters are built in)")
        return
    if source.gated:
        console.print(f"{spec.name} is gated: accept its terms at {source.homepage} and log in "
                      "(`hf auth login` or HF_TOKEN) first. Licence: " + source.licence)
    try:
        if source.hf_repo:
            from huggingface_hub import hf_hub_download
            path = Path(hf_hub_download(source.hf_repo, source.hf_file, token=token))
        else:
            path = Path(torch.hub.get_dir()) / "checkpoints" / source.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(source.url, str(path), progress=True)
    except Exception as exc:  # noqa: BLE001 - network, authorization, disk: one line, with the likely cause
        console.print(f"[bold red]error:[/] fetching {spec.name} failed: {escape(one_line(exc)[:300])}")
        raise typer.Exit(EXIT_FAILED) from None
    console.print(f"{spec.name}: weights at {path}")
