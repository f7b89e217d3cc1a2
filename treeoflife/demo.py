"""`tol demo`: the whole chain on the bundled sample, served over loopback HTTP.

The sample files sit in the package laid out like a `wget --mirror` of the real hosts, so
the demo runs the same download and ingest code as a real build, faults included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from treeoflife.errors import TolError
from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.loopback import FaultPlan, LoopbackServer
from treeoflife.manifest import load_pipeline
from treeoflife.sample import SAMPLE_FILES
from treeoflife.workspace import Workspace

DEMO_MARKER = ".tol-demo"
# Short backoffs: the loopback server recovers at once, the demo need not wait like a real run.
DEMO_POLICY = HttpPolicy(retries=5, backoff_base_s=0.05, backoff_max_s=0.5)


def fresh_demo_workspace(root: Path) -> Workspace:
    """Recreate the demo workspace; refuse to delete a folder the demo did not make."""
    if root.exists():
        if not (root / DEMO_MARKER).exists():
            raise TolError(f"{root} exists and is not a demo workspace; pass another --workspace")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / DEMO_MARKER).write_text("created by `tol demo`; deleted by the next demo run\n")
    return Workspace(root).init()


def demo_faults() -> FaultPlan:
    """Every metadata file fails once (503, then a reset on archives) before it succeeds."""
    return FaultPlan(status_5xx_first=1, reset_first=1, status_429_first=0, retry_after_s=0)


def load_sample_authorities(workspace: Workspace, pipeline, mirror: str) -> list:
    """The taxonomy authorities the sample pipeline names, downloaded over loopback."""
    from treeoflife.taxonomy.authority import load_authority_from

    with HttpClient(DEMO_POLICY) as client:
        return [
            load_authority_from(workspace, None, manifest_name, client, mirror=mirror)
            for manifest_name in pipeline.stages.get("taxa", {}).get("authorities", [])
        ]


def run_demo(root: Path, *, faults: bool, console: Console) -> None:
    from treeoflife.cli.pull import print_pull_summary, run_pulls

    workspace = fresh_demo_workspace(root)
    pipeline = load_pipeline("sample")
    with LoopbackServer(SAMPLE_FILES, faults=demo_faults() if faults else None) as server:
        console.print(f"serving the bundled sample at {server.url} (faults: {faults})")
        results = run_pulls(
            workspace,
            list(pipeline.sources.values()),
            mirror=server.url,
            force=False,
            policy=DEMO_POLICY,
        )
        authorities = load_sample_authorities(workspace, pipeline, server.url)
        failed = [r for r in server.request_log if r[2] >= 500 or r[2] in (0, 429)]
    console.print(
        f"HTTP: {len(server.request_log)} requests, {len(failed)} injected faults survived by retry"
    )
    print_pull_summary(workspace, results)
    for stats in authorities:
        console.print(
            f"authority {stats.authority} {stats.version}: {stats.taxa} taxa "
            f"({stats.accepted} accepted, {stats.synonyms} synonyms), "
            f"{stats.vernaculars} vernacular names"
        )
    console.print(f"workspace: {workspace.root}  (try `tol status -w {workspace.root}`)")
