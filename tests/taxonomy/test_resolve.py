"""`tol taxa resolve` on the bundled sample (ground truth: sample/expected.json) and on a
hand-built mini catalog holding the cases the sample lacks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.taxonomy.resolve import ResolveOptions, explain, resolve_taxa
from treeoflife.workspace import RANKS


def rows(con, sql: str, params=()) -> list[dict]:
    cursor = con.execute(sql, list(params))
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture(scope="module")
def resolved_sample(tmp_path_factory, sample_with_authorities):
    """The sample resolved once with the sample pipeline's options; tests only read it."""
    import shutil

    from treeoflife.workspace import Workspace

    root = tmp_path_factory.mktemp("resolved") / "ws"
    shutil.copytree(sample_with_authorities.root, root)
    workspace = Workspace(root)
    with workspace.connect() as con:
        stats = resolve_taxa(con, ResolveOptions())
    return workspace, stats


def by_record(con) -> dict[str, dict]:
    return {r["record_id"]: r for r in rows(con, "SELECT * FROM taxa_resolved")}


# the sample ---------------------------------------------------------------------------------
def test_every_sample_record_gets_its_true_seven_ranks(resolved_sample, sample_expected):
    workspace, stats = resolved_sample
    with workspace.connect(read_only=True) as con:
        resolved = by_record(con)
        n_records = con.execute("SELECT count(*) FROM record_images").fetchall()[0][0]
    assert len(resolved) == n_records == stats.records
    for source, records in sample_expected["records"].items():
        for record in records:
            got = resolved[f"{source}:{record['source_id']}"]
            assert [got[r] for r in RANKS] == record["ranks"], (source, record["source_id"])


def test_homonym_records_land_in_their_own_kingdom(resolved_sample, sample_expected):
    workspace, _ = resolved_sample
    with workspace.connect(read_only=True) as con:
        resolved = by_record(con)
    for homonym in sample_expected["homonyms"]:
        for taxon in homonym["taxa"]:
            for record in taxon["records"]:
                got = resolved[f"{record['source']}:{record['source_id']}"]
                assert (got["kingdom"], got["family"], got["species"]) == (
                    taxon["kingdom"], taxon["family"], taxon["species"],
                )  # fmt: skip
                assert got["status"] == "resolved"


def test_synonym_records_take_the_accepted_name_and_log_a_conflict(
    resolved_sample, sample_expected
):
    workspace, _ = resolved_sample
    with workspace.connect(read_only=True) as con:
        resolved = by_record(con)
        conflicts = rows(con, "SELECT * FROM taxa_conflicts")
    for synonym in sample_expected["synonyms"]:
        for record in synonym["records"]:
            got = resolved[f"{record['source']}:{record['source_id']}"]
            assert (got["species"], got["method"], got["status"]) == (
                synonym["accepted"], "synonym", "resolved",
            )  # fmt: skip
            assert got["authority"] == "gbif" and got["authority_taxon_id"]
    assert {(c["rank"], c["source_value"], c["authority_value"], c["kind"]) for c in conflicts} >= {
        ("species", "Parus caeruleus", "Cyanistes caeruleus", "synonym")
    }


def test_sample_kingdoms_are_harmonised_and_common_never_empty(resolved_sample, sample_expected):
    workspace, stats = resolved_sample
    with workspace.connect(read_only=True) as con:
        kingdoms = {
            r[0] for r in con.execute("SELECT DISTINCT kingdom FROM taxa_resolved").fetchall()
        }
        empty = con.execute(
            "SELECT count(*) FROM taxa_resolved WHERE common IS NULL OR common = ''"
        ).fetchall()[0][0]
        common = {
            r["record_id"]: r["common"]
            for r in rows(con, "SELECT record_id, common FROM taxa_resolved")
        }
    assert kingdoms == {"Animalia", "Plantae", "Fungi", None}
    assert empty == 0
    names = {s["name"]: s["common"] for s in sample_expected["species"]}
    # EOL writes Metazoa / Archaeplastida; iNat21 brings its own common names.
    assert sample_expected["sources"]["eol"]["kingdom_names"]["Metazoa"] == "Animalia"
    for source, records in sample_expected["records"].items():
        for record in records:
            species = record["ranks"][6]
            if species and names.get(species):
                assert common[f"{source}:{record['source_id']}"] == names[species]
            elif species:  # no common name anywhere: the scientific name
                assert common[f"{source}:{record['source_id']}"] == species
    assert stats.by_status["unresolved"] == 2  # the two records whose taxon no file names


def test_sample_special_names(resolved_sample):
    workspace, _ = resolved_sample
    with workspace.connect(read_only=True) as con:
        taxa = {
            r["query_name"]: r
            for r in rows(con, "SELECT * FROM taxa_source_resolved WHERE query_name IS NOT NULL")
        }
    hybrid = taxa["Mentha × piperita"]
    assert hybrid["species"] == "Mentha × piperita" and "hybrid" in hybrid["flags"]
    subspecies = taxa["Danaus plexippus plexippus"]
    assert subspecies["species"] == "Danaus plexippus" and "infraspecific" in subspecies["flags"]
    details = json.loads(subspecies["details"])
    assert details["parsed"]["infraspecific_epithet"] == "plexippus"
    cultivar = taxa["Helianthus annuus 'Lemon Queen'"]
    assert json.loads(cultivar["details"])["parsed"]["cultivar"] == "Lemon Queen"
    interim = taxa["Bradysia malaise2719"]
    assert (interim["genus"], interim["species"], interim["status"]) == (
        "Bradysia",
        None,
        "partial",
    )
    assert "interim-name" in interim["flags"]


# the mini catalog ---------------------------------------------------------------------------
@pytest.fixture
def mini_resolved(mini_catalog):
    with mini_catalog.connect() as con:
        stats = resolve_taxa(con, ResolveOptions(prefer={"s2": ("col",)}))
        taxa = {
            (r["source"], r["taxon_key"]): r
            for r in rows(con, "SELECT * FROM taxa_source_resolved")
        }
        records = by_record(con)
        conflicts = rows(con, "SELECT * FROM taxa_conflicts")
    return stats, taxa, records, conflicts


def test_genus_homonyms_are_told_apart_by_the_source_ranks(mini_resolved):
    _, taxa, _, _ = mini_resolved
    gannet = taxa[("s1", "gannet-genus")]
    assert (gannet["kingdom"], gannet["family"], gannet["method"]) == (
        "Animalia", "Sulidae", "homonym-by-family",
    )  # fmt: skip
    mulberry = taxa[("s1", "mulberry-genus")]  # the source says Viridiplantae
    assert (mulberry["kingdom"], mulberry["method"]) == ("Plantae", "homonym-by-kingdom")
    assert "homonym" in gannet["flags"] and gannet["status"] == "resolved"


def test_a_homonym_with_nothing_to_tell_it_apart_is_ambiguous_with_its_candidates(mini_resolved):
    _, taxa, _, _ = mini_resolved
    bare = taxa[("s1", "bare-morus")]
    assert (bare["status"], bare["method"], bare["authority"]) == ("ambiguous", "homonym", None)
    assert bare["kingdom"] is None and bare["genus"] == "Morus"
    candidates = json.loads(bare["details"])["candidates"]
    assert sorted((c["kingdom"], c["family"]) for c in candidates) == [
        ("Animalia", "Sulidae"), ("Plantae", "Moraceae"),
    ]  # fmt: skip


def test_a_synonym_chain_is_followed_to_the_accepted_name(mini_resolved):
    _, taxa, _, conflicts = mini_resolved
    chain = taxa[("s1", "chain")]
    assert (chain["species"], chain["method"], chain["authority_taxon_id"]) == (
        "Cyanistes caeruleus", "synonym", "42",
    )  # fmt: skip
    assert chain["family"] == "Paridae"
    details = json.loads(chain["details"])
    assert details["parsed"]["authorship"] == "Linnaeus, 1758"
    assert details["match"]["taxon_id"] == "40" and details["match"]["status"] == "synonym"
    assert any(c["taxon_key"] == "chain" and c["kind"] == "synonym" for c in conflicts)


def test_a_misspelling_is_matched_fuzzily_and_logged(mini_resolved):
    _, taxa, _, conflicts = mini_resolved
    misspelt = taxa[("s1", "misspelt")]
    assert (misspelt["species"], misspelt["method"], misspelt["status"]) == (
        "Ursus arctos", "fuzzy", "resolved",
    )  # fmt: skip
    assert json.loads(misspelt["details"])["match"]["edit_distance"] == 1
    logged = {
        (c["source_value"], c["authority_value"], c["kind"])
        for c in conflicts
        if c["taxon_key"] == "misspelt"
    }
    assert logged == {("Ursus arctus", "Ursus arctos", "spelling")}


def test_hybrid_html_and_authorship_are_normalised_before_matching(mini_resolved):
    _, taxa, _, _ = mini_resolved
    hybrid = taxa[("s1", "hybrid")]
    assert (hybrid["species"], hybrid["method"]) == ("Mentha × piperita", "exact")
    html = taxa[("s1", "html")]
    assert (html["species"], html["kingdom"], html["method"]) == ("Morus alba", "Plantae", "exact")


def test_an_unknown_name_is_kept_flagged_and_harmonised(mini_resolved):
    _, taxa, records, _ = mini_resolved
    unknown = taxa[("s1", "unknown")]
    assert (unknown["status"], unknown["method"], unknown["authority"]) == (
        "unresolved", "source-only", None,
    )  # fmt: skip
    assert [unknown[r] for r in RANKS] == [
        "Animalia", "Chordata", None, None, "Fooidae", "Imaginaria", "Imaginaria fantastica",
    ]  # fmt: skip
    assert "not-in-authority" in unknown["flags"] and "lineage-hole" in unknown["flags"]
    assert records["s1:unknown-0"]["status"] == "unresolved"
    bare = taxa[("s1", "bare-unknown")]
    assert bare["common"] == "Zzyzx" and bare["status"] == "unresolved"


def test_lineage_holes_stay_and_are_flagged(mini_resolved):
    _, taxa, _, _ = mini_resolved
    hole = taxa[("s1", "hole")]
    assert hole["class"] is None and hole["order"] == "Cypriniformes"
    assert hole["status"] == "resolved" and "lineage-hole" in hole["flags"]


def test_qualifiers_resolve_to_the_genus(mini_resolved):
    _, taxa, _, _ = mini_resolved
    cf, sp = taxa[("s1", "cf")], taxa[("s1", "sp")]
    assert (cf["genus"], cf["species"], cf["status"]) == ("Ursus", None, "partial")
    assert (sp["genus"], sp["species"], sp["status"]) == ("Ursus", None, "resolved")
    assert json.loads(cf["details"])["parsed"]["qualifier"] == "cf."


def test_an_unknown_species_of_a_known_genus_is_partial(mini_resolved):
    _, taxa, _, _ = mini_resolved
    new = taxa[("s1", "new-species")]
    assert (new["family"], new["species"], new["method"], new["status"]) == (
        "Ursidae", "Ursus newspecies", "higher-rank", "partial",
    )  # fmt: skip


def test_a_kingdom_contradiction_is_never_guessed(mini_resolved):
    _, taxa, _, _ = mini_resolved
    wrong = taxa[("s1", "wrong-kingdom")]
    assert (wrong["status"], wrong["method"], wrong["kingdom"], wrong["authority"]) == (
        "ambiguous", "rank-conflict", "Plantae", None,
    )  # fmt: skip


def test_authority_preference_and_fallback(mini_resolved):
    _, taxa, _, _ = mini_resolved
    assert taxa[("s1", "col-only")]["authority"] == "col"  # gbif lacks it
    assert taxa[("s1", "col-only")]["kingdom"] == "Animalia"  # COL row says Metazoa
    assert taxa[("s1", "own-common")]["authority"] == "gbif"  # default order
    assert taxa[("s2", "bear")]["authority"] == "col"  # prefer = {s2 = ["col"]}


def test_common_names_source_first_then_a_deterministic_vernacular(mini_resolved):
    _, taxa, _, _ = mini_resolved
    assert taxa[("s1", "own-common")]["common"] == "Bear"
    assert taxa[("s1", "misspelt")]["common"] == "Brown Bear"  # tie: alphabetical, English
    assert taxa[("s1", "html")]["common"] == "Silkworm Mulberry"  # preferred beats alphabet
    assert taxa[("s2", "bear")]["common"] == "Brown Bear (COL)"
    assert taxa[("s1", "hole")]["common"] == "Carassius auratus"  # no vernacular: scientific
    assert taxa[("s1", "sp")]["common"].endswith("Ursidae Ursus")  # then the ranks
    assert taxa[("s1", "nameless")]["common"] == "unknown"


def test_every_record_has_one_row_even_without_a_source_taxon(mini_resolved):
    stats, _, records, _ = mini_resolved
    assert stats.records == len(records) == 37
    dangling = records["s1:dangling-0"]
    assert (dangling["status"], dangling["method"], dangling["flags"]) == (
        "unresolved", "none", ["no-source-taxon"],
    )  # fmt: skip
    assert set(stats.by_status) <= {"resolved", "partial", "ambiguous", "unresolved"}


def test_rerun_is_idempotent(mini_catalog):
    options = ResolveOptions(prefer={"s2": ("col",)})
    with mini_catalog.connect() as con:
        first = resolve_taxa(con, options)
        table = sorted(con.execute("SELECT * FROM taxa_resolved").fetchall(), key=str)
        conflicts = sorted(con.execute("SELECT * FROM taxa_conflicts").fetchall(), key=str)
        again = resolve_taxa(con, options)
        assert sorted(con.execute("SELECT * FROM taxa_resolved").fetchall(), key=str) == table
        assert sorted(con.execute("SELECT * FROM taxa_conflicts").fetchall(), key=str) == conflicts
    assert (again.by_status, again.by_method, again.records) == (
        first.by_status, first.by_method, first.records,
    )  # fmt: skip
    assert again.steps and first.steps


def test_kingdom_table_is_data(mini_catalog):
    with mini_catalog.connect() as con:
        resolve_taxa(con)
        mapping = dict(con.execute("SELECT name, kingdom FROM kingdom_names").fetchall())
    assert mapping["metazoa"] == "Animalia"
    assert mapping["viridiplantae"] == mapping["archaeplastida"] == mapping["chloroplastida"]
    assert mapping["viridiplantae"] == "Plantae"


def test_options_from_the_pipeline_stage_are_checked():
    options = ResolveOptions.from_stage(
        {"authorities": ["x.toml"], "prefer": {"inat21": ["INAT", "gbif"]}, "fuzzy_max_distance": 1}
    )
    assert options.prefer == {"inat21": ("inat", "gbif")} and options.fuzzy_max_distance == 1
    assert options.order_for("eol", ["col", "gbif", "itis"]) == ["gbif", "col", "itis"]
    assert options.order_for("inat21", ["col", "gbif"]) == ["gbif"]
    with pytest.raises(TolError, match="fuzzy_max_distance"):
        ResolveOptions.from_stage({"fuzzy_max_distance": "two"})
    with pytest.raises(TolError, match="prefer"):
        ResolveOptions.from_stage({"prefer": ["gbif"]})


def test_explain_names_the_record(mini_catalog):
    with mini_catalog.connect() as con:
        resolve_taxa(con)
        found = explain(con, "s1:chain-0")
        assert found["details"]["match"]["name"] == "Parus caeruleus"
        with pytest.raises(TolError, match="no record"):
            explain(con, "s1:nope")


@pytest.mark.slow
def test_cli_resolve_and_explain_on_the_sample(sample_copy):
    runner = CliRunner()
    ws = str(sample_copy.root)
    result = runner.invoke(app, ["taxa", "resolve", "-w", ws, "--pipeline", "sample", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["records"] == 346 and stats["by_status"]["unresolved"] == 2
    assert set(stats["steps"]) >= {"normalise", "exact + synonym", "homonyms", "fan out"}
    shown = runner.invoke(app, ["taxa", "explain", "inat-open-data:82137513", "-w", ws])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["species"] == "Cyanistes caeruleus"
    bad = runner.invoke(app, ["taxa", "resolve", "-w", ws, "--fuzzy", "9"])
    assert bad.exit_code == 1 and "fuzzy_max_distance" in bad.output


def test_without_authorities_every_record_keeps_its_source_ranks(tmp_path, pulled_workspace):
    import shutil

    from treeoflife.workspace import Workspace

    shutil.copytree(pulled_workspace.root, tmp_path / "ws")
    workspace = Workspace(tmp_path / "ws")
    with workspace.connect() as con:
        stats = resolve_taxa(con)
        eol = rows(
            con,
            "SELECT DISTINCT r.kingdom FROM taxa_resolved r WHERE r.source = 'eol' "
            "AND r.kingdom IS NOT NULL",
        )
    assert stats.authorities == [] and stats.by_status == {"unresolved": stats.records}
    assert set(stats.by_method) == {"source-only", "none"}
    assert {r["kingdom"] for r in eol} == {"Animalia", "Plantae", "Fungi"}  # no Metazoa


def test_per_record_table_mode_gives_the_same_rows_and_switches_back(mini_catalog):
    def kind(con) -> list:
        return con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'taxa_resolved'"
        ).fetchall()

    with mini_catalog.connect() as con:
        resolve_taxa(con)
        assert kind(con) == [("VIEW",)]  # the default: one answer per taxon, like `records`
        view = sorted(con.execute("SELECT * FROM taxa_resolved").fetchall(), key=str)
        resolve_taxa(con, ResolveOptions.from_stage({"per_record": "table"}))
        assert kind(con) == [("BASE TABLE",)]
        assert sorted(con.execute("SELECT * FROM taxa_resolved").fetchall(), key=str) == view
        nullable = con.execute(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_name = 'taxa_resolved' AND column_name = 'record_id'"
        ).fetchall()
        assert nullable == [("NO",)]
        resolve_taxa(con)
        assert kind(con) == [("VIEW",)]
        assert sorted(con.execute("SELECT * FROM taxa_resolved").fetchall(), key=str) == view
