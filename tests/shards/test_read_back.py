"""Read the release back with the three readers users have: webdataset, wids and
`datasets.load_dataset("webdataset")` (offline), and get every sample with its captions."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from treeoflife.shards import text


def _expected(release: Path, split: str) -> dict[str, dict[str, str]]:
    """{treeoflife_id: {member: text}} from catalog.parquet, via the text rules."""
    table = pq.read_table(release / "catalog.parquet").to_pylist()
    out = {}
    for row in table:
        if row["split"] == split and row["hosted"]:
            ranks = {**row, "species": row["species_name"]}
            out[row["treeoflife_id"]] = text.sample_texts(ranks, row["common"])
    return out


# webdataset lower-cases field names (`taxonTag.txt` is read as `taxontag.txt`), as
# BioCLIP's own check_wds.py did; wids and `datasets` keep the member's spelling.
WDS_FIELDS = {name: name.lower() for name in text.SAMPLE_MEMBERS}


def _shards(release: Path, split: str) -> list[str]:
    return sorted(str(p) for p in (release / split).glob("shard-*.tar"))


@pytest.mark.parametrize("split", ["train", "val", "train_small"])
def test_webdataset_reads_every_sample_with_its_captions(released_workspace, split):
    release = released_workspace.root / "release"
    expected = _expected(release, split)
    dataset = wds.WebDataset(_shards(release, split), shardshuffle=False).decode("pil")
    seen = {}
    for sample in dataset:
        key = sample["__key__"]
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == set(WDS_FIELDS.values())
        assert sample["jpg"].size == (24, 16)
        assert sample["json"]["treeoflife_id"] == key
        seen[key] = {name: sample[WDS_FIELDS[name]] for name in text.TEXT_MEMBERS}
    assert seen == expected


def test_open_clip_style_pipeline_reads_pairs(released_workspace):
    """open_clip reads `<key>.<text>` pairs with tarfile_to_samples + to_tuple."""
    release = released_workspace.root / "release"
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(_shards(release, "train")),
        wds.tarfile_to_samples(),
        wds.decode("pilrgb"),
        wds.to_tuple("jpg", "taxon_com.txt"),
    )
    pairs = list(pipeline)
    sizes = json.loads((release / "train" / "sizes.json").read_text())
    assert len(pairs) == sum(sizes.values())
    assert all(caption.startswith("a photo of ") for _, caption in pairs)


def test_wids_reads_by_index_from_the_split_spec(released_workspace, tmp_path):
    import functools

    import wids
    from wids.wids_decode import default_decoder

    release = released_workspace.root / "release"
    expected = _expected(release, "val")
    dataset = wids.ShardListDataset(
        str(release / "val" / "wids.json"),
        cache_dir=str(tmp_path / "wids-cache"),
        transformations=[functools.partial(default_decoder, format="PIL")],
    )
    assert len(dataset) == len(expected)
    seen = {}
    for index in range(len(dataset)):
        sample = dataset[index]
        key = sample["__key__"]
        assert sample[".jpg"].size == (24, 16)
        seen[key] = {name: sample[f".{name}"] for name in text.TEXT_MEMBERS}
    assert seen == expected


def test_datasets_load_dataset_webdataset_offline(released_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    release = released_workspace.root / "release"
    files = {"train": _shards(release, "train"), "validation": _shards(release, "val")}
    loaded = datasets.load_dataset(
        "webdataset", data_files=files, cache_dir=str(tmp_path / "hf-cache")
    )
    for split, folder in (("train", "train"), ("validation", "val")):
        expected = _expected(release, folder)
        rows = loaded[split]
        assert len(rows) == len(expected)
        columns = set(rows.column_names)
        assert set(text.SAMPLE_MEMBERS) <= columns
        got = {row["__key__"]: {name: row[name] for name in text.TEXT_MEMBERS} for row in rows}
        assert got == expected
        assert rows[0]["jpg"].size == (24, 16)
