"""`tol demo`: the whole chain on the bundled sample, served over loopback HTTP.

The sample files sit in the package laid out like a `wget --mirror` of the real hosts, so
the demo runs the same download and ingest code as a real build, faults included.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from treeoflife.errors import TolError
from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.loopback import FaultPlan, LoopbackServer
from treeoflife.manifest import load_pipeline
from treeoflife.sample import SAMPLE_FILES
from treeoflife.train.models import TINY_MODEL
from treeoflife.workspace import Workspace


@dataclass
class DemoResult:
    """What the demo left behind, for tests and the closing summary."""

    workspace: Workspace
    release_dir: Path | None = None
    checkpoint: Path | None = None
    eval_top1: dict[str, float] = field(default_factory=dict)
    prediction: object | None = None


DEMO_MARKER = ".tol-demo"
DEMO_REPO_ID = "treeoflife/demo-sample"  # only ever planned (dry run), never uploaded
DEMO_TRAIN_STEPS = 300
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


def run_demo(
    root: Path, *, faults: bool, console: Console, train_steps: int = DEMO_TRAIN_STEPS
) -> DemoResult:
    """Pull → resolve → audit → fetch → dedup → shard → verify → publish (dry run) → train →
    evaluate → predict, each stage through the same library call its `tol` command makes."""
    workspace = fresh_demo_workspace(root)
    pipeline = load_pipeline("sample")
    result = DemoResult(workspace=workspace)
    with LoopbackServer(SAMPLE_FILES, faults=demo_faults() if faults else None) as server:
        console.print(f"serving the bundled sample at {server.url} (faults: {faults})")
        _pull(workspace, pipeline, server.url, console)
        _resolve_and_audit(workspace, pipeline, console)
        _fetch(workspace, pipeline, server.url, console)
        survived = [r for r in server.request_log if r[2] >= 500 or r[2] in (0, 429)]
        console.print(
            f"HTTP: {len(server.request_log)} requests, "
            f"{len(survived)} injected faults survived by retry"
        )
    result.release_dir = _dedup_and_release(workspace, pipeline, console)
    if train_steps > 0:
        result.checkpoint = _train(workspace, train_steps, console)
        result.eval_top1 = _evaluate(workspace, result.checkpoint, console)
        result.prediction = _predict(workspace, result.checkpoint, console)
    console.print(f"workspace: {workspace.root}  (try `tol status -w {workspace.root}`)")
    return result


def _stage(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def _pull(workspace: Workspace, pipeline, mirror: str, console: Console) -> None:
    from treeoflife.cli.pull import print_pull_summary, run_pulls

    _stage(console, "tol pull: source metadata")
    results = run_pulls(
        workspace, list(pipeline.sources.values()), mirror=mirror, force=False, policy=DEMO_POLICY
    )
    print_pull_summary(workspace, results)
    for stats in load_sample_authorities(workspace, pipeline, mirror):
        console.print(
            f"authority {stats.authority} {stats.version}: {stats.taxa} taxa "
            f"({stats.accepted} accepted, {stats.synonyms} synonyms), "
            f"{stats.vernaculars} vernacular names"
        )


def _resolve_and_audit(workspace: Workspace, pipeline, console: Console) -> None:
    from treeoflife.taxonomy.audit import audit_workspace, print_coverage_summary
    from treeoflife.taxonomy.resolve import resolve_workspace

    _stage(console, "tol taxa resolve: one 7-rank lineage per record")
    console.print(resolve_workspace(workspace, pipeline.stages.get("taxa")).summary())
    _stage(console, "tol audit: taxonomic coverage")
    report = audit_workspace(workspace)
    print_coverage_summary(report.figures, console)
    console.print(f"report: {report.html_path}")


def _fetch(workspace: Workspace, pipeline, mirror: str, console: Console) -> None:
    from treeoflife.cli.images import fetch_progress
    from treeoflife.images.fetch import fetch_images
    from treeoflife.images.transform import ResizeSpec

    _stage(console, "tol images fetch: download, verify, hash, resize")
    options = pipeline.stages.get("images", {})
    spec = ResizeSpec(
        mode=options.get("resize", "center-crop"),
        size=options.get("size", 224),
        resample=options.get("resample", "auto"),
    )
    with fetch_progress(console) as progress:
        stats = fetch_images(
            workspace, spec, mirror=mirror, client_policy=DEMO_POLICY, workers=2, progress=progress
        )
    console.print(f"images: {stats.summary()}")


def _dedup_and_release(workspace: Workspace, pipeline, console: Console) -> Path:
    from treeoflife.cli.release import print_release_summary
    from treeoflife.images.dedup import DedupOptions, dedup_workspace
    from treeoflife.publish.hub import publish_release
    from treeoflife.shards import ShardOptions, shard_release
    from treeoflife.shards.verify import verify_release

    _stage(console, "tol dedup: exact and perceptual duplicates, eval leakage")
    options = DedupOptions.from_stage(pipeline.stages.get("dedup", {}))
    console.print(dedup_workspace(workspace, options).summary_line())
    _stage(console, "tol shard / verify / publish --dry-run")
    stats = shard_release(workspace, ShardOptions.from_pipeline(pipeline.stages.get("shard", {})))
    report = verify_release(stats.release_dir)
    if not report.ok:
        raise TolError(f"the demo release failed verification: {report.summary()}")
    plan = publish_release(stats.release_dir, DEMO_REPO_ID, dry_run=True)
    print_release_summary(console, stats=stats, report=report, plan=plan)
    return stats.release_dir


def _train(workspace: Workspace, steps: int, console: Console) -> Path:
    from treeoflife.train.loop import train
    from treeoflife.train.params import preset_params

    _stage(console, f"tol train --preset tiny: {steps} steps on the train split (CPU)")
    params = preset_params(
        "tiny",
        shards=[str(workspace.root / "release" / "train")],
        steps=steps,
        warmup_steps=max(1, steps // 10),
        output_dir=workspace.root / "runs" / "demo",
        threads=2,
    )
    result = train(params)
    console.print(
        f"trained {result.steps} steps at {result.samples_per_s:.0f} samples/s; "
        f"final loss {result.final_loss:.3f}; checkpoint {result.checkpoint}"
    )
    return result.checkpoint


def _evaluate(workspace: Workspace, checkpoint: Path, console: Console) -> dict[str, float]:
    from treeoflife.evaluate import evaluate, format_table

    _stage(console, "tol eval: held-out val split, trained vs untrained")
    result = evaluate(
        [f"trained={checkpoint}", "untrained=random"],
        ["demo"],
        model_name=TINY_MODEL,
        data_root=workspace.root / "release",
        shots=(1,),
    )
    console.print(format_table(result), highlight=False)
    result.write_json(workspace.reports / "eval-demo.json")
    return {run.checkpoint.label: run.tasks["demo"].value("zero_shot") for run in result.runs}


def _predict(workspace: Workspace, checkpoint: Path, console: Console):
    """Classify one held-out image over every taxon in the catalog."""
    from treeoflife.evaluate.predict import predict_images

    _stage(console, "tol predict: one held-out image against every taxon in the catalog")
    image, truth = first_val_image(workspace.root / "release", workspace.root / "predict")
    [prediction] = predict_images(
        checkpoint, TINY_MODEL, [image], workspace.root, top_k=5, cache_dir=workspace.root / "cache"
    )
    console.print(f"{image.name}: true species [italic]{truth}[/]")
    for rank, score in enumerate(prediction.top, 1):
        mark = "  <- true" if score.name == truth else ""
        console.print(f"  {rank}. {score.name} ({score.probability:.1%}){mark}", highlight=False)
    return prediction


def first_val_image(release_dir: Path, out_dir: Path) -> tuple[Path, str]:
    """The first val image resolved to species, written out as a file, and its species."""
    import json
    import tarfile

    out_dir.mkdir(parents=True, exist_ok=True)
    for shard in sorted((release_dir / "val").glob("*.tar")):
        with tarfile.open(shard) as archive:
            members = {m.name: m for m in archive.getmembers()}
            for key in sorted(n.rsplit(".", 1)[0] for n in members if n.endswith(".jpg")):
                taxonomy = json.load(archive.extractfile(members[f"{key}.json"]))["taxonomy"]
                if taxonomy.get("genus") and taxonomy.get("species"):
                    image = out_dir / f"{Path(key).name}.jpg"
                    image.write_bytes(archive.extractfile(members[f"{key}.jpg"]).read())
                    return image, species_name(taxonomy)
    raise TolError(f"{release_dir / 'val'}: no image resolved to species")


def species_name(taxonomy: dict) -> str:
    """The sample's scientific name by the rule predictions name taxa with."""
    from treeoflife.evaluate.tasks import TaxonLabel
    from treeoflife.workspace import RANKS

    return TaxonLabel(name="", ranks=tuple(taxonomy.get(r) or "" for r in RANKS)).scientific
