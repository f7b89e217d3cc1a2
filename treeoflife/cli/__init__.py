"""The `tol` command line: one module per stage group; each parses options and calls the
stage's functions, with no logic of its own. Modules register on the root app here."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from treeoflife import __version__
from treeoflife.cli import audit, demo, pull, taxa
from treeoflife.cli import dedup as dedup_cli
from treeoflife.cli import evaluate as evaluate_cli
from treeoflife.cli import images as images_cli
from treeoflife.cli import release as release_cli
from treeoflife.cli import train as train_cli

app = typer.Typer(
    help="treeoflife: build, audit, publish and train on TreeOfLife-style biology image "
    "datasets. Every command reads and writes one workspace folder (--workspace).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log retries and steps.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if version:
        print(__version__)
        raise typer.Exit()


# A sub-app added without a name merges its commands into the root; groups carry a name.
# Registered in pipeline order, which is the order `tol --help` lists them.
app.add_typer(pull.app)
app.add_typer(taxa.taxa_app, name="taxa")
app.add_typer(audit.app)
app.add_typer(images_cli.images_app, name="images")
app.add_typer(dedup_cli.app)
app.add_typer(release_cli.app)
app.add_typer(train_cli.app)
app.add_typer(evaluate_cli.app)
app.add_typer(demo.app)
