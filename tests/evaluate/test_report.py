"""The paper's table, JSON, several checkpoints side by side, and the `tol` commands."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.evaluate import evaluate, format_table
from treeoflife.evaluate.checkpoints import parse_checkpoint
from treeoflife.evaluate.report import EvalResult, RunResult, TaskResult
from treeoflife.evaluate.tasks import bioclip_suite, load_task


def test_parse_checkpoint_specs(tmp_path):
    path = tmp_path / "final.pt"
    path.write_bytes(b"")
    assert parse_checkpoint(f"trained={path}", "ViT-B-16").label == "trained"
    spec = parse_checkpoint("clip=ViT-B-16@openai", "tol-tiny")
    assert (spec.label, spec.model_name, spec.source) == ("clip", "ViT-B-16", "openai")
    assert parse_checkpoint("random", "tol-tiny").label == "random"
    assert parse_checkpoint(str(path), "tol-tiny").label == f"{tmp_path.name}/final"
    named = tmp_path / "named.pt"
    torch.save({"state_dict": {}, "model": "tol-tiny", "step": 3}, named)  # as tol train saves
    assert parse_checkpoint(str(named), "ViT-B-16").model_name == "tol-tiny"


def test_table_puts_published_rows_beside_the_runs():
    suite = bioclip_suite()
    fake = {t.name: TaskResult(t.name, zero_shot={"top1": 10.0, "top5": None}) for t in suite}
    fake["rare-species"].few_shot["1"] = {"top1": 30.0, "top1_std": 1.5}
    runs = [
        RunResult(parse_checkpoint("mine=random", "tol-tiny"), fake),
        RunResult(parse_checkpoint("other=random", "tol-tiny"), dict(fake)),
    ]
    table = format_table(EvalResult(tasks=suite, runs=runs))
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    assert header.split(" | ")[1:4] == ["Birds 525", "Plankton", "Insects"]
    assert header.endswith("Mean |")
    bioclip = next(line for line in lines if line.startswith("| BioCLIP (published)"))
    assert "74.7" in bioclip and bioclip.endswith("| 41.6 |")
    assert any(line.startswith("| **mine** |") and line.endswith("| 10.0 |") for line in lines)
    assert any(line.startswith("| **other** |") for line in lines)
    assert "**One-shot top-1 accuracy (%)**" in table and "30.0 ± 1.5" in table
    assert "**Five-shot" not in table  # no run has five-shot results


def test_evaluate_json_and_missing_tasks(tmp_path, image_folder, trained_checkpoint):
    toml = tmp_path / "synthetic.toml"
    toml.write_text(
        f'[task]\nname = "synthetic"\ncolumn = "Synth"\n[data]\ndir = "{image_folder.name}"\n'
    )
    result = evaluate(
        [trained_checkpoint],
        [load_task(toml), "fungi"],
        model_name="tol-tiny",
        data_root=image_folder.parent,
        shots=(1, 5),
        seeds=(0, 1, 2),
        skip_missing=True,
    )
    written = json.loads(result.write_json(tmp_path / "results.json").read_text())
    run = written["runs"][0]
    synthetic = run["tasks"]["synthetic"]
    assert synthetic["num_images"] == 48 and synthetic["num_classes"] == 6
    assert set(synthetic["few_shot"]) == {"1", "5"}
    assert synthetic["few_shot"]["5"]["seeds"] == 3
    assert 0 <= synthetic["zero_shot"]["mean_per_class_recall"] <= 100
    assert "no data" in run["tasks"]["fungi"]["error"]
    assert run["mean"]["zero_shot"] is None  # a skipped task leaves no mean
    assert "Skipped:" in format_table(result)


@pytest.mark.slow
def test_tol_eval_predict_and_embeddings_commands(
    tmp_path, image_folder, release_root, trained_checkpoint, taxa
):
    runner = CliRunner()
    toml = tmp_path / "synthetic.toml"
    toml.write_text(f'[task]\nname = "synthetic"\n[data]\ndir = "{image_folder.name}"\n')
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["eval", f"trained={trained_checkpoint}", "base=random", "--model", "tol-tiny",
         "--task", str(toml), "--data-root", str(image_folder.parent), "--seeds", "2",
         "--text-type", "taxon_com", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "**trained**" in table and "**base**" in table
    assert (
        json.loads((out / "results.json").read_text())["runs"][0]["tasks"]["synthetic"]["text_type"]
        == "taxon_com"
    )

    result = runner.invoke(
        app,
        ["eval", f"trained={trained_checkpoint}", "--model", "tol-tiny", "--task", "demo",
         "--embeddings", "--split", "val",
         "--data-root", str(release_root), "--out", str(tmp_path / "emb"), "--k", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "emb" / "embeddings.html").exists()

    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "kingdom,phylum,class,order,family,genus,species,common\n"
        + "".join(",".join([*t.ranks, t.common]) + "\n" for t in taxa)
    )
    image = next((image_folder / "test" / taxa[2].folder).iterdir())
    result = runner.invoke(
        app,
        ["predict", str(image), "-c", str(trained_checkpoint), "--model", "tol-tiny",
         "--taxa", str(catalog),
         "--json", "--templates", "single", "--cache-dir", str(tmp_path / "cache")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [prediction] = json.loads(result.stdout[result.stdout.index("[") :])
    assert [c["name"] for c in prediction["lineage"]] == list(prediction["species"]["ranks"])

    result = runner.invoke(
        app,
        ["eval", "random", "--model", "tol-tiny", "--task", "fungi", "--data-root", str(tmp_path)],
    )
    assert result.exit_code == 1 and "no data" in result.output
