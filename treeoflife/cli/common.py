"""Shared pieces of the `tol` sub-command modules: the console, options and error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from treeoflife.errors import TolError
from treeoflife.workspace import DEFAULT_WORKSPACE

console = Console(stderr=True)

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (catalog.duckdb, downloads/, staging/, release/, reports/).",
        envvar="TOL_WORKSPACE",
    ),
]

__all__ = ["DEFAULT_WORKSPACE", "WorkspaceOption", "console", "fail"]


def fail(exc: TolError) -> NoReturn:
    """Print a project error without a traceback and exit non-zero."""
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)
