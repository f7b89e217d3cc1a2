"""The shard stream: shard lists, text types, replayable order, splitting, HTTP, bad data."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from itertools import islice
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds

from tests.train.conftest import write_shards
from treeoflife.errors import TolError
from treeoflife.loopback import LoopbackServer
from treeoflife.train.data import (
    StreamSpec,
    batches,
    choose_text_types,
    count_samples,
    expand_shards,
    hf_resolve_url,
)
from treeoflife.train.models import TINY_MODEL, register_model_configs
from treeoflife.train.params import MIXED_TYPES, TrainParams

TOKENIZER = open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def transform():
    register_model_configs()
    _, train_transform, _ = open_clip.create_model_and_transforms(TINY_MODEL)
    return train_transform


@pytest.fixture(scope="module")
def member_texts(shape_shards) -> dict[str, dict[str, str]]:
    """key -> {field: text} read back from the shards with plain webdataset."""
    dataset = wds.WebDataset(str(shape_shards / "shard-{000000..000003}.tar"), shardshuffle=False)
    return {
        s["__key__"]: {k: v.decode() for k, v in s.items() if k.endswith(".txt")} for s in dataset
    }


def spec_for(urls, **overrides) -> StreamSpec:
    values = dict(
        urls=tuple(str(u) for u in urls),
        text_types=MIXED_TYPES,
        text_sampling="per-sample",
        batch_size=8,
        steps_per_epoch=6,
        resample=True,
        shuffle_buffer=50,
        shuffle_initial=10,
        seed=7,
    )
    values.update(overrides)
    return StreamSpec(**values)


def test_shard_patterns_expand_braces_globs_folders_and_lists(shape_shards):
    names = [f"shard-{i:06d}.tar" for i in range(4)]
    as_paths = [str(shape_shards / n) for n in names]
    assert expand_shards([str(shape_shards / "shard-{000000..000003}.tar")]) == as_paths
    assert expand_shards([str(shape_shards / "shard-*.tar")]) == as_paths
    assert expand_shards([str(shape_shards)]) == as_paths
    both = f"{as_paths[0]}::{shape_shards}/shard-00000{{2,3}}.tar"
    assert expand_shards([both, as_paths[1]]) == [as_paths[0], *as_paths[2:], as_paths[1]]
    urls = expand_shards(["https://example.org/train/shard-{000000..000001}.tar"])
    assert urls == [f"https://example.org/train/shard-00000{i}.tar" for i in (0, 1)]
    with pytest.raises(TolError, match="no shards match"):
        expand_shards([str(shape_shards / "missing-{0..3}.tar")])


def test_hf_paths_become_hub_resolve_urls(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    url = hf_resolve_url("hf://datasets/imageomics/TreeOfLife-10M@v1/train/shard-000001.tar")
    assert url == (
        "https://huggingface.co/datasets/imageomics/TreeOfLife-10M/resolve/v1/"
        "train/shard-000001.tar"
    )
    listed = expand_shards(["hf://datasets/org/name/t/shard-{000000..000002}.tar"])
    assert len(listed) == 3 and listed[2].endswith("/resolve/main/t/shard-000002.tar")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TolError, match="HF_HUB_OFFLINE"):
        hf_resolve_url("hf://datasets/org/name/t/shard-000000.tar")


def test_sizes_json_gives_the_epoch_length(shape_shards, tmp_path):
    urls = expand_shards([str(shape_shards)])
    assert count_samples(urls) == 4 * 48
    assert count_samples(urls[:2]) == 96
    lone = tmp_path / "lone.tar"
    lone.write_bytes((shape_shards / "shard-000000.tar").read_bytes())
    assert count_samples([str(lone)]) is None


def test_text_type_choice_covers_every_type_in_both_modes():
    n = len(MIXED_TYPES)
    per_sample = Counter()
    per_batch = Counter()
    for step in range(1, 41):
        rank0 = choose_text_types(3, step, 0, 16, n, "per-batch")
        rank1 = choose_text_types(3, step, 1, 16, n, "per-batch")
        assert rank0 == rank1 and len(set(rank0)) == 1  # one type for the global batch
        per_batch[rank0[0]] += 1
        drawn = choose_text_types(3, step, 0, 16, n, "per-sample")
        per_sample.update(drawn)
        assert drawn == choose_text_types(3, step, 0, 16, n, "per-sample")  # reproducible
    assert set(per_batch) == set(per_sample) == set(range(n))
    assert min(per_sample.values()) > 0.1 * 40 * 16  # roughly uniform
    differs = choose_text_types(3, 5, 0, 16, n, "per-sample") != choose_text_types(
        3, 5, 1, 16, n, "per-sample"
    )
    assert differs  # per-sample draws are independent across ranks


@pytest.mark.parametrize("sampling", ["per-sample", "per-batch"])
def test_batches_carry_the_chosen_caption_of_each_sample(
    shape_shards, transform, member_texts, sampling
):
    spec = spec_for(expand_shards([str(shape_shards)]), text_sampling=sampling)
    seen = Counter()
    for batch in batches(spec, transform, TOKENIZER):
        assert batch.images.shape == (8, 3, 64, 64) and batch.texts.shape == (8, 77)
        for key, type_id, tokens in zip(batch.keys, batch.text_type_ids, batch.texts, strict=True):
            caption = member_texts[key][f"{MIXED_TYPES[type_id].lower()}.txt"]
            assert torch.equal(tokens, TOKENIZER([caption])[0])
        seen.update(batch.text_type_ids.tolist())
        if sampling == "per-batch":
            assert len(set(batch.text_type_ids.tolist())) == 1
    assert sum(seen.values()) == 6 * 8
    if sampling == "per-sample":
        assert set(seen) == set(range(len(MIXED_TYPES)))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_mid_run_replays_the_original_batches(shape_shards, transform, workers):
    spec = spec_for(expand_shards([str(shape_shards)]))  # 6 steps per epoch
    whole = list(batches(spec, transform, TOKENIZER, stop_step=15, workers=workers))
    assert [b.step for b in whole] == list(range(1, 16))  # epochs 0, 1 and half of 2
    resumed = list(batches(spec, transform, TOKENIZER, start_step=9, stop_step=15, workers=workers))
    assert [b.step for b in resumed] == list(range(10, 16))  # from mid epoch 1 into 2
    for original, replayed in zip(whole[9:], resumed, strict=True):
        assert original.keys == replayed.keys
        assert torch.equal(original.images, replayed.images)  # same crops, too
        assert torch.equal(original.texts, replayed.texts)
    assert whole[6].keys != whole[0].keys  # each epoch has its own order


def test_without_resampling_each_shard_goes_to_exactly_one_rank(shape_shards, transform):
    urls = expand_shards([str(shape_shards)])
    keys = []
    for rank in (0, 1):
        spec = spec_for(
            urls, resample=False, shuffle_buffer=0, batch_size=16, rank=rank, world_size=2
        )
        keys.append([k for b in batches(spec, transform, TOKENIZER) for k in b.keys])
    assert len(keys[0]) == len(keys[1]) == 96  # 2 shards of 48 each
    assert not set(keys[0]) & set(keys[1])
    shard_keys = {s["__key__"] for s in wds.WebDataset([str(u) for u in urls], shardshuffle=False)}
    assert set(keys[0]) | set(keys[1]) == shard_keys


def test_shards_stream_over_http_with_their_sizes(shape_shards, transform):
    with LoopbackServer(shape_shards.parent) as server:
        urls = expand_shards([f"{server.url}/train/shard-{{000000..000003}}.tar"])
        assert count_samples(urls) == 192
        spec = spec_for(urls, steps_per_epoch=2)
        got = list(batches(spec, transform, TOKENIZER))
    assert len(got) == 2 and all(len(b.keys) == 8 for b in got)


def test_broken_shards_and_incomplete_samples_are_skipped(shape_shards, transform, tmp_path):
    folder = tmp_path / "mixed"
    write_shards(folder, shards=2, per_shard=16, seed=3)
    truncated = folder / "shard-000002.tar"
    truncated.write_bytes((shape_shards / "shard-000000.tar").read_bytes()[:30_000])
    write_shards(tmp_path / "nocom", shards=1, per_shard=16, seed=4, drop_member="com.txt")
    (tmp_path / "nocom" / "shard-000000.tar").rename(folder / "shard-000003.tar")
    (folder / "shard-000004.tar").write_bytes(b"not a tar file at all")
    spec = spec_for(expand_shards([str(folder)]), text_types=("com",), steps_per_epoch=8)
    got = list(batches(spec, transform, TOKENIZER))
    assert len(got) == 8

    only_bad = spec_for([str(folder / "shard-000003.tar")], text_types=("com",))
    with pytest.raises(TolError, match="no usable sample"):
        next(iter(batches(only_bad, transform, TOKENIZER)))


def test_params_expand_mixed_and_check_options(tmp_path):
    params = TrainParams(shards=["x"], text_types=("mixed", "taxonTag", "sci"))
    assert params.caption_types == (*MIXED_TYPES, "taxonTag")
    assert TrainParams(shards=["x"], global_batch_size=64).per_process_batch(4) == 16
    with pytest.raises(TolError, match="does not split"):
        TrainParams(shards=["x"], global_batch_size=30).per_process_batch(4)
    with pytest.raises(TolError, match="text-sampling"):
        TrainParams(shards=["x"], text_sampling="sometimes").validate()
    saved = json.loads(json.dumps(params.to_dict()))
    assert TrainParams.from_dict(saved) == params
    assert isinstance(TrainParams.from_dict(saved).output_dir, Path)


def test_bioclip_preset_is_the_papers_recipe():
    from treeoflife.train.params import preset_params

    params = preset_params("bioclip-b16", shards=["x"])
    assert (params.model, params.pretrained, params.lr, params.warmup_steps) == (
        "ViT-B-16",
        "openai",
        1e-4,
        1000,
    )
    assert (params.weight_decay, params.epochs, params.global_batch_size) == (0.2, 100, 32768)
    assert params.local_loss and params.gather_with_grad and params.grad_checkpointing
    assert params.per_process_batch(8) == 4096
    assert params.caption_types == MIXED_TYPES
    own_batch = preset_params("bioclip-b16", shards=["x"], batch_size=256, pretrained="none")
    assert own_batch.global_batch_size is None and own_batch.pretrained is None
    assert list(islice(iter(own_batch.text_types), 1)) == ["mixed"]


def test_uint8_batches_normalised_on_the_device_equal_float_batches(shape_shards, transform):
    from treeoflife.train.data import split_transform

    spec = spec_for(expand_shards([str(shape_shards)]), steps_per_epoch=2)
    floats = list(batches(spec, transform, TOKENIZER))
    raw = list(batches(replace(spec, uint8_images=True), transform, TOKENIZER))
    _, normalize = split_transform(transform)
    for a, b in zip(floats, raw, strict=True):
        assert b.images.dtype == torch.uint8 and a.keys == b.keys
        torch.testing.assert_close(normalize(b.images), a.images, rtol=0, atol=1e-6)
