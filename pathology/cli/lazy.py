"""A typer/click group whose sub-commands are imported only when one of them runs.

``pathology --help`` lists every command from a name and a one-line help without importing
any of them, and ``pathology tile`` imports the tiling code and nothing else (no torch).
"""

from __future__ import annotations

import gc
import importlib
from dataclasses import dataclass
from typing import ClassVar

import click
import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a sub-command lives (``"package.module:attribute"``: a command function or a
    ``typer.Typer`` group) and its one-line help for the command list."""

    target: str
    help: str


class _Listed(click.Command):
    """Stands in for a sub-command in the help listing (name and one line of help only)."""


class LazyGroup(TyperGroup):
    """A group whose ``lazy_commands`` are loaded on first use."""

    lazy_commands: ClassVar[dict[str, LazyCommand]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *(n for n in self.lazy_commands if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        spec = self.lazy_commands[cmd_name]
        return _Listed(cmd_name, help=spec.help, short_help=spec.help)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if isinstance(cmd, _Listed) and name is not None:
            cmd = self.load(name)
        return name, cmd, rest

    def load(self, name: str) -> click.Command:
        """Import the command ``name`` and keep it."""
        module_name, attribute = self.lazy_commands[name].target.split(":")
        obj = getattr(importlib.import_module(module_name), attribute)
        # What start-up made (modules, classes, functions: ~10^5 objects) lives until exit: the
        # collector skips it from now on, in the run's collections and at exit; it collects again
        # from here if the console script (pathology.__main__) paused it for start-up.
        gc.freeze()
        gc.enable()
        if not isinstance(obj, typer.Typer):
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command(name)(obj)
            obj = single
        command = typer.main.get_command(obj)
        command.name = name
        self.commands[name] = command
        return command


def lazy_group(commands: dict[str, LazyCommand]) -> type[LazyGroup]:
    """A :class:`LazyGroup` class for ``commands`` (typer instantiates the class itself)."""
    return type("Lazy" + LazyGroup.__name__, (LazyGroup,), {"lazy_commands": dict(commands)})
