"""`tol audit`: every JSON figure checked against a direct SQL count over the catalog.

The fixture is a copy of the pulled sample workspace with `taxa_resolved` filled by SQL from
the source ranks (kingdoms harmonised, a few names left unresolved or ambiguous), planted
misspellings (Ursus arctos / arctus / Ursos arctos) and a `taxa_conflicts` table, so the
audit is tested without depending on `tol taxa resolve`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.taxonomy.audit import (
    audit_catalog,
    audit_workspace,
    print_coverage_summary,
    summary_line,
)
from treeoflife.workspace import RANKS, Workspace

RANK_COLUMNS = ", ".join(f'"{r}"' for r in RANKS)

# Planted names: (taxon_key, binomial, images). Same family and genus as the real brown bear.
PLANTED = (
    ("ursus-arctos", "Ursus arctos", 3),
    ("ursus-arctus", "Ursus arctus", 1),  # epithet misspelt: the TreeOfLife-10M case
    ("ursos-arctos", "Ursos arctos", 1),  # genus misspelt
    ("ursus-maritimus", "Ursus maritimus", 2),  # a real, different species: not a suspect
)

RESOLVE_SQL = f"""
INSERT INTO taxa_resolved (record_id, {RANK_COLUMNS}, common, method, authority,
                           authority_taxon_id, status)
SELECT record_id,
       CASE WHEN species LIKE '%malaise%' THEN NULL
            WHEN kingdom = 'Metazoa' OR (kingdom IS NULL AND phylum IS NOT NULL) THEN 'Animalia'
            WHEN kingdom = 'Archaeplastida' THEN 'Plantae' ELSE kingdom END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE phylum END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE class END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE "order" END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE family END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE genus END,
       CASE WHEN species LIKE '%malaise%' THEN NULL ELSE species END,
       coalesce(common_name, species), 'exact', 'gbif', NULL,
       CASE WHEN scientific_name IS NULL OR species LIKE '%malaise%' THEN 'unresolved'
            WHEN source = 'eol' AND genus = 'Morus' THEN 'ambiguous'
            WHEN species IS NULL THEN 'partial' ELSE 'resolved' END
FROM records
"""


def plant_records(con: duckdb.DuckDBPyConnection) -> None:
    """Add the planted bear records to source_taxa and record_rows (the real tables)."""
    for key, name, images in PLANTED:
        genus = name.split()[0]
        con.execute(
            "INSERT INTO source_taxa (source, taxon_key, scientific_name, taxon_rank, kingdom, "
            "phylum, class, \"order\", family, genus, species) VALUES ('eol', ?, ?, 'species', "
            "'Metazoa', 'Chordata', 'Mammalia', 'Carnivora', 'Ursidae', ?, ?)",
            [key, name, genus, name],
        )
        for i in range(images):
            con.execute(
                "INSERT INTO record_rows (source, source_id, taxon_key, url) "
                "VALUES ('eol', ?, ?, ?)",
                [f"{key}-{i}", key, f"https://example.org/{key}/{i}.jpg"],
            )


def make_resolved_workspace(pulled: Workspace, root: Path, conflicts: bool = True) -> Workspace:
    """A copy of the pulled workspace, resolved by SQL as described in the module docstring."""
    shutil.copytree(pulled.root, root)
    workspace = Workspace(root)
    with workspace.connect() as con:
        plant_records(con)
        con.execute(RESOLVE_SQL)
        if conflicts:
            con.execute(
                """
                CREATE TABLE taxa_conflicts AS
                SELECT r.record_id, 'kingdom' AS rank, r.kingdom AS source_value,
                       t.kingdom AS authority_value, 'gbif' AS authority
                FROM records r JOIN taxa_resolved t USING (record_id)
                WHERE r.kingdom IS DISTINCT FROM t.kingdom AND r.kingdom IS NOT NULL
                """
            )
    return workspace


@pytest.fixture(scope="module")
def resolved_workspace(pulled_workspace, tmp_path_factory) -> Workspace:
    return make_resolved_workspace(pulled_workspace, tmp_path_factory.mktemp("audit") / "ws")


@pytest.fixture(scope="module")
def resolved_report(resolved_workspace, tmp_path_factory):
    return audit_workspace(resolved_workspace, reports_dir=tmp_path_factory.mktemp("reports"))


def sql(workspace: Workspace, query: str, params: list | None = None) -> list[tuple]:
    with workspace.connect(read_only=True) as con:
        return con.execute(query, params or []).fetchall()


JOINED = "records r LEFT JOIN taxa_resolved t USING (record_id)"


def test_totals_and_ranks_match_sql(resolved_workspace, resolved_report):
    figures = resolved_report.figures
    assert figures["basis"] == "resolved"
    [(records, sources, species)] = sql(
        resolved_workspace,
        f"SELECT count(*), count(DISTINCT r.source), count(DISTINCT t.species) FROM {JOINED}",
    )
    assert figures["totals"]["records"] == records == 346 + sum(n for *_, n in PLANTED)
    assert figures["totals"]["sources"] == sources == 5
    assert figures["totals"]["distinct_species"] == species
    [(resolved_rows,)] = sql(resolved_workspace, "SELECT count(*) FROM taxa_resolved")
    assert figures["totals"]["taxa_resolved_rows"] == resolved_rows
    for i, rank in enumerate(RANKS):
        path = ", ".join(f't."{r}"' for r in RANKS[: i + 1])
        [(known, names, lineages)] = sql(
            resolved_workspace,
            f'SELECT count(t."{rank}"), count(DISTINCT t."{rank}"), '
            f'count(DISTINCT CASE WHEN t."{rank}" IS NOT NULL THEN ({path}) END) FROM {JOINED}',
        )
        assert figures["ranks"][rank] == {
            "records": known,
            "distinct_names": names,
            "distinct_lineages": lineages,
        }, rank
    # Homonyms: Morus is one genus name but two lineages (gannet and mulberry).
    assert (
        figures["ranks"]["genus"]["distinct_lineages"] > figures["ranks"]["genus"]["distinct_names"]
    )


def test_share_resolved_per_source_and_kingdom_match_sql(resolved_workspace, resolved_report):
    figures = resolved_report.figures
    for key, column in (
        ("by_source", "r.source"),
        ("by_kingdom", "coalesce(t.kingdom, '(unknown)')"),
    ):
        rows = sql(
            resolved_workspace,
            f"""
            SELECT {column}, count(*),
                   count(*) FILTER (WHERE t.status = 'resolved' AND t.species IS NOT NULL),
                   count(t.species), count(DISTINCT t.species)
            FROM {JOINED} GROUP BY 1
            """,
        )
        assert set(figures[key]) == {row[0] for row in rows}
        for name, n, to_species, with_species, distinct in rows:
            group = figures[key][name]
            assert group["records"] == n
            assert group["resolved_to_species"] == to_species
            assert group["share_resolved_to_species"] == pytest.approx(to_species / n, abs=1e-6)
            assert group["ranks"]["species"] == with_species
            assert group["distinct_species"] == distinct
    status = dict(sql(resolved_workspace, f"SELECT t.status, count(*) FROM {JOINED} GROUP BY 1"))
    assert figures["status"] == status
    assert {"resolved", "partial", "ambiguous", "unresolved"} <= set(status)
    for source, group in figures["by_source"].items():
        per_status = dict(
            sql(
                resolved_workspace,
                f"SELECT t.status, count(*) FROM {JOINED} WHERE r.source = ? GROUP BY 1",
                [source],
            )
        )
        assert {s: n for s, n in group["status"].items() if n} == per_status


def test_unresolved_and_ambiguous_names_match_sql(resolved_workspace, resolved_report):
    figures = resolved_report.figures
    for status in ("unresolved", "ambiguous"):
        [(records, names)] = sql(
            resolved_workspace,
            f"""
            SELECT count(*), count(DISTINCT coalesce(r.scientific_name, r.species, r.genus,
                   r.family, r."order", r.class, r.phylum, r.kingdom, '(no name)'))
            FROM {JOINED} WHERE t.status = ?
            """,
            [status],
        )
        assert figures[status]["records"] == records > 0
        assert figures[status]["names_total"] == names
        assert sum(n["records"] for n in figures[status]["names"]) == records
    ambiguous = {n["name"]: n for n in figures["ambiguous"]["names"]}
    assert set(ambiguous) == {"Morus bassanus", "Morus alba"}
    assert ambiguous["Morus bassanus"]["sources"] == ["eol"]
    unresolved = {n["name"] for n in figures["unresolved"]["names"]}
    assert "(no name)" in unresolved  # records whose taxon the source never gave
    assert any("malaise" in name for name in unresolved)


def test_kingdom_names_given_and_resolved(resolved_workspace, resolved_report):
    kingdoms = resolved_report.figures["kingdoms"]
    given = dict(
        sql(
            resolved_workspace,
            "SELECT coalesce(kingdom, '(unknown)'), count(*) FROM records GROUP BY 1",
        )
    )
    assert kingdoms["source_given"] == given
    assert {"Metazoa", "Archaeplastida", "Animalia", "Plantae", "Fungi"} <= set(given)
    assert kingdoms["source_given_names"] == len(given) - 1
    resolved = dict(
        sql(
            resolved_workspace,
            f"SELECT coalesce(t.kingdom, '(unknown)'), count(*) FROM {JOINED} GROUP BY 1",
        )
    )
    assert kingdoms["resolved"] == resolved
    assert kingdoms["resolved_names"] == 3  # Animalia, Plantae, Fungi
    mapping = {(m["source_kingdom"], m["kingdom"]): m["records"] for m in kingdoms["mapping"]}
    assert mapping[("Metazoa", "Animalia")] == given["Metazoa"]
    assert mapping[("Archaeplastida", "Plantae")] == given["Archaeplastida"]


def test_conflicts_come_from_the_conflicts_table(resolved_workspace, resolved_report):
    conflicts = resolved_report.figures["conflicts"]
    by_rank = dict(sql(resolved_workspace, "SELECT rank, count(*) FROM taxa_conflicts GROUP BY 1"))
    assert conflicts["available"] and conflicts["rows"] == sum(by_rank.values()) > 0
    assert {c["rank"]: c["rows"] for c in conflicts["by_rank"]} == by_rank
    # Without a `records` column, each conflict row is one image.
    assert conflicts["records"] == conflicts["rows"]
    top = {(c["source_value"], c["authority_value"]): c["rows"] for c in conflicts["top"]}
    assert top == dict(
        ((s, a), n)
        for s, a, n in sql(
            resolved_workspace,
            "SELECT source_value, authority_value, count(*) FROM taxa_conflicts GROUP BY 1, 2",
        )
    )


def test_misspelled_duplicates_are_flagged_and_real_names_are_not(resolved_report):
    suspects = resolved_report.figures["misspelling_suspects"]
    pairs = {(p["name_a"], p["name_b"]): p for p in suspects["pairs"]}
    assert set(pairs) == {("Ursus arctos", "Ursus arctus"), ("Ursos arctos", "Ursus arctos")}
    assert suspects["pairs_total"] == 2
    epithet = pairs[("Ursus arctos", "Ursus arctus")]
    assert (epithet["differs"], epithet["distance"], epithet["likely_correct"]) == (
        "epithet",
        1,
        "Ursus arctos",
    )
    assert (epithet["records_a"], epithet["records_b"]) == (3, 1)
    assert pairs[("Ursos arctos", "Ursus arctos")]["differs"] == "genus"


def test_misspelling_suspects_say_which_name_an_authority_accepts(resolved_workspace, tmp_path):
    from treeoflife.taxonomy.authority import ensure_authority_tables

    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(resolved_workspace.root, workspace.root)
    with workspace.connect() as con:
        ensure_authority_tables(con)
        con.execute(
            "INSERT INTO authority_taxa (authority, taxon_id, status, rank, canonical_name) "
            "VALUES ('gbif', '2433433', 'accepted', 'species', 'Ursus arctos'), "
            "('gbif', '1', 'synonym', 'species', 'Ursus arctus')"
        )
        pairs = audit_catalog(con)["misspelling_suspects"]["pairs"]
    flags = {(p["name_a"], p["name_b"]): p["in_authority"] for p in pairs}
    assert flags[("Ursus arctos", "Ursus arctus")] == [True, False]  # a synonym is not accepted
    assert flags[("Ursos arctos", "Ursus arctos")] == [False, True]


def test_lineage_holes_long_tail_and_tree_match_sql(resolved_workspace, resolved_report):
    figures = resolved_report.figures
    holes = figures["lineage_holes"]
    [(order_holes,)] = sql(
        resolved_workspace,
        f'SELECT count(*) FROM {JOINED} WHERE t."order" IS NULL AND coalesce(t.family, t.genus, '
        "t.species) IS NOT NULL",
    )
    assert holes["missing_rank"]["order"] == order_holes > 0  # EOL's snail has no order
    tail = figures["images_per_species"]
    per_species = dict(
        sql(
            resolved_workspace,
            f"SELECT t.species, count(*) FROM {JOINED} WHERE t.species IS NOT NULL GROUP BY 1",
        )
    )
    assert tail["species"] == len(per_species)
    assert tail["images"] == sum(per_species.values())
    assert tail["max"] == max(per_species.values())
    assert tail["singletons"] == sum(1 for n in per_species.values() if n == 1)
    assert sum(b["species"] for b in tail["log2_bins"]) == len(per_species)
    for b in tail["log2_bins"]:
        assert b["species"] == sum(
            1 for n in per_species.values() if b["images_from"] <= n <= b["images_to"]
        )
    tree = figures["taxonomy_tree"]
    assert tree["truncated_lineages"] == 0
    assert sum(row[-1] for row in tree["lineages"]) == figures["totals"]["records"]


def test_reports_written_and_self_contained(resolved_report):
    figures = json.loads(resolved_report.json_path.read_text())
    assert figures["totals"] == resolved_report.figures["totals"]
    page = resolved_report.html_path.read_text()
    assert "<script src" not in page.lower() and "<link" not in page.lower()  # no CDN
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js inlined
    for plot_id in ("plot-taxonomy", "plot-rank-source", "plot-long-tail", "plot-status"):
        assert f"id='{plot_id}'" in page
    assert "Ursus arctus" in page and "Archaeplastida" in page


def test_source_basis_when_nothing_is_resolved(pulled_workspace, tmp_path):
    """An unresolved workspace is audited on its source ranks, and the report says so."""
    report = audit_workspace(pulled_workspace, reports_dir=tmp_path, write_html=False)
    figures = report.figures
    assert figures["basis"] == "source" and "taxa_resolved is empty" in figures["basis_note"]
    assert figures["status"] == {"not-run": 346}
    assert figures["conflicts"] == {"available": False, "rows": 0, "records": 0}
    assert figures["flags"] == {}
    assert figures["unresolved"]["records"] == 0
    [(species, with_species)] = sql(
        pulled_workspace, "SELECT count(DISTINCT species), count(species) FROM records"
    )
    assert figures["ranks"]["species"]["distinct_names"] == species
    assert figures["totals"]["resolved_to_species"] == with_species
    assert figures["kingdoms"]["source_given"] == figures["kingdoms"]["resolved"]
    assert report.html_path is None and not (tmp_path / "audit.html").exists()


def test_audit_is_repeatable(resolved_workspace, resolved_report, tmp_path):
    again = audit_workspace(resolved_workspace, reports_dir=tmp_path, write_html=False).figures
    first = dict(resolved_report.figures)
    first.pop("generated_at"), again.pop("generated_at")
    assert again == json.loads(json.dumps(first, default=str))


def test_blank_names_count_as_unknown(pulled_workspace, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(pulled_workspace.root, workspace.root)
    with workspace.connect() as con:
        con.execute("UPDATE source_taxa SET kingdom = '  ' WHERE kingdom = 'Fungi'")
        figures = audit_catalog(con)
    assert "Fungi" not in figures["kingdoms"]["source_given"]
    assert "  " not in figures["kingdoms"]["source_given"]
    [(known,)] = sql(workspace, "SELECT count(*) FROM records WHERE trim(kingdom) <> ''")
    assert figures["ranks"]["kingdom"]["records"] == known


# ---------------------------------------------------------------- comparison


def write_catalog_csv(workspace: Workspace, path: Path) -> None:
    """A TreeOfLife-10M-style catalog.csv of the workspace's resolved taxa, then edited:
    Apis mellifera dropped, Vespa crabro added, Bufo bufo's family changed, and a
    train_small-only species that the comparison must ignore."""
    with workspace.connect(read_only=True) as con:
        con.execute(
            f"""
            COPY (
              SELECT 'train' AS split, uuid()::VARCHAR AS treeoflife_id,
                     NULL AS eol_content_id, NULL AS eol_page_id, NULL AS bioscan_part,
                     NULL AS bioscan_filename, NULL AS inat21_filename, NULL AS inat21_cls_name,
                     NULL AS inat21_cls_num, t.kingdom, t.phylum, t.class, t."order",
                     CASE WHEN t.species = 'Bufo bufo' THEN 'Ranidae' ELSE t.family END AS family,
                     t.genus, lower(regexp_extract(t.species, '^\\S+\\s+(.+)$', 1)) AS species,
                     coalesce(t.common, '') AS common
              FROM {JOINED}
              WHERE t.species IS DISTINCT FROM 'Apis mellifera'
              UNION ALL
              SELECT 'val', 'x', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'Animalia',
                     'Arthropoda', 'Insecta', 'Hymenoptera', 'Vespidae', 'Vespa', 'crabro',
                     'European hornet'
              UNION ALL
              SELECT 'train_small', 'y', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'Animalia',
                     'Arthropoda', 'Insecta', 'Diptera', 'Muscidae', 'Musca', 'domestica',
                     'House fly'
            ) TO '{path}' (HEADER, DELIMITER ',')
            """
        )


def test_compare_with_a_catalog_csv(resolved_workspace, tmp_path):
    catalog = tmp_path / "catalog.csv"
    write_catalog_csv(resolved_workspace, catalog)
    report = audit_workspace(resolved_workspace, catalog, reports_dir=tmp_path, write_html=False)
    compare = report.figures["compare"]
    [(other_records,)] = sql(
        resolved_workspace,
        f"SELECT count(*) FROM read_csv('{catalog}') WHERE split <> 'train_small'",
    )
    assert compare["other"]["records"] == other_records
    species = compare["ranks"]["species"]
    assert [n["name"] for n in species["gained_names"]] == ["Apis mellifera"]
    assert [n["name"] for n in species["lost_names"]] == ["Vespa crabro"]
    assert (species["gained"], species["lost"]) == (1, 1)
    assert compare["ranks"]["family"]["lost"] == 2  # Vespidae, and the invented Ranidae
    # Apis mellifera's Apidae and Bufo bufo's Bufonidae (relabelled there) are not there.
    assert {g["name"] for g in compare["ranks"]["family"]["gained_names"]} == {
        "Apidae",
        "Bufonidae",
    }
    relabelled = compare["relabelled"]
    assert relabelled["species"] == 1 and relabelled["by_rank"]["family"] == 1
    [example] = relabelled["examples"]
    assert example["species"] == "Bufo bufo" and example["changed_ranks"] == ["family"]
    assert example["lineage"][4] == "Bufonidae" and example["other_lineage"][4] == "Ranidae"


def test_compare_with_a_workspace_matches_sql(resolved_workspace, pulled_workspace, tmp_path):
    report = audit_workspace(
        resolved_workspace, pulled_workspace.root, reports_dir=tmp_path, write_html=False
    )
    compare = report.figures["compare"]
    assert compare["other"]["kind"] == "workspace" and compare["other"]["basis"] == "source"
    other_db = pulled_workspace.catalog_path
    for rank in RANKS:
        gained = sql(
            resolved_workspace,
            f"""
            ATTACH '{other_db}' AS other (READ_ONLY);
            SELECT count(*) FROM (SELECT DISTINCT lower(t."{rank}") FROM {JOINED}
                                  WHERE t."{rank}" IS NOT NULL
                                  EXCEPT SELECT lower("{rank}") FROM other.records)
            """,
        )[0][0]
        lost = sql(
            resolved_workspace,
            f"""
            ATTACH '{other_db}' AS other (READ_ONLY);
            SELECT count(*) FROM (SELECT DISTINCT lower("{rank}") FROM other.records
                                  WHERE "{rank}" IS NOT NULL
                                  EXCEPT SELECT lower(t."{rank}") FROM {JOINED})
            """,
        )[0][0]
        assert (compare["ranks"][rank]["gained"], compare["ranks"][rank]["lost"]) == (
            gained,
            lost,
        ), rank
    assert {n["name"] for n in compare["ranks"]["species"]["gained_names"]} == {
        name for _, name, _ in PLANTED
    }
    assert {n["name"] for n in compare["ranks"]["kingdom"]["lost_names"]} == {
        "Metazoa",
        "Archaeplastida",
    }
    same = audit_workspace(
        resolved_workspace, resolved_workspace.catalog_path, reports_dir=tmp_path
    )
    itself = same.figures["compare"]
    assert all(r["gained"] == r["lost"] == 0 for r in itself["ranks"].values())
    assert itself["relabelled"]["species"] == 0


def test_compare_errors_name_the_problem(resolved_workspace, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("split,kingdom,genus\ntrain,Animalia,Apis\n")
    with pytest.raises(
        TolError, match=r"missing column\(s\) phylum, class, order, family, species"
    ):
        audit_workspace(resolved_workspace, bad, reports_dir=tmp_path)
    with pytest.raises(TolError, match="no such file"):
        audit_workspace(resolved_workspace, tmp_path / "nope.csv", reports_dir=tmp_path)
    with pytest.raises(TolError, match="no catalog.duckdb"):
        audit_workspace(resolved_workspace, tmp_path, reports_dir=tmp_path)


# ---------------------------------------------------------------- CLI and console


def test_cli_writes_reports_and_prints_coverage(resolved_workspace, tmp_path):
    catalog = tmp_path / "catalog.csv"
    write_catalog_csv(resolved_workspace, catalog)
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "-w",
            str(resolved_workspace.root),
            "--compare",
            str(catalog),
            "--reports",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "audit.json").exists() and (out / "audit.html").exists()
    printed = " ".join(result.output.split())  # rich wraps at the terminal width
    assert "taxonomic coverage (resolved)" in printed
    assert "suspected misspellings: 2" in printed
    assert "species +1 -1, relabelled 1" in printed
    failed = CliRunner().invoke(
        app, ["audit", "-w", str(resolved_workspace.root), "--compare", str(tmp_path / "x.csv")]
    )
    assert failed.exit_code == 1 and "no such file" in " ".join(failed.output.split())
    missing = CliRunner().invoke(app, ["audit", "-w", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no workspace" in " ".join(missing.output.split())


def test_coverage_summary_lists_every_source(resolved_report):
    from rich.console import Console

    console = Console(record=True, width=140)
    print_coverage_summary(resolved_report.figures, console)
    text = console.export_text()
    for source in resolved_report.figures["by_source"]:
        assert source in text
    assert "Metazoa" in text and "all" in text
    line = summary_line(resolved_report.figures)
    totals = resolved_report.figures["totals"]
    assert f"of {totals['records']:,} images resolved to species" in line
    assert "kingdom names 5 as given -> 3" in line and "2 suspected misspellings" in line


def test_stale_and_doubled_resolution_rows(resolved_workspace, tmp_path):
    """Records without a taxa_resolved row show as 'not-run'; a doubled row counts once."""
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(resolved_workspace.root, workspace.root)
    with workspace.connect() as con:
        con.execute("DELETE FROM taxa_resolved WHERE record_id LIKE 'bioscan-1m:%'")
        con.execute(
            "INSERT INTO taxa_resolved SELECT * FROM taxa_resolved WHERE record_id LIKE 'eol:%'"
        )
        figures = audit_catalog(con)
    [(records, bioscan)] = sql(
        workspace,
        "SELECT count(*), count(*) FILTER (WHERE source = 'bioscan-1m') FROM records",
    )
    assert figures["totals"]["records"] == records
    assert figures["status"]["not-run"] == bioscan == figures["by_source"]["bioscan-1m"]["records"]
    assert (
        figures["by_source"]["eol"]["records"]
        == sql(workspace, "SELECT count(*) FROM records WHERE source = 'eol'")[0][0]
    )


# ---------------------------------------------------------------- with the real resolver


@pytest.fixture(scope="module")
def really_resolved(pulled_workspace, sample_pipeline, sample_server, tmp_path_factory):
    """The pulled sample resolved by `tol taxa resolve` against the sample GBIF and COL."""
    from treeoflife.demo import load_sample_authorities
    from treeoflife.taxonomy.resolve import resolve_taxa

    workspace = Workspace(tmp_path_factory.mktemp("audit-real") / "ws")
    shutil.copytree(pulled_workspace.root, workspace.root)
    load_sample_authorities(workspace, sample_pipeline, sample_server.url)
    with workspace.connect() as con:
        resolve_taxa(con)
    return workspace


def test_audit_of_a_real_resolution_matches_sql(really_resolved, tmp_path):
    figures = audit_workspace(really_resolved, reports_dir=tmp_path).figures
    assert figures["basis"] == "resolved"
    assert figures["status"] == dict(
        sql(really_resolved, "SELECT status, count(*) FROM taxa_resolved GROUP BY 1")
    )
    for source, to_species in sql(
        really_resolved,
        f"SELECT r.source, count(*) FILTER (WHERE t.status = 'resolved' AND t.species IS NOT "
        f"NULL) FROM {JOINED} GROUP BY 1",
    ):
        assert figures["by_source"][source]["resolved_to_species"] == to_species
    [(rows, records)] = sql(really_resolved, "SELECT count(*), sum(records) FROM taxa_conflicts")
    assert (figures["conflicts"]["rows"], figures["conflicts"]["records"]) == (rows, records)
    assert figures["flags"] == dict(
        sql(
            really_resolved,
            "SELECT f, count(*) FROM (SELECT unnest(flags) AS f FROM taxa_resolved) GROUP BY 1",
        )
    )
    # The mixed kingdom names of the sources are harmonised by the resolver.
    assert {"Metazoa", "Archaeplastida"} <= set(figures["kingdoms"]["source_given"])
    assert set(figures["kingdoms"]["resolved"]) <= {"Animalia", "Plantae", "Fungi", "(unknown)"}
    page = (tmp_path / "audit.html").read_text()
    assert "Parus caeruleus" in page  # the synonym conflict is listed
