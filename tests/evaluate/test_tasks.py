"""Task TOMLs, class-name text types and the three dataset layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.evaluate.conftest import IMAGES_PER_TAXON, release_members
from treeoflife.errors import TolError
from treeoflife.evaluate.checkpoints import load_model, parse_checkpoint
from treeoflife.evaluate.tasks import (
    TaxonLabel,
    bioclip_suite,
    encode_task,
    list_task_names,
    load_task,
    normalise_ranks,
    open_task_data,
    ranks_from_name,
    release_label,
)
from treeoflife.workspace import RANKS

# BioCLIP's model card (version A): zero-shot mean over the 10 tasks per model.
PUBLISHED_MEANS = {
    "CLIP ViT-B/16": 21.4,
    "OpenCLIP ViT-B/16": 20.6,
    "BioCLIP": 41.5,
    "iNat21 Only": 30.9,
}
CLASS_COUNTS = {
    "birds525": 525,
    "plankton": 86,
    "insects": 104,
    "insects2": 102,
    "plantnet": 25,
    "fungi": 25,
    "plantvillage": 38,
    "medicinal-leaf": 25,
    "plantdoc": 27,
    "rare-species": 400,
}


def test_bioclip_suite_has_the_papers_ten_tasks_in_order():
    suite = bioclip_suite()
    assert [t.name for t in suite] == list(CLASS_COUNTS)
    assert {t.name: t.num_classes for t in suite} == CLASS_COUNTS
    assert all(t.url and t.source for t in suite)
    assert "demo" in list_task_names()
    fungi = load_task("fungi")  # the one task whose class list is bundled, with ranks
    assert len(fungi.classes) == 25 and len({c.name for c in fungi.classes}) == 25
    assert all(c.known and c.ranks[0] == "Fungi" for c in fungi.classes)


def test_published_figures_average_to_the_model_cards_means():
    suite = bioclip_suite()
    for model, mean in PUBLISHED_MEANS.items():
        values = [t.published[model]["zero_shot"] for t in suite]
        assert len(values) == 10
        assert sum(values) / 10 == pytest.approx(mean, abs=0.1)  # the card rounds
    rare = load_task("rare-species")
    assert rare.published["BioCLIP"] == {"zero_shot": 39.2, "one_shot": 44.9, "five_shot": 65.7}
    assert rare.text_type == "taxon_com"


def test_text_types_render_bioclips_strings():
    magpie = TaxonLabel(
        "x",
        normalise_ranks(
            ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "Pica hudsonia"]
        ),
        "black-billed magpie",
    )
    taxonomic = "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia"
    assert magpie.ranks[6] == "hudsonia"  # binomial species split to the epithet
    assert magpie.text("asis") == "x"
    assert magpie.text("sci") == "Pica hudsonia"
    assert magpie.text("com") == "black-billed magpie"
    assert magpie.text("taxon") == taxonomic
    assert magpie.text("sci_com") == "Pica hudsonia with common name black-billed magpie"
    assert magpie.text("taxon_com") == f"{taxonomic} with common name black-billed magpie"
    assert magpie.text("taxonTag") == (
        "kingdom Animalia phylum Chordata class Aves order Passeriformes family Corvidae "
        "genus Pica species hudsonia"
    )
    family_only = TaxonLabel(
        "y", normalise_ranks(["Animalia", "Arthropoda", "Insecta", "Diptera", "Sciaridae"])
    )
    assert family_only.text("sci") == "Sciaridae"
    assert family_only.text("taxon_com") == "Animalia Arthropoda Insecta Diptera Sciaridae"
    with pytest.raises(TolError, match="unknown text type"):
        magpie.text("latin")


def test_ranks_from_folder_names():
    assert ranks_from_name(
        "00123_Animalia_Chordata_Aves_Passeriformes_Corvidae_Pica_hudsonia", "_"
    )[5:] == (
        "Pica",
        "hudsonia",
    )
    assert (
        ranks_from_name("animalia-chordata-aves-passeriformes-corvidae-pica-hudsonia", "-_")[0]
        == "Animalia"
    )
    assert ranks_from_name("Tomato___healthy", "_") == ()


def _spec(tmp_path, root, layout, split="test"):
    toml = tmp_path / "synthetic.toml"
    toml.write_text(
        f'[task]\nname = "synthetic"\ntext_type = "taxon_com"\n'
        f'[data]\nlayout = "{layout}"\ndir = "{root.name}"\nsplit = "{split}"\n'
    )
    return load_task(toml)


@pytest.mark.parametrize("layout", ["auto", "imagefolder"])
def test_imagefolder_reads_classes_and_ranks(tmp_path, image_folder, taxa, layout):
    data = open_task_data(_spec(tmp_path, image_folder, layout), image_folder.parent)
    assert data.layout == "imagefolder"
    assert [c.name for c in data.classes] == sorted(t.folder for t in taxa)
    by_name = {c.name: c for c in data.classes}
    assert by_name["Pica_hudsonia"].ranks == taxa[0].ranks  # from classes.csv
    assert by_name["Pica_hudsonia"].common == "black-billed magpie"
    examples = list(data.iter_examples())
    assert len(examples) == len(taxa) * IMAGES_PER_TAXON


def test_clip_benchmark_wds_layout(tmp_path, clip_benchmark_wds, taxa):
    data = open_task_data(_spec(tmp_path, clip_benchmark_wds, "auto"), clip_benchmark_wds.parent)
    assert data.layout == "wds"
    assert [c.name for c in data.classes] == [t.folder for t in taxa]  # classnames.txt order
    assert data.templates == ("a photo of a {}.", "itap of a {}.")
    examples = list(data.iter_examples())
    assert len(examples) == len(taxa) * IMAGES_PER_TAXON
    assert examples[0].label.name == taxa[0].folder


def test_release_shards_take_taxa_from_each_sample(tmp_path, release_root, taxa):
    data = open_task_data(_spec(tmp_path, release_root, "auto", split="val"), release_root.parent)
    assert data.layout == "release" and data.classes is None
    labels = {e.label.ranks for e in data.iter_examples()}
    assert labels == {t.ranks for t in taxa}


def test_release_label_falls_back_to_the_taxontag_caption(taxa):
    members = release_members(taxa[0], b"", "k")
    del members["json"]
    label = release_label(members)
    assert label.ranks == taxa[0].ranks
    assert label.common == taxa[0].common


def test_the_same_images_give_the_same_features_in_every_layout(
    tmp_path, image_folder, clip_benchmark_wds, random_checkpoint
):
    loaded = load_model(parse_checkpoint(random_checkpoint, "tol-tiny"))
    folder = encode_task(
        loaded.model,
        loaded.preprocess,
        open_task_data(_spec(tmp_path, image_folder, "auto"), image_folder.parent),
    )
    shards = encode_task(
        loaded.model,
        loaded.preprocess,
        open_task_data(_spec(tmp_path, clip_benchmark_wds, "auto"), clip_benchmark_wds.parent),
    )
    assert folder.features.shape == shards.features.shape
    assert np.allclose(np.linalg.norm(folder.features, axis=1), 1.0, atol=1e-5)
    # Same generator seeds per class: both layouts hold identical images per class.
    for c in range(len(folder.classes)):
        name = folder.classes[c].name
        s = [i for i, cl in enumerate(shards.classes) if cl.name == name][0]
        assert np.allclose(
            np.sort(folder.features[folder.labels == c], axis=0),
            np.sort(shards.features[shards.labels == s], axis=0),
            atol=1e-5,
        )


def test_missing_data_names_the_folder_and_the_source(tmp_path):
    with pytest.raises(TolError, match="fungi.*meta-album"):
        open_task_data(load_task("fungi"), tmp_path)
    with pytest.raises(TolError, match="no benchmark task 'nope'"):
        load_task("nope")


def test_release_label_reads_flat_or_nested_json(taxa):
    import json

    members = release_members(taxa[1], b"", "k")
    nested = json.loads(members["json"])
    assert nested["taxonomy"]["species"] == "Cyanistes caeruleus"  # as the release writer nests it
    assert release_label(members).ranks == taxa[1].ranks
    flat = {**dict(zip(RANKS, taxa[1].ranks, strict=True)), "common": "blue tit"}
    members["json"] = json.dumps(flat).encode()
    assert release_label(members).ranks == taxa[1].ranks
