"""`tol shard`, `tol verify`, `tol publish`: build, check and upload a release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError

app = typer.Typer()


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def load_options(pipeline: str | None, **overrides):
    """ShardOptions from the pipeline's `[stages.shard]`, with CLI values on top."""
    from treeoflife.manifest import load_pipeline
    from treeoflife.shards import ShardOptions

    stage = load_pipeline(pipeline).stages.get("shard", {}) if pipeline else {}
    return ShardOptions.from_pipeline(stage, **overrides)


def how_to_load(release_dir: Path) -> list[str]:
    """The lines that say where a release is and how to read it."""
    return [
        f"release: {release_dir}",
        f"  catalog: {release_dir / 'catalog.csv'} (+ catalog.parquet, licenses.csv)",
        f"  card:    {release_dir / 'README.md'}",
        "  load:    import webdataset as wds; "
        f"wds.WebDataset(sorted(glob.glob('{release_dir}/train/*.tar')), shardshuffle=False)"
        ".decode('pil').to_tuple('jpg', 'taxon_com.txt')",
        "           datasets.load_dataset('webdataset', "
        f"data_files={{'train': '{release_dir}/train/*.tar'}}, split='train')",
    ]


def print_release_summary(out: Console, stats=None, report=None, plan=None) -> None:
    """One console block for `tol demo`: shard stats, verify result, publish plan."""
    if stats is not None:
        out.print(stats.summary())
    if report is not None:
        style = "green" if report.ok else "bold red"
        out.print(f"[{style}]{report.summary()}[/]")
    if plan is not None:
        out.print(plan.summary())
    if stats is not None:
        for line in how_to_load(stats.release_dir):
            out.print(line, highlight=False, soft_wrap=True)


@app.command()
def shard(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    pipeline: Annotated[
        str | None,
        typer.Option(help="Pipeline file or name whose [stages.shard] gives the defaults."),
    ] = "treeoflife-10m",
    ids_from: Annotated[
        Path | None,
        typer.Option(
            help="A published TreeOfLife catalog.csv: reuse its treeoflife_ids and splits for "
            "the images it lists (matched by EOL content id, iNat21 or BIOSCAN file name)."
        ),
    ] = None,
    shard_size: Annotated[
        str | None,
        typer.Option(help="Target shard size, e.g. 1GB or 500MB (default 1GB)."),
    ] = None,
    shard_samples: Annotated[
        int | None, typer.Option(help="Also cap the samples per shard at N.")
    ] = None,
    min_shards: Annotated[
        int | None,
        typer.Option(
            help="Write at least N shards per split (if it has N samples), so every data "
            "loader worker on every GPU gets one (default 8)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes writing shards in parallel (default 1).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of splits and shuffle.")] = None,
) -> None:
    """Assign splits and ids, apply the licence policy, and write `release/`: shards of
    jpg + 10 text members + json, sizes.json, catalog.csv/.parquet, licenses.csv,
    manifest.json and the dataset card. Re-running rewrites only shards whose content
    changed; an interrupted run resumes."""
    from treeoflife.shards import parse_size, shard_release
    from treeoflife.workspace import Workspace

    try:
        options = load_options(
            pipeline,
            ids_from=ids_from,
            shard_bytes=parse_size(shard_size) if shard_size else None,
            shard_samples=shard_samples,
            min_shards=min_shards,
            workers=workers,
            seed=seed,
        )
        ws = Workspace(workspace)
        with _bar() as progress:
            task = progress.add_task("writing shards", total=None)

            def planned(to_write: int, kept: int) -> None:
                progress.update(task, total=to_write)
                if kept:
                    console.print(f"{kept} shards unchanged since the last run: kept")

            stats = shard_release(
                ws, options, on_shard=lambda _r: progress.advance(task), on_plan=planned
            )
    except TolError as exc:
        fail(exc)
    print_release_summary(console, stats=stats)


@app.command()
def verify(
    release_dir: Annotated[
        Path | None,
        typer.Argument(help="Release folder (default: the workspace's release/)."),
    ] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    workers: Annotated[int, typer.Option(help="Shards checked in parallel.")] = 2,
    show: Annotated[int, typer.Option(help="Print at most this many problems.")] = 20,
) -> None:
    """Re-read every shard: tar integrity, full member set, image decodes, text matches
    the catalog, sha256 matches manifest.json. Exits 1 naming each bad shard and sample."""
    from treeoflife.shards.verify import verify_release

    folder = release_dir or workspace / "release"
    try:
        manifest = folder / "manifest.json"
        total = len(json.loads(manifest.read_text())["shards"]) if manifest.is_file() else None
    except (ValueError, KeyError):
        total = None  # verify_release reports the broken manifest
    try:
        with _bar() as progress:
            task = progress.add_task("verifying shards", total=total)
            report = verify_release(
                folder, workers=workers, on_shard=lambda _c: progress.advance(task)
            )
    except TolError as exc:
        fail(exc)
    for problem in report.problems[:show]:
        console.print(f"[red]bad:[/] {problem}", highlight=False)
    if len(report.problems) > show:
        console.print(f"... and {len(report.problems) - show} more")
    console.print(report.summary(), highlight=False)
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
def publish(
    repo_id: Annotated[str, typer.Option(help="Dataset repo on the Hub, ORG/NAME.")],
    release_dir: Annotated[
        Path | None,
        typer.Argument(help="Release folder (default: the workspace's release/)."),
    ] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    dry_run: Annotated[
        bool,
        typer.Option(help="List the files that would be uploaded and print the card; no upload."),
    ] = False,
    check_remote: Annotated[
        bool, typer.Option(help="With --dry-run, also list the repo to show what is missing.")
    ] = False,
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
) -> None:
    """Upload the release with huggingface_hub `upload_folder`, batch by batch, uploading
    only files the repo lacks (re-run after an interruption to continue). The token comes
    from HF_TOKEN or `hf auth login`; it is never printed."""
    from treeoflife.publish.hub import publish_release

    folder = release_dir or workspace / "release"
    try:
        plan = publish_release(
            folder,
            repo_id,
            dry_run=dry_run,
            private=private,
            check_remote=check_remote,
            on_batch=lambda n, total, batch: console.print(
                f"batch {n}/{total}: {len(batch)} files committed"
            ),
        )
    except TolError as exc:
        fail(exc)
    if dry_run:
        for f in plan.upload:
            typer.echo(f"upload {f.path} ({f.size} bytes, sha256 {f.sha256[:12]})")
        typer.echo(plan.card)
    console.print(plan.summary(), highlight=False)
    if plan.url:
        console.print(f"published: {plan.url}")
