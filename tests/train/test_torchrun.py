"""A real 2-process torchrun job on CPU (gloo): DDP, gathered features, one checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import open_clip
import pytest

from treeoflife.train import checkpoint as ckpt
from treeoflife.train.models import TINY_MODEL, register_model_configs


@pytest.mark.slow
def test_two_process_torchrun_trains_and_writes_one_checkpoint(shape_shards, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "treeoflife", "train",
        "--preset", "tiny",
        "--shards", f"{shape_shards}/shard-{{000000..000003}}.tar",
        "--steps", "4",
        "--global-batch-size", "16",
        "--local-loss", "--gather-with-grad",
        "--save-every", "0",
        "--log-every", "2",
        "--output", str(out),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 2 process(es)" in done.stderr  # rank 0 prints the summary once
    assert done.stderr.count("trained tol-tiny") == 1

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    start, *steps, end = lines
    assert (start["world_size"], start["global_batch"]) == (2, 16)
    assert [x["step"] for x in steps] == [2, 4] and end["step"] == 4
    assert all(x["loss"] > 0 for x in steps)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["final.pt", "latest.pt"]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

    saved = ckpt.load_checkpoint(out / "final.pt")
    assert saved["step"] == 4 and saved["data"]["layout"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in saved["state_dict"])
    register_model_configs()
    open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(out / "final.pt"))
