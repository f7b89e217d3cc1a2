"""`tol init`, `tol status`, `tol pull` and `tol manifests`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.manifest import find_manifest, load_manifest, load_pipeline, repo_dir
from treeoflife.progress import download_bars
from treeoflife.pull import PullResult, pull_source
from treeoflife.sources import LOADERS
from treeoflife.workspace import Workspace, status

app = typer.Typer()


@app.command()
def init(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Create a workspace (folders and catalog.duckdb); harmless on an existing one."""
    try:
        Workspace(workspace).init()
    except TolError as exc:
        fail(exc)
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
        fail(exc)
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
        fail(exc)
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


@app.command("manifests")
def list_manifests() -> None:
    """List the pinned source manifests shipped with treeoflife."""
    out = Console()
    for path in sorted(repo_dir("manifests").rglob("*.toml")):
        m = load_manifest(path)
        out.print(f"{path.relative_to(repo_dir('manifests'))}: {m.name} {m.version}  {m.title}")
