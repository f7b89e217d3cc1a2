"""`tol taxa ...`: taxonomic authorities and name resolution."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.workspace import Workspace

taxa_app = typer.Typer(
    help="Taxonomy: load authorities (GBIF backbone, Catalogue of Life, iNaturalist taxa).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@taxa_app.command("load-authority")
def load_authority_command(
    kind: Annotated[str, typer.Argument(help="Authority kind: gbif, col or inat.")],
    source: Annotated[
        str,
        typer.Argument(
            help="A local file or folder (backbone.zip, a ColDP zip, taxa.csv.gz), an "
            "http(s) URL, or a manifest (.toml, e.g. manifests/gbif-backbone-2023-08-28.toml)."
        ),
    ],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    version: Annotated[
        str | None, typer.Option(help="Version label (default: the manifest's, else 'local').")
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(help="Mirror laid out like `wget --mirror` (manifests only).")
    ] = None,
) -> None:
    """Load a taxonomic authority into `authority_taxa` and `authority_vernaculars`.

    Streams through DuckDB; builds each accepted taxon's 7-rank classification from the
    flat columns or by walking parent links; synonyms carry their accepted taxon's ranks.
    Re-loading replaces that authority's rows in one transaction.
    """
    from treeoflife.taxonomy.authority import load_authority_from

    try:
        ws = Workspace(workspace).init()
        with HttpClient(HttpPolicy()) as client, console.status(f"loading {kind} ..."):
            stats = load_authority_from(ws, kind, source, client, version=version, mirror=mirror)
    except TolError as exc:
        fail(exc)
    print(json.dumps(stats.to_json(), indent=2))
