"""The text members: BioCLIP's exact strings, the common-name fallback, and the SQL twins."""

from __future__ import annotations

import duckdb
import pytest

from treeoflife.shards import text

MAGPIE = {
    "kingdom": "Animalia",
    "phylum": "Chordata",
    "class": "Aves",
    "order": "Passeriformes",
    "family": "Corvidae",
    "genus": "Pica",
    "species": "Pica hudsonia",
}


def test_magpie_matches_treeoflife_10m_exactly():
    texts = text.sample_texts(MAGPIE, "black-billed magpie")
    taxon = "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia"
    tagged = (
        "kingdom Animalia phylum Chordata class Aves order Passeriformes family Corvidae "
        "genus Pica species hudsonia"
    )
    assert texts == {
        "sci.txt": "a photo of Pica hudsonia.",
        "com.txt": "a photo of black-billed magpie.",
        "taxon.txt": f"a photo of {taxon}.",
        "taxonTag.txt": f"a photo of {tagged}.",
        "sci_com.txt": "a photo of Pica hudsonia with common name black-billed magpie.",
        "taxon_com.txt": f"a photo of {taxon} with common name black-billed magpie.",
        "taxonTag_com.txt": f"a photo of {tagged} with common name black-billed magpie.",
        "scientific_name.txt": "Pica hudsonia",
        "taxonomic_name.txt": taxon,
        "common_name.txt": "black-billed magpie",
    }
    assert set(texts) == set(text.TEXT_MEMBERS)
    assert text.SAMPLE_MEMBERS[0] == "jpg" and text.SAMPLE_MEMBERS[-1] == "json"


def test_common_falls_back_to_scientific_then_taxonomic():
    assert text.common_name(MAGPIE, None) == "Pica hudsonia"
    assert text.common_name(MAGPIE, "  ") == "Pica hudsonia"
    genus_only = {**MAGPIE, "species": None}
    assert text.common_name(genus_only, None) == "Pica"
    family_only = {**MAGPIE, "genus": None, "species": None}
    assert text.common_name(family_only, None) == "Animalia Chordata Aves Passeriformes Corvidae"
    # No caption reads "a photo of ." where the scientific name is unknown.
    assert text.sample_texts(family_only, None)["sci.txt"] == "a photo of Corvidae."


def test_missing_ranks_are_omitted_and_epithet_is_lower_case():
    ranks = {
        "kingdom": None,
        "phylum": "Arthropoda",
        "class": "Insecta",
        "order": None,
        "family": "Drosophilidae",
        "genus": "Drosophila",
        "species": "Drosophila Melanogaster",
    }
    texts = text.sample_texts(ranks, None)
    assert (
        texts["taxon.txt"] == "a photo of Arthropoda Insecta Drosophilidae Drosophila melanogaster."
    )
    assert texts["taxonTag.txt"] == (
        "a photo of phylum Arthropoda class Insecta family Drosophilidae genus Drosophila "
        "species melanogaster."
    )
    assert text.epithet("Salix x rubens") == "x rubens"
    assert text.epithet("hudsonia") == "hudsonia"
    assert text.epithet(None) == ""


CASES = [
    (MAGPIE, "black-billed magpie"),
    (MAGPIE, None),
    ({**MAGPIE, "species": None}, None),
    ({**MAGPIE, "genus": None, "species": None}, None),
    ({**MAGPIE, "genus": None}, None),  # binomial without a genus rank
    ({**MAGPIE, "species": "Mentha × piperita", "genus": "Mentha"}, ""),
    ({**MAGPIE, "species": "hudsonia"}, None),  # epithet alone
    ({r: None for r in text.RANKS} | {"phylum": "Chordata"}, None),
    ({**MAGPIE, "family": "  Corvidae  ", "species": "Pica  hudsonia"}, "  a   b "),
]


@pytest.mark.parametrize(("ranks", "common"), CASES)
def test_sql_twins_agree_with_python(ranks, common):
    con = duckdb.connect()
    columns = ", ".join(f'?::VARCHAR AS "{rank}"' for rank in text.RANKS)
    con.execute(
        f"CREATE TABLE t AS SELECT {columns}, ?::VARCHAR AS common",
        [ranks[rank] for rank in text.RANKS] + [common],
    )
    got = con.execute(
        f"SELECT {text.common_sql('common')}, {text.scientific_sql()}, {text.taxonomic_sql()}, "
        f"{text.epithet_sql()} FROM t"
    ).fetchall()[0]
    assert got[0] == text.common_name(ranks, common)
    assert (got[1] or "") == text.scientific_name(ranks)
    assert (got[2] or "") == text.taxonomic_name(ranks)
    assert (got[3] or "") == text.epithet(ranks["species"])
