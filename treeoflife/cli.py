"""The `tol` command line: parses options and calls the stage functions; no logic of its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from treeoflife import __version__
from treeoflife.errors import TolError
from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.manifest import find_manifest, load_manifest, load_pipeline, repo_dir
from treeoflife.progress import download_bars
from treeoflife.pull import PullResult, pull_source
from treeoflife.sources import LOADERS
from treeoflife.workspace import DEFAULT_WORKSPACE, Workspace, status

app = typer.Typer(
    help="treeoflife: build, audit, publish and train on TreeOfLife-style biology image "
    "datasets. Every command reads and writes one workspace folder (--workspace).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
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


def _fail(exc: TolError) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


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


@app.command()
def init(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Create a workspace (folders and catalog.duckdb); harmless on an existing one."""
    try:
        Workspace(workspace).init()
    except TolError as exc:
        _fail(exc)
    console.print(f"workspace ready at {workspace}")


@app.command("status")
def status_command(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show per-stage completion and row counts of a workspace."""
    try:
        with Workspace(workspace).connect(read_only=True) as con:
            report = status(con)
    except TolError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"workspace {workspace} (schema v{report['schema_version']})")
    for column in ("stage", "complete", "rows"):
        table.add_column(column)
    for stage, info in report["stages"].items():
        table.add_row(stage, "yes" if info["complete"] else "no", str(info["rows"]))
    Console().print(table)
    for source, info in report["stages"]["pull"]["sources"].items():
        Console().print(
            f"  pulled {source} {info['version']}: {info['records']} records, "
            f"{info['quarantined']} quarantined"
        )


@app.command()
def pull(
    source: Annotated[
        str,
        typer.Argument(help=f"Source to pull: {', '.join(sorted(LOADERS))}, or 'all'."),
    ],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    pipeline: Annotated[
        str,
        typer.Option(help="Pipeline file (or name in pipelines/) naming each source's manifest."),
    ] = "treeoflife-10m",
    manifest: Annotated[
        Path | None,
        typer.Option(help="Use this manifest file instead of the pipeline's for SOURCE."),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            help="Read every URL from a mirror laid out like `wget --mirror` "
            "(MIRROR/<host>/<path>), e.g. a local copy or a loopback server."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Re-ingest even when the downloaded files are unchanged.")
    ] = False,
    retries: Annotated[int, typer.Option(help="HTTP retries per request.")] = 5,
) -> None:
    """Download a source's metadata (resumable, checksummed) and ingest it into the catalog.

    Every source column lands in `raw_<source>__<file>` tables; one row per image goes to
    `records`; malformed rows go to `quarantine` with file, line and reason. Re-running
    adds nothing twice and skips sources whose files are unchanged.
    """
    try:
        if manifest is not None:
            manifests = [load_manifest(manifest)]
        else:
            plan = load_pipeline(pipeline)
            if source == "all":
                manifests = list(plan.sources.values())
            elif source in plan.sources:
                manifests = [plan.sources[source]]
            elif source in LOADERS:
                manifests = [find_manifest(source)]
            else:
                raise TolError(
                    f"unknown source {source!r}: pipeline {plan.path} lists "
                    f"{', '.join(plan.sources)}; tol pull knows {', '.join(sorted(LOADERS))}"
                )
        ws = Workspace(workspace).init()
        policy = HttpPolicy(retries=retries)
        results = run_pulls(ws, manifests, mirror=mirror, force=force, policy=policy)
    except TolError as exc:
        _fail(exc)
    print_pull_summary(ws, results)


def run_pulls(
    ws: Workspace, manifests, *, mirror: str | None, force: bool, policy: HttpPolicy
) -> list[PullResult]:
    """Pull each manifest's source in turn (authority manifests are skipped here)."""
    results = []
    with HttpClient(policy) as client, download_bars(console) as bars:
        for manifest in manifests:
            if manifest.name not in LOADERS:
                continue  # authorities are loaded by `tol taxa load-authority`
            with console.status(f"pulling {manifest.name} {manifest.version} ..."):
                results.append(
                    pull_source(ws, manifest, client, mirror=mirror, force=force, progress=bars)
                )
    return results


def print_pull_summary(ws: Workspace, results: list[PullResult]) -> None:
    out = Console()
    table = Table(title="tol pull")
    for column in ("source", "version", "records", "quarantined", ""):
        table.add_column(column)
    for r in results:
        note = "unchanged, skipped" if r.skipped else "ingested"
        table.add_row(r.source, r.version, str(r.records), str(r.quarantined), note)
    out.print(table)
    with ws.connect(read_only=True) as con:
        reasons = con.execute(
            "SELECT source, file, line, reason FROM quarantine ORDER BY source, file, line"
        ).fetchall()
    if reasons:
        out.print(f"[bold]quarantined rows[/] ({len(reasons)}; table `quarantine`):")
        for source, file, line, reason in reasons[:40]:
            out.print(f"  {source} {file}:{line}  {reason}")
        if len(reasons) > 40:
            out.print(f"  ... and {len(reasons) - 40} more")


taxa_app = typer.Typer(
    help="Taxonomy: load authorities (GBIF backbone, Catalogue of Life, iNaturalist taxa).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(taxa_app, name="taxa")


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
        _fail(exc)
    print(json.dumps(stats.to_json(), indent=2))


@app.command()
def demo(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Demo workspace (recreated each run).")
    ] = Path("tol-demo"),
    faults: Annotated[
        bool, typer.Option(help="Inject HTTP faults (5xx, 429, resets, truncation).")
    ] = True,
) -> None:
    """Run the pipeline on the bundled sample, served from a loopback HTTP server."""
    from treeoflife.demo import run_demo

    try:
        run_demo(workspace, faults=faults, console=Console())
    except TolError as exc:
        _fail(exc)


@app.command("manifests")
def list_manifests() -> None:
    """List the pinned source manifests shipped with treeoflife."""
    out = Console()
    for path in sorted(repo_dir("manifests").rglob("*.toml")):
        m = load_manifest(path)
        out.print(f"{path.relative_to(repo_dir('manifests'))}: {m.name} {m.version}  {m.title}")
