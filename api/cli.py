"""The `degsearch` command: one Typer app; each command group lives in ``api/commands/<group>.py``.

Every subcommand is a few lines over a library call. Heavy imports (torch, faiss) happen inside
command bodies so `degsearch --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from indexer.errors import DegsearchError

app = typer.Typer(help="Index speech archives by what is wrong with the audio.", no_args_is_help=True)
err_console = Console(stderr=True)

# Each module exposes ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = ("db", "indexing", "model", "retrieval", "serve", "evaluation", "demo")

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"api.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command group not written yet
        if exc.name != f"api.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Entry point: run the app, turning :class:`DegsearchError` into a one-line error and exit code."""
    try:
        code = app(standalone_mode=False)
        # Without standalone mode click returns (not raises) the code of `raise typer.Exit(code)`.
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)
    except DegsearchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)  # one line
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, (click.exceptions.Exit, typer.Exit)):
            sys.exit(exc.exit_code)
        # Typer vendors its own click: its usage errors are not click's classes but behave alike.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
