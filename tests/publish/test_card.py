"""The dataset card: front matter the Hub's own card classes accept, a body from the catalog."""

from __future__ import annotations

import glob
import json

from huggingface_hub import DatasetCard, DatasetCardData

from treeoflife.publish.card import build_card, size_category


def test_card_front_matter_parses_with_hub_classes(released_workspace):
    release = released_workspace.root / "release"
    card = DatasetCard.load(release / "README.md")  # what the Hub parses
    assert isinstance(card.data, DatasetCardData)
    data = card.data.to_dict()
    assert data["license"] == "other"
    assert data["license_name"] == "per-image" and data["license_link"] == "licenses.csv"
    assert data["task_categories"] == ["image-classification", "zero-shot-image-classification"]
    assert data["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c["data_files"] for c in data["configs"]}
    assert configs["default"] == [
        {"split": "train", "path": "train/*.tar"},
        {"split": "validation", "path": "val/*.tar"},
    ]
    assert configs["train_small"] == [{"split": "train", "path": "train_small/*.tar"}]
    manifest = json.loads((release / "manifest.json").read_text())
    for files in configs.values():
        for entry in files:
            matched = sorted(glob.glob(str(release / entry["path"])))
            folder = entry["path"].split("/")[0]
            assert len(matched) == manifest["splits"][folder]["shards"]
    # Round trip: what we wrote is what the Hub classes write back.
    assert DatasetCard(str(card)).data.to_dict() == data
    assert str(build_card(release)) == (release / "README.md").read_text()


def test_card_body_is_generated_from_the_catalog(released_workspace):
    release = released_workspace.root / "release"
    body = DatasetCard.load(release / "README.md").text
    manifest = json.loads((release / "manifest.json").read_text())
    for heading in (
        "## Splits",
        "## Sources",
        "## Taxa per rank",
        "## Licences",
        "## Text types",
        "## Loading",
        "## Citation",
    ):
        assert heading in body
    assert f"| train | {manifest['splits']['train']['samples']} |" in body
    for source in ("inat21", "eol", "bioscan-1m", "bioscan-5m", "inat-open-data"):
        assert f"| {source} |" in body
    assert "| `taxonTag_com.txt` | a photo of kingdom " in body
    assert "stevens2024bioclip" in body and "BIOSCAN-1M" in body
    assert 'load_dataset("webdataset"' in body
    assert "| cc-by-nc-nd-4.0 | 0 |" in body  # catalog-only licence: none in the shards


def test_size_categories_follow_hub_bins():
    assert size_category(999) == "n<1K"
    assert size_category(1_000) == "1K<n<10K"
    assert size_category(10_065_576) == "10M<n<100M"
