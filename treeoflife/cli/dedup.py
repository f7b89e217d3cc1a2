"""`tol dedup`: exact and near-duplicate removal and eval-set leakage filtering."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.images.dedup import (
    DEFAULT_PDQ_THRESHOLD,
    DEFAULT_THRESHOLD,
    KEEP_KEYS,
    SOURCE_PRIORITY,
    DedupOptions,
    DedupStats,
    KeepPolicy,
    dedup_workspace,
)

app = typer.Typer()


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command()
def dedup(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    threshold: Annotated[
        int,
        typer.Option(
            help="Near duplicates: phash Hamming distance (of 64 bits) at or below which two "
            "images are one. 4 keeps re-encodes, resizes and slight crops together while "
            "distinct photos (about 32 bits apart) never merge; see docs/dedup.md.",
        ),
    ] = DEFAULT_THRESHOLD,
    exclude_images: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-images",
            help="Benchmark images that must not leak into training: a folder of images, a "
            "webdataset shard or shard list ('test-{000000..000009}.tar'), optionally named "
            "'NAME=PATH'. Every training image equal to one (sha256) or within --threshold "
            "(phash; PDQ too, see --pdq) is dropped as kind 'leak'. Repeatable.",
        ),
    ] = None,
    exclude_species: Annotated[
        Path | None,
        typer.Option(
            help="Held-out species (BioCLIP's Rare Species rule): a file with one 'Genus "
            "species' per line, or a CSV/TSV with a scientific_name or species column. Their "
            "records are dropped as kind 'excluded-species', matched on the resolved species "
            "(taxa_resolved) when present, else the source's.",
        ),
    ] = None,
    pdq: Annotated[
        bool | None,
        typer.Option(
            "--pdq/--no-pdq",
            help="Also compare 256-bit PDQ hashes with benchmark images (TreeOfLife-200M's "
            "leakage rule). Default: when the images table has a filled pdq column.",
        ),
    ] = None,
    pdq_threshold: Annotated[
        int, typer.Option(help="PDQ Hamming distance (of 256 bits) that counts as a leak.")
    ] = DEFAULT_PDQ_THRESHOLD,
    source_priority: Annotated[
        str,
        typer.Option(
            help="Keep policy: sources in order of preference, comma separated (unlisted "
            "sources rank after these).",
        ),
    ] = ",".join(SOURCE_PRIORITY),
    keep_order: Annotated[
        str,
        typer.Option(
            help="Keep policy: which image of a cluster stays, compared by these keys in "
            "order (source, resolution, license), then by record_id.",
        ),
    ] = ",".join(KEEP_KEYS),
    workers: Annotated[
        int, typer.Option(help="Processes hashing benchmark images (default: CPU count).")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's statistics as JSON on stdout.")
    ] = False,
) -> None:
    """Find exact (sha256) and near (phash) duplicates among fetched images, keep one image
    per cluster, and drop eval-set leaks and held-out species. Writes the `duplicates`
    table (replaced on every run) and reports/dedup.json."""
    try:
        options = DedupOptions(
            threshold=threshold,
            policy=KeepPolicy(
                order=_csv_list(keep_order), source_priority=_csv_list(source_priority)
            ),
            exclude_images=tuple(exclude_images or ()),
            exclude_species=exclude_species,
            pdq=pdq,
            pdq_threshold=pdq_threshold,
            workers=workers or os.cpu_count() or 1,
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            stats = dedup_workspace(workspace, options, progress=progress)
    except TolError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(stats.to_json(), indent=2))
    print_summary(stats)


def print_summary(stats: DedupStats) -> None:
    """The counts per kind, leaks per benchmark, the plan and the summary line."""
    table = Table(title="tol dedup")
    table.add_column("kind")
    table.add_column("dropped", justify="right")
    table.add_column("rule")
    table.add_row("exact", str(stats.exact), "same sha256 of the original bytes")
    table.add_row("near", str(stats.near), f"phash within {stats.threshold} bits")
    table.add_row(
        "leak", str(stats.leak), f"matches one of {stats.benchmark_images} benchmark images"
    )
    table.add_row(
        "excluded-species",
        str(stats.excluded_species),
        f"{len(stats.species_excluded)} held-out species",
    )
    table.add_row("kept", str(stats.kept), f"of {stats.images} fetched images", style="bold")
    console.print(table)
    for benchmark, count in stats.leaks_by_benchmark.items():
        console.print(f"  leaks from {benchmark}: {count}")
    if stats.benchmark_unreadable:
        console.print(f"  [yellow]{stats.benchmark_unreadable} benchmark images unreadable[/]")
    for search, plan in stats.plans.items():
        console.print(f"  {search} search: {plan}")
    console.print(f"  keep policy: {stats.policy}")
    console.print(stats.summary_line())
