"""`tol demo`: the whole chain on the bundled sample, as a new user first runs it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.demo import fresh_demo_workspace
from treeoflife.workspace import Workspace


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_the_trained_model_beats_an_untrained_one(tmp_path):
    runner = CliRunner()
    ws = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert "injected faults survived" in result.output
    assert "340 ok, 6 failed" in result.output  # the sample's 6 corrupt or missing images
    assert "all good" in result.output  # tol verify on the release
    assert "would upload" in result.output  # tol publish --dry-run
    assert sorted(p.name for p in (ws / "release").iterdir()) >= ["README.md", "catalog.csv"]

    # The trained tol-tiny beats the untrained one zero-shot on the held-out val split.
    evaluation = json.loads((ws / "reports" / "eval-demo.json").read_text())
    top1 = {
        r["checkpoint"]["label"]: r["tasks"]["demo"]["zero_shot"]["top1"]
        for r in evaluation["runs"]
    }
    assert top1["trained"] > top1["untrained"] + 20, top1

    # `tol predict` on a held-out image ranks its true species in the top 5 of every taxon.
    [image] = (ws / "predict").glob("*.jpg")
    with Workspace(ws).connect(read_only=True) as con:
        species = con.execute("SELECT count(DISTINCT species) FROM taxa_resolved").fetchone()[0]
    assert species > 20  # a real choice, not a handful of taxa
    predicted = runner.invoke(
        app,
        [
            "predict",
            str(image),
            "-c",
            str(ws / "runs/demo/final.pt"),
            "--model",
            "tol-tiny",
            "--taxa",
            str(ws),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            "-k",
            "5",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    [prediction] = json.loads(predicted.stdout)
    truth = demo_truth(ws / "release", image.stem)
    assert truth in [" ".join(t["ranks"][5:]) for t in prediction["top"]], (truth, prediction)


def demo_truth(release: Path, key: str) -> str:
    """`Genus species` of one released val sample, read from its json member."""
    for shard in sorted((release / "val").glob("*.tar")):
        with tarfile.open(shard) as archive:
            for member in archive:
                if member.name.endswith(f"{key}.json"):
                    taxonomy = json.load(archive.extractfile(member))["taxonomy"]
                    return f"{taxonomy['genus']} {taxonomy['species'].split()[-1]}"
    raise AssertionError(f"{key} not in the val split")


def test_demo_recreates_only_its_own_workspace(tmp_path):
    demo_ws = fresh_demo_workspace(tmp_path / "demo")
    (demo_ws.root / "leftover").write_text("x")
    again = fresh_demo_workspace(tmp_path / "demo")
    assert not (again.root / "leftover").exists() and again.catalog_path.exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious").write_text("keep")
    refused = CliRunner().invoke(app, ["demo", "-w", str(other)])
    assert refused.exit_code == 1 and "not a demo workspace" in refused.output
    assert (other / "precious").read_text() == "keep"
