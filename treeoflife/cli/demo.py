"""`tol demo`: the whole chain on the bundled sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from treeoflife.cli.common import fail
from treeoflife.errors import TolError

app = typer.Typer()


@app.command()
def demo(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Demo workspace (recreated each run).")
    ] = Path("tol-demo"),
    faults: Annotated[
        bool, typer.Option(help="Inject HTTP faults (5xx, 429, resets, truncation).")
    ] = True,
    train_steps: Annotated[
        int,
        typer.Option(
            help="Steps of tol-tiny training on the demo release (CPU, about a minute); "
            "0 stops after the release."
        ),
    ] = 300,
) -> None:
    """Run the whole chain on the bundled sample, served from a loopback HTTP server with
    injected faults: pull, resolve, audit, fetch images, dedup, shard, verify, publish (dry
    run), train a tiny BioCLIP-style model, evaluate it and classify a held-out image."""
    from treeoflife.demo import run_demo

    try:
        run_demo(workspace, faults=faults, console=Console(), train_steps=train_steps)
    except TolError as exc:
        fail(exc)
