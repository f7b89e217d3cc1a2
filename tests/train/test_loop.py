"""The training loop: schedule, decay groups, a learnable task, open_clip-loadable output."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from tests.train.conftest import CLASSES, draw
from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.train import checkpoint as ckpt
from treeoflife.train.loop import lr_at, param_groups, train
from treeoflife.train.models import TINY_MODEL, register_model_configs
from treeoflife.train.params import preset_params


def tiny(shards: Path, out: Path, **overrides):
    """The tiny preset on one CPU thread (2 threads on a busy 2-core box is 10x slower)."""
    return preset_params("tiny", shards=[str(shards)], output_dir=out, threads=1, **overrides)


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.5 * 0.9)  # half way down the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    decaying = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decaying, decaying[1:], strict=False))


def test_weight_decay_skips_gains_biases_and_logit_scale():
    register_model_configs()
    model = open_clip.create_model(TINY_MODEL)
    no_decay, decay = param_groups(model, 0.2)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in exempt
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("bias") for n in exempt) and any(".ln_" in n for n in exempt)
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


def zero_shot_accuracy(checkpoint: Path, per_class: int = 8) -> float:
    """Held-out pictures classified by their common names through open_clip's own API."""
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_MODEL, pretrained=str(checkpoint)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    rng = random.Random(12345)
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        for _ in range(per_class):
            images.append(preprocess(draw(cls, rng)))
            labels.append(label)
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            model, tokenizer, [c.common for c in CLASSES], ["a photo of {}."]
        )
        features = model.encode_image(torch.stack(images), normalize=True)
        predicted = (features @ classifier).argmax(dim=1)
    return (predicted == torch.tensor(labels)).float().mean().item()


@pytest.fixture(scope="module")
def learned_run(shape_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("learn") / "run"
    params = tiny(shape_shards, out, steps=60, log_every=5, save_every=30, lr=2e-3)
    return train(params)


def test_loss_falls_and_zero_shot_beats_chance(learned_run):
    lines = [json.loads(x) for x in learned_run.metrics_path.read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert losses[0] > math.log(32) - 0.3  # starts near chance for a batch of 32
    assert losses[-1] < losses[0] - 1.0, losses
    accuracy = zero_shot_accuracy(learned_run.checkpoint)
    assert accuracy > 0.6, accuracy  # chance is 1/8


def test_run_folder_holds_metrics_params_and_open_clip_loadable_checkpoints(learned_run):
    run = learned_run.run_dir
    assert learned_run.steps == 60 and learned_run.checkpoint == run / "final.pt"
    assert (run / "latest.pt").resolve() == (run / "final.pt").resolve()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000030.pt"]
    params = json.loads((run / "params.json").read_text())
    assert params["model"] == TINY_MODEL and params["steps"] == 60
    lines = [json.loads(x) for x in learned_run.metrics_path.read_text().splitlines()]
    start, *steps, end = lines
    assert start["event"] == "start" and start["text_sampling"] == "per-sample"
    assert [x["step"] for x in steps] == list(range(5, 61, 5))
    for record in steps:
        assert {"loss", "lr", "samples_per_s", "data_wait_s", "data_wait_share"} <= set(record)
        assert 0 <= record["data_wait_share"] <= 1
    assert end["event"] == "end" and end["final_loss"] == pytest.approx(steps[-1]["loss"])

    saved = ckpt.load_checkpoint(run / "final.pt")
    model, _, _ = open_clip.create_model_and_transforms(
        TINY_MODEL, pretrained=str(run / "final.pt")
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["state_dict"][name]), name
    periodic = ckpt.load_checkpoint(run / "checkpoints" / "step_00000030.pt")
    assert periodic["step"] == 30 and saved["step"] == 60


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_open_clip_keys(shape_shards, tmp_path):
    params = tiny(shape_shards, tmp_path / "run", steps=2, compile=True, compile_backend="eager")
    result = train(params)
    state = ckpt.load_checkpoint(result.checkpoint)["state_dict"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(result.checkpoint))


def test_uint8_transfer_path_trains(shape_shards, tmp_path):
    result = train(tiny(shape_shards, tmp_path / "run", steps=2, uint8_transfer=True))
    assert result.steps == 2 and math.isfinite(result.final_loss)


def test_refuses_to_overwrite_a_run_without_resume(shape_shards, tmp_path):
    train(tiny(shape_shards, tmp_path / "run", steps=1))
    with pytest.raises(TolError, match="--resume latest"):
        train(tiny(shape_shards, tmp_path / "run", steps=1))


def test_unknown_model_and_missing_shards_are_clear_errors(shape_shards, tmp_path):
    with pytest.raises(TolError, match="no shards match"):
        train(tiny(tmp_path / "nothing-*.tar", tmp_path / "a", steps=1))
    with pytest.raises(TolError, match="cannot build model"):
        train(tiny(shape_shards, tmp_path / "b", steps=1, model="no-such-model"))
    with pytest.raises(TolError, match="text type"):
        train(tiny(shape_shards, tmp_path / "c", steps=1, text_types=("latin",)))


def test_cli_trains_and_prints_the_checkpoint(shape_shards, tmp_path):
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--preset", "tiny",
            "--shards", f"{shape_shards}/shard-{{000000..000003}}.tar",
            "--steps", "3",
            "--batch-size", "8",
            "--text-types", "sci,com",
            "--text-sampling", "per-batch",
            "--output", str(out),
            "--no-progress",
            "--threads", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "final.pt").is_file()
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["text_types"] == ["sci", "com"] and start["text_sampling"] == "per-batch"
    assert start["global_batch"] == 8

    bad = CliRunner().invoke(app, ["train", "--shards", str(tmp_path / "none.tar")])
    assert bad.exit_code == 1 and "no shards match" in bad.output
