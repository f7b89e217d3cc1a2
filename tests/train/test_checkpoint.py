"""Checkpoints: resume continues an interrupted run exactly; files stay open_clip-loadable."""

from __future__ import annotations

import json
import random

import numpy as np
import open_clip
import pytest
import torch

from treeoflife.errors import TolError
from treeoflife.train import checkpoint as ckpt
from treeoflife.train.loop import train
from treeoflife.train.models import TINY_MODEL, register_model_configs
from treeoflife.train.params import preset_params


class Crash(Exception):
    """Stands in for a killed job."""


def params_for(shards, out, **overrides):
    values = dict(
        shards=[str(shards)],
        output_dir=out,
        steps=12,
        batch_size=16,
        samples_per_epoch=80,  # 5 steps per epoch: the resumed run crosses two boundaries
        save_every=4,
        keep_checkpoints=1,
        log_every=1,
        warmup_steps=3,
        threads=1,
    )
    values.update(overrides)
    return preset_params("tiny", **values)


def losses(run_dir) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


@pytest.fixture(scope="module")
def uninterrupted(shape_shards, tmp_path_factory):
    return train(params_for(shape_shards, tmp_path_factory.mktemp("whole") / "run"))


def crash_at(step: int):
    def on_step(report):
        if report.step == step:
            raise Crash

    return on_step


def test_resume_continues_the_step_count_and_the_loss_curve(uninterrupted, shape_shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(params_for(shape_shards, run), on_step=crash_at(6))
    assert ckpt.resolve_latest(run).name == "step_00000004.pt"
    assert max(losses(run)) == 6  # the crashed run logged steps 5 and 6 past its checkpoint

    resumed = train(params_for(shape_shards, run, resume="latest"))
    assert resumed.resumed_from_step == 4 and resumed.steps == 12
    whole, again = losses(uninterrupted.run_dir), losses(run)
    assert sorted(again) == list(range(1, 13))  # steps 5-6 were trained again, not doubled
    for step in range(1, 13):
        assert again[step] == pytest.approx(whole[step], rel=1e-4, abs=1e-5), step
    final = ckpt.load_checkpoint(resumed.checkpoint)
    reference = ckpt.load_checkpoint(uninterrupted.checkpoint)
    assert final["step"] == 12
    for name, tensor in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, rtol=1e-4, atol=1e-5)
    # keep_checkpoints=1: only the newest periodic file is left
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000008.pt"]


def test_reseeded_resume_still_continues_the_step_count(shape_shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(params_for(shape_shards, run, steps=8), on_step=crash_at(5))
    resumed = train(params_for(shape_shards, run, steps=8, resume="latest", resume_data="reseed"))
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    assert sorted(losses(run)) == list(range(1, 9))


def test_resume_latest_without_checkpoints_starts_fresh_and_bad_paths_fail(shape_shards, tmp_path):
    result = train(params_for(shape_shards, tmp_path / "run", steps=2, resume="latest"))
    assert result.resumed_from_step == 0 and result.steps == 2
    with pytest.raises(TolError, match="no such checkpoint"):
        train(params_for(shape_shards, tmp_path / "x", resume=str(tmp_path / "nope.pt")))
    with pytest.raises(TolError, match="holds a tol-tiny model"):
        train(
            params_for(
                shape_shards, tmp_path / "y", model="ViT-B-32", resume=str(result.checkpoint)
            )
        )


def test_checkpoint_is_weights_only_loadable_with_everything_resume_needs(uninterrupted):
    saved = torch.load(uninterrupted.checkpoint, map_location="cpu", weights_only=True)
    assert {"state_dict", "model", "step", "epoch", "optimizer", "schedule", "rng", "data"} <= set(
        saved
    )
    assert saved["model"] == TINY_MODEL and saved["params"]["steps"] == 12
    assert saved["schedule"] == {"base_lr": 1e-3, "warmup_steps": 3, "total_steps": 12, "min_lr": 0}
    assert saved["data"]["layout"]["batch_size"] == 16
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_MODEL, pretrained=str(uninterrupted.checkpoint)
    )
    assert preprocess is not None and model.logit_scale.item() <= np.log(100)


def test_rng_state_round_trips():
    state = ckpt.capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()
    ckpt.restore_rng(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_wrapped_models_save_bare_keys():
    register_model_configs()
    model = open_clip.create_model(TINY_MODEL)
    compiled = torch.compile(model, backend="eager")
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert ckpt.bare_model(compiled) is model
    assert list(ckpt.bare_model(compiled).state_dict()) == list(model.state_dict())
