"""Name normalisation in SQL: authorship, HTML, case, hybrids, qualifiers, infraspecific ranks."""

from __future__ import annotations

import duckdb
import pytest

from treeoflife.taxonomy.names import clean_values_sql, install_name_macros, parse_names


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    install_name_macros(connection)
    yield connection
    connection.close()


# (raw, binomial or None, genus, expected extra fields)
CASES = [
    ("Parus caeruleus Linnaeus, 1758", "Parus caeruleus", "Parus",
     {"n_authorship": "Linnaeus, 1758", "n_kind": "species"}),
    ("Camponotus pennsylvanicus (De Geer, 1773)", "Camponotus pennsylvanicus", "Camponotus",
     {"n_authorship": "(De Geer, 1773)"}),
    ("Pieris japonica (Thunb.) D.Don ex G.Don", "Pieris japonica", "Pieris",
     {"n_authorship": "(Thunb.) D.Don ex G.Don"}),
    ("Collotheca orchidacea Meksuwan, Pholpunthin & Segers, 2013", "Collotheca orchidacea",
     "Collotheca", {}),
    ("Stylidium spinulosum r.br.", "Stylidium spinulosum", "Stylidium", {}),
    ("Megaselia Rondani, 1856", None, "Megaselia",
     {"n_kind": "uninomial", "n_authorship": "Rondani, 1856"}),
    ("Bradysia de Geer", None, "Bradysia", {"n_authorship": "de Geer"}),
    ("<i>Morus</i>  <i>alba</i>   L.", "Morus alba", "Morus", {"n_authorship": "L."}),
    ("Pellaea boivinii <br > var. boivinii", "Pellaea boivinii", "Pellaea",
     {"n_infra_rank": "var.", "n_infra_epithet": "boivinii"}),
    ("  Apis\tmellifera  ", "Apis mellifera", "Apis", {}),
    ("APIS MELLIFERA", "Apis mellifera", "Apis", {}),
    ("apis mellifera linnaeus, 1758", "Apis mellifera", "Apis", {}),
    ("Apis_mellifera", "Apis mellifera", "Apis", {}),
    ("Mentha × piperita L.", "Mentha × piperita", "Mentha",
     {"n_hybrid": True, "n_species_key": "mentha piperita"}),
    ("Mentha x piperita", "Mentha × piperita", "Mentha",
     {"n_hybrid": True, "n_species_key": "mentha piperita"}),
    ("Mentha &times; piperita", "Mentha × piperita", "Mentha", {"n_hybrid": True}),
    ("×Cupressocyparis leylandii", "×Cupressocyparis leylandii", "Cupressocyparis",
     {"n_hybrid": True}),
    ("Quercus robur × Quercus petraea", None, "Quercus",
     {"n_hybrid": True, "n_hybrid_formula": True, "n_kind": "uninomial"}),
    ("Ursus sp.", None, "Ursus", {"n_qualifier": "sp.", "n_kind": "uninomial"}),
    ("Carex spp", None, "Carex", {"n_qualifier": "spp."}),
    ("Quercus cf. robur L.", None, "Quercus",
     {"n_qualifier": "cf.", "n_epithet": "robur", "n_kind": "uninomial"}),
    ("Amanita aff. muscaria", None, "Amanita", {"n_qualifier": "aff.", "n_epithet": "muscaria"}),
    ("Megaselia sp. BOLD:ACT2370", None, "Megaselia",
     {"n_qualifier": "sp.", "n_interim": True, "n_authorship": "BOLD:ACT2370"}),
    ("Bradysia malaise2719", None, "Bradysia", {"n_interim": True}),
    ("Danaus plexippus plexippus", "Danaus plexippus", "Danaus",
     {"n_infra_rank": None, "n_infra_epithet": "plexippus"}),
    ("Acer saccharum subsp. nigrum (F.Michx.) Desmarais", "Acer saccharum", "Acer",
     {"n_infra_rank": "subsp.", "n_infra_epithet": "nigrum",
      "n_authorship": "(F.Michx.) Desmarais"}),
    ("Gentiana lutea var aurantiaca", "Gentiana lutea", "Gentiana", {"n_infra_rank": "var."}),
    ("Aedes (Stegomyia) aegypti", "Aedes aegypti", "Aedes", {"n_subgenus": "Stegomyia"}),
    ("Helianthus annuus 'Lemon Queen'", "Helianthus annuus", "Helianthus",
     {"n_cultivar": "Lemon Queen", "n_authorship": None}),
    ("Sciaridae", None, "Sciaridae", {"n_kind": "uninomial", "n_genus_key": "sciaridae"}),
    ("Müllerella pygmaea", "Müllerella pygmaea", "Müllerella",
     {"n_species_key": "mullerella pygmaea"}),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "binomial", "genus", "extra"), CASES, ids=[c[0] for c in CASES])
def test_parse_name(con, raw, binomial, genus, extra):
    (parsed,) = parse_names(con, [raw])
    assert parsed["n_binomial"] == binomial
    assert parsed["n_genus"] == genus
    for key, value in extra.items():
        assert parsed[key] == value, key


@pytest.mark.parametrize("raw", [None, "", "   ", "unknown", "not_classified", "N/A", "None"])
def test_empty_and_placeholder_values_parse_to_nothing(con, raw):
    (parsed,) = parse_names(con, [raw])
    assert parsed["n_clean"] is None and parsed["n_kind"] is None and parsed["n_genus"] is None


def test_many_names_parse_in_one_call_and_keep_their_order(con):
    names = [case[0] for case in CASES]
    parsed = parse_names(con, names)
    assert [p["raw"] for p in parsed] == names


@pytest.mark.parametrize(
    ("canonical", "raw"),
    [
        ("Mentha × piperita", "Mentha x piperita L."),
        ("Parus caeruleus", "PARUS CAERULEUS"),
        ("Müllerella pygmaea", "Mullerella pygmaea"),
        ("Morus alba", "<i>Morus alba</i> L."),
    ],
)
def test_authority_key_equals_the_parsed_source_key(con, canonical, raw):
    (parsed,) = parse_names(con, [raw])
    (key,) = con.execute("SELECT tol_name_key(?)", [canonical]).fetchall()[0]
    assert key == parsed["n_species_key"]


def test_infraspecific_authority_names_keep_three_words(con):
    keys = con.execute(
        "SELECT tol_name_key('Poa annua var. aquatica'), tol_name_key('Danaus plexippus "
        "plexippus'), tol_name_key('Abies')"
    ).fetchall()[0]
    assert keys == ("poa annua aquatica", "danaus plexippus plexippus", "abies")


def test_clean_values_sql_cleans_rank_columns(con):
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ranks AS SELECT * FROM (VALUES "
        "('<i>METAZOA</i>', 'not_classified', ' Chordata  '), ('animalia', 'unknown', NULL)) "
        "v(k, p, c)"
    )
    sql = clean_values_sql("ranks", {"kingdom": "k", "phylum": "p", "klass": "c"},
                           fix_case=("kingdom",))  # fmt: skip
    rows = con.execute(f"SELECT kingdom, phylum, klass FROM ({sql})").fetchall()
    assert rows == [("Metazoa", None, "Chordata"), ("Animalia", None, None)]
