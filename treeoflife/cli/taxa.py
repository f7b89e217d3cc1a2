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
    help="Taxonomy: load authorities (GBIF backbone, Catalogue of Life, iNaturalist taxa) "
    "and resolve every record to the 7 ranks.",
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


@taxa_app.command("resolve")
def resolve_command(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    pipeline: Annotated[
        str | None,
        typer.Option(
            help="Pipeline file or name (e.g. `sample`) whose `[stages.taxa]` options to use: "
            "authority_order, prefer (per source), fuzzy_max_distance, vernacular_language."
        ),
    ] = None,
    authority_order: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated authorities to try, first wins (e.g. `col,gbif`); "
            "overrides the pipeline's authority_order."
        ),
    ] = None,
    fuzzy: Annotated[
        int | None,
        typer.Option(help="Largest edit distance for a misspelt genus or epithet (0: off)."),
    ] = None,
    per_record: Annotated[
        str | None,
        typer.Option(
            help="`view` (default) makes `taxa_resolved` a view joining records to their source "
            "taxon's answer, stored once per taxon (like `records`); `table` writes one "
            "`taxa_resolved` row per record (10M rows at TreeOfLife-10M scale)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Resolve every record's name to the 7 ranks against the loaded authorities.

    Fills `taxa_resolved` (one row per record: ranks, common name, method, authority,
    status, flags), `taxa_source_resolved` (one row per source taxon, with a JSON
    explanation) and `taxa_conflicts`. Load authorities first with `tol taxa
    load-authority`. Re-running replaces the previous results in one transaction.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from treeoflife.manifest import load_pipeline
    from treeoflife.taxonomy.resolve import STEPS, ResolveOptions, resolve_taxa

    try:
        stage = dict(load_pipeline(pipeline).stages.get("taxa", {})) if pipeline else {}
        if authority_order:
            stage["authority_order"] = [a.strip() for a in authority_order.split(",") if a]
        if fuzzy is not None:
            stage["fuzzy_max_distance"] = fuzzy
        if per_record is not None:
            stage["per_record"] = per_record
        options = ResolveOptions.from_stage(stage)
        columns = (
            TextColumn("[bold]resolve[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TimeElapsedColumn(),
        )
        with (
            Workspace(workspace).connect() as con,
            Progress(*columns, console=console, transient=True) as progress,
        ):
            task = progress.add_task("", total=len(STEPS))

            def on_step(name: str, index: int, total: int) -> None:
                progress.update(task, description=name, completed=index)

            stats = resolve_taxa(con, options, on_step)
    except TolError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        console.print(stats.summary())
        console.print("methods: " + ", ".join(f"{m} {n:,}" for m, n in stats.by_method.items()))


@taxa_app.command("explain")
def explain_command(
    record_id: Annotated[str, typer.Argument(help="A record id, `<source>:<source_id>`.")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Print how one record was resolved: its ranks, method, flags and the JSON explanation
    (parsed name, matched authority usage, homonym candidates, the source's own ranks)."""
    from treeoflife.taxonomy.resolve import explain

    try:
        with Workspace(workspace).connect(read_only=True) as con:
            found = explain(con, record_id)
    except TolError as exc:
        fail(exc)
    print(json.dumps(found, indent=2, default=str, ensure_ascii=False))
