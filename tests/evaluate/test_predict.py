"""Open-ended prediction over a catalog: taxa sources, cache, and rank labels that agree
with the species picked."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

from tests.evaluate.conftest import draw, jpeg
from treeoflife.errors import TolError
from treeoflife.evaluate.predict import load_taxa, predict_features, predict_images
from treeoflife.evaluate.tasks import TaxonLabel, normalise_ranks
from treeoflife.workspace import RANKS, Workspace

CATALOG_COLUMNS = ["split", "treeoflife_id", *RANKS, "common"]


def write_catalog(path, taxa, extra=()):
    """A release catalog.csv: species holds the epithet, one row per image."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CATALOG_COLUMNS)
        for i, t in enumerate(taxa):
            for j in range(2):
                writer.writerow(["train", f"id-{i}-{j}", *t.ranks, t.common])
        for row in extra:
            writer.writerow(row)
    return path


@pytest.fixture
def images(tmp_path, taxa):
    """One new image per taxon, drawn with an unseen seed."""
    paths = []
    for t in taxa:
        path = tmp_path / f"{t.folder}.jpg"
        path.write_bytes(jpeg(draw(t, random.Random(f"predict-{t.folder}"))))
        paths.append(path)
    return paths


def test_load_taxa_from_catalog_csv_parquet_and_workspace(tmp_path, taxa):
    genus_only = [
        "train",
        "g",
        "Animalia",
        "Arthropoda",
        "Insecta",
        "Diptera",
        "Sciaridae",
        "Bradysia",
        "",
        "",
    ]
    csv_path = write_catalog(tmp_path / "catalog.csv", taxa, [genus_only])
    from_csv = load_taxa(csv_path)
    assert len(from_csv) == len(taxa) + 1
    assert {t.ranks for t in from_csv} >= {t.ranks for t in taxa}
    magpie = next(t for t in from_csv if t.ranks[5] == "Pica")
    assert magpie.common == "black-billed magpie" and magpie.ranks[6] == "hudsonia"

    import duckdb

    parquet = tmp_path / "catalog.parquet"
    duckdb.execute(f"COPY (SELECT * FROM read_csv('{csv_path}', all_varchar=true)) TO '{parquet}'")
    assert [t.ranks for t in load_taxa(parquet)] == [t.ranks for t in from_csv]

    ws = Workspace(tmp_path / "ws").init()
    with ws.connect() as con:
        for i, t in enumerate(taxa):  # taxa_resolved holds the binomial as species
            ranks = [*t.ranks[:6], f"{t.ranks[5]} {t.ranks[6]}"]
            con.execute(
                'INSERT INTO taxa_resolved (record_id, kingdom, phylum, class, "order", family, '
                "genus, species, common, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'accepted')",
                [f"r{i}", *ranks, t.common],
            )
    assert [t.ranks for t in load_taxa(ws.root)] == sorted(t.ranks for t in taxa)
    with pytest.raises(TolError, match="catalog.csv"):
        load_taxa(tmp_path / "nothing.txt")


def test_rank_labels_agree_with_the_species_picked(tmp_path, taxa, images, trained_checkpoint):
    catalog = write_catalog(tmp_path / "catalog.csv", taxa)
    predictions = predict_images(
        trained_checkpoint, "tol-tiny", images, catalog, top_k=3, cache_dir=tmp_path / "cache"
    )
    assert len(predictions) == len(taxa)
    hits = 0
    for prediction, truth in zip(predictions, taxa, strict=True):
        assert len(prediction.top) == 3
        assert [c.rank for c in prediction.lineage] == list(RANKS)
        assert [c.name for c in prediction.lineage] == list(prediction.species.ranks)
        probabilities = [c.probability for c in prediction.lineage]
        assert all(a >= b - 1e-12 for a, b in zip(probabilities, probabilities[1:], strict=False))
        assert probabilities[-1] == pytest.approx(prediction.species.probability)
        assert sum(t.probability for t in prediction.top) <= 1 + 1e-9
        hits += truth.ranks in [t.ranks for t in prediction.top]
        as_json = prediction.to_dict()
        assert as_json["species"]["name"] == prediction.species.name
    assert hits >= len(taxa) - 1  # the true taxon is in the top 3 of 6 for (nearly) all


def test_top_down_lineage_can_overrule_the_single_best_species():
    # Genus A holds the best species (0.4) but genus B's two species sum to 0.6.
    taxa = [
        TaxonLabel("a1", normalise_ranks(["K", "P", "C", "O", "F", "A", "one"])),
        TaxonLabel("b1", normalise_ranks(["K", "P", "C", "O", "F", "B", "one"])),
        TaxonLabel("b2", normalise_ranks(["K", "P", "C", "O", "F", "B", "two"])),
    ]
    logits = np.log(np.array([[0.4, 0.3, 0.3]]))
    # identity features and classifier: logits = scale × features @ classifier
    [prediction] = predict_features(logits, ["img"], taxa, torch.eye(3, dtype=torch.float64), 1.0)
    assert prediction.top[0].ranks[5] == "A"
    assert prediction.lineage[5].name == "B" and prediction.lineage[5].probability == pytest.approx(
        0.6
    )
    assert prediction.species.ranks[5] == "B"  # the lineage ends in a species of genus B
    assert prediction.by_rank["genus"][0].name == "B"


def test_text_embeddings_are_cached_per_checkpoint_and_taxa(
    tmp_path, taxa, images, trained_checkpoint, random_checkpoint
):
    catalog = write_catalog(tmp_path / "catalog.csv", taxa)
    cache = tmp_path / "cache"
    first = predict_images(
        trained_checkpoint, "tol-tiny", images[:1], catalog, cache_dir=cache, templates="single"
    )
    [cached] = list(cache.glob("*.npy"))
    stamp = cached.stat().st_mtime_ns
    again = predict_images(
        trained_checkpoint, "tol-tiny", images[:1], catalog, cache_dir=cache, templates="single"
    )
    assert cached.stat().st_mtime_ns == stamp  # read, not recomputed
    assert again[0].to_dict() == first[0].to_dict()
    predict_images(
        random_checkpoint, "tol-tiny", images[:1], catalog, cache_dir=cache, templates="single"
    )
    predict_images(
        trained_checkpoint,
        "tol-tiny",
        images[:1],
        catalog,
        cache_dir=cache,
        templates="single",
        text_type="sci",
    )
    assert len(list(cache.glob("*.npy"))) == 3  # new checkpoint, new text: new entries


def test_missing_image_is_a_clear_error(tmp_path, taxa, trained_checkpoint):
    catalog = write_catalog(tmp_path / "catalog.csv", taxa)
    with pytest.raises(TolError, match="no such image"):
        predict_images(trained_checkpoint, "tol-tiny", [tmp_path / "absent.jpg"], catalog)


def test_homonym_genera_in_two_kingdoms_are_summed_apart():
    taxa = [
        TaxonLabel(
            "gannet",
            normalise_ranks(
                ["Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"]
            ),
        ),
        TaxonLabel(
            "mulberry",
            normalise_ranks(
                ["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"]
            ),
        ),
    ]
    [prediction] = predict_features(
        np.log(np.array([[0.45, 0.55]])), ["img"], taxa, torch.eye(2, dtype=torch.float64), 1.0
    )
    assert prediction.lineage[0].name == "Plantae"
    assert prediction.lineage[5].name == "Morus"
    assert prediction.lineage[5].probability == pytest.approx(0.55)  # not 1.0: two genera
    assert [c.probability for c in prediction.by_rank["genus"]] == pytest.approx([0.55, 0.45])
