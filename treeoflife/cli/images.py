"""`tol images fetch`: parse options, show progress, call `treeoflife.images.fetch`."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.http import HttpPolicy
from treeoflife.workspace import Workspace

images_app = typer.Typer(
    help="Fetch, verify, hash and resize the images of every record (staging shards).",
    no_args_is_help=True,
)


class ResizeMode(StrEnum):
    center_crop = "center-crop"
    bioclip = "bioclip"
    keep_ratio = "keep-ratio"
    none = "none"


class Resample(StrEnum):
    auto = "auto"
    area = "area"
    bicubic = "bicubic"
    lanczos = "lanczos"


class EngineName(StrEnum):
    local = "local"
    ray = "ray"


@contextlib.contextmanager
def fetch_progress(out: Console) -> Iterator[Callable]:
    """A rich bar for `fetch_images(progress=...)`: images done, images/s, ok/failed/skipped."""
    columns = (
        TextColumn("images"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f}/s"),
        TextColumn(
            "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
            "[yellow]{task.fields[skipped]} skipped[/]"
        ),
        TimeElapsedColumn(),
    )
    began = time.monotonic()
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("images", total=None, rate=0.0, ok=0, failed=0, skipped=0)

        def update(live) -> None:
            counts = live.counts()
            done = live.completed()
            elapsed = max(1e-6, time.monotonic() - began)
            progress.update(
                task,
                total=live.total,
                completed=done,
                rate=done / elapsed,
                ok=counts.get("ok", 0),
                failed=counts.get("failed", 0),
                skipped=counts.get("skipped", 0),
            )

        yield update


@images_app.command("fetch")
def fetch(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    workers: Annotated[
        int, typer.Option(help="Worker processes (local) or concurrent units (ray).")
    ] = 2,
    threads: Annotated[
        int, typer.Option(help="Download/decode threads inside each worker process.")
    ] = 16,
    unit_size: Annotated[
        int,
        typer.Option(
            help="Records per work unit: one staging shard, committed atomically. Smaller "
            "when fewer records are pending, so every worker gets a share."
        ),
    ] = 10_000,
    engine: Annotated[
        EngineName, typer.Option(help="Run units on a local process pool or on Ray.")
    ] = EngineName.local,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (e.g. auto, ray://head:10001); default: local."),
    ] = None,
    resize: Annotated[
        ResizeMode,
        typer.Option(
            help="center-crop: crop to a square, then SIZE x SIZE; bioclip: BioCLIP's 224x224 "
            "resize; keep-ratio: longest side SIZE; none: keep the original pixels."
        ),
    ] = ResizeMode.center_crop,
    size: Annotated[int, typer.Option(help="Output size in pixels for --resize.")] = 224,
    jpeg_quality: Annotated[int, typer.Option(help="Quality of the stored JPEGs.")] = 95,
    resample: Annotated[
        Resample,
        typer.Option(
            help="Resize filter. auto: bicubic for bioclip (BioCLIP's); otherwise area when "
            "shrinking, Lanczos when enlarging (img2dataset's defaults)."
        ),
    ] = Resample.auto,
    fast_hash: Annotated[
        bool,
        typer.Option(help="Hash from a draft-mode decode (faster, a few bits may differ)."),
    ] = False,
    respect_robots: Annotated[
        bool,
        typer.Option(
            "--respect-robots/--no-respect-robots",
            help="Skip images served with X-Robots-Tag noai/noimageai (recorded as skipped).",
        ),
    ] = True,
    retries: Annotated[int, typer.Option(help="HTTP retries per image (429/5xx/network).")] = 5,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a connection or for the next bytes.")
    ] = 20.0,
    per_host: Annotated[
        int,
        typer.Option(
            help="Most concurrent requests to one host, per worker; halved on 429/5xx and "
            "regained on success."
        ),
    ] = 16,
    deadline: Annotated[
        float, typer.Option(help="Seconds one image may take, retries included.")
    ] = 120.0,
    mirror: Annotated[
        str | None,
        typer.Option(
            help="Read every URL from a mirror laid out like `wget --mirror` "
            "(MIRROR/<host>/<path>), e.g. a local copy or a loopback server."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Plan at most this many more records (a trial run).")
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(help="Fetch again the images that failed for a transient reason."),
    ] = False,
    pipeline: Annotated[
        str | None,
        typer.Option(
            help="Pipeline whose manifests locate the image archives (default: any "
            "manifest matching the pulled source version)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's stats as JSON on stdout.")
    ] = False,
) -> None:
    """Fetch every record's image that is not yet done, in one pass per image: download (or
    read the archive member), verify, sha256 + perceptual hashes, resize, encode JPEG, and
    append to `staging/unit-NNNNNN.tar`. Each unit commits atomically into the `images`
    table (status ok | failed | skipped, with the reason); a killed run resumes where it
    stopped, with nothing lost or doubled.
    """
    from treeoflife.images.fetch import fetch_images
    from treeoflife.images.transform import ResizeSpec

    try:
        ws = Workspace(workspace)
        if not ws.exists():
            raise TolError(f"no workspace at {workspace}; run `tol pull` first")
        spec = ResizeSpec(
            mode=resize.value,
            size=size,
            jpeg_quality=jpeg_quality,
            fast_hash=fast_hash,
            resample=resample.value,
        )
        policy = HttpPolicy(
            retries=retries,
            connect_timeout_s=timeout,
            read_timeout_s=timeout,
            per_host_concurrency=per_host,
        )
        with fetch_progress(console) as progress:
            stats = fetch_images(
                ws,
                spec,
                mirror=mirror,
                client_policy=policy,
                engine=engine.value,
                workers=workers,
                threads=threads,
                unit_size=unit_size,
                limit=limit,
                respect_robots=respect_robots,
                address=address,
                retry_failed=retry_failed,
                pipeline=pipeline,
                image_deadline_s=deadline,
                progress=progress,
            )
    except TolError as exc:
        fail(exc)
    console.print(f"images: {stats.summary()}")
    totals = ", ".join(f"{count} {status}" for status, count in sorted(stats.totals.items()))
    console.print(f"workspace {Path(workspace)}: images table holds {totals or 'nothing'}")
    if stats.units_failed:
        console.print(
            f"[red]{stats.units_failed} units failed[/] and stay planned; re-run to retry them"
        )
    for problem in stats.problems:
        console.print(f"[red]error:[/] {problem}")
    if stats.units_waiting:
        console.print(
            f"{stats.units_waiting} units wait for their archive; fix the above and re-run"
        )
    if as_json:
        print(
            json.dumps(
                {
                    "units": stats.units,
                    "units_failed": stats.units_failed,
                    "units_waiting": stats.units_waiting,
                    "problems": stats.problems,
                    "ok": stats.ok,
                    "failed": stats.failed,
                    "skipped": stats.skipped,
                    "reasons": stats.reasons,
                    "seconds": round(stats.seconds, 3),
                    "images_per_s": round(stats.images_per_s, 1),
                    "totals": stats.totals,
                },
                indent=2,
            )
        )
    if stats.units_failed or stats.units_waiting:
        raise typer.Exit(code=1)
