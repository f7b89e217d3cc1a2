"""Authorities loaded from the bundled sample extracts: counts, ranks, synonyms, quarantine."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import fast_client
from treeoflife.loopback import LoopbackServer
from treeoflife.manifest import load_manifest, repo_dir
from treeoflife.sample import SAMPLE_FILES
from treeoflife.taxonomy.authority import download_authority, load_authority
from treeoflife.workspace import RANKS, Workspace

GBIF_ZIP = SAMPLE_FILES / "hosted-datasets.gbif.org/datasets/backbone/2023-08-28/backbone.zip"
COL_ZIP = SAMPLE_FILES / "download.checklistbank.org/col/annual/2024_coldp.zip"
INAT_TAXA = SAMPLE_FILES / "inaturalist-open-data.s3.amazonaws.com/taxa.csv.gz"
PATHS = {"gbif": GBIF_ZIP, "col": COL_ZIP, "inat": INAT_TAXA}


def data_rows(archive: Path, member: str) -> int:
    if archive.suffix == ".gz":
        return len(gzip.decompress(archive.read_bytes()).decode().splitlines()) - 1
    with zipfile.ZipFile(archive) as zf:
        return len(zf.read(member).decode().splitlines()) - 1


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A workspace with all three sample authorities loaded (tests only read it)."""
    workspace = Workspace(tmp_path_factory.mktemp("authority") / "ws").init()
    with workspace.connect() as con:
        stats = {
            kind: load_authority(
                con, kind, path, version="sample", extract_dir=workspace.root / "x" / kind
            )
            for kind, path in PATHS.items()
        }
    return workspace, stats


def taxon(con, authority: str, name: str) -> list[dict]:
    cursor = con.execute(
        "SELECT * FROM authority_taxa WHERE authority = ? AND canonical_name = ?",
        [authority, name],
    )
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def test_row_counts_are_data_rows_minus_quarantined(loaded):
    workspace, stats = loaded
    assert stats["gbif"].taxa == data_rows(GBIF_ZIP, "Taxon.tsv") - stats["gbif"].quarantined
    assert stats["col"].taxa == data_rows(COL_ZIP, "NameUsage.tsv") - stats["col"].quarantined
    assert stats["inat"].taxa == data_rows(INAT_TAXA, "") - stats["inat"].quarantined
    assert stats["gbif"].vernaculars == data_rows(GBIF_ZIP, "VernacularName.tsv")
    assert stats["col"].vernaculars == data_rows(COL_ZIP, "VernacularName.tsv")
    assert stats["gbif"].synonyms == stats["col"].synonyms == 3
    with workspace.connect(read_only=True) as con:
        statuses = {row[0] for row in con.execute("SELECT status FROM authority_taxa").fetchall()}
    assert statuses <= {"accepted", "synonym", "doubtful", "other"}


@pytest.mark.parametrize("authority", ["gbif", "col"])
def test_sample_species_resolve_to_their_seven_ranks(loaded, sample_expected, authority):
    workspace, _ = loaded
    with workspace.connect(read_only=True) as con:
        for species in sample_expected["species"]:
            if not species["kingdom"]:
                continue
            rows = [
                row
                for row in taxon(con, authority, species["name"])
                if row["status"] != "synonym" and row["kingdom"] == species["kingdom"]
            ]
            assert len(rows) == 1, (authority, species["name"])
            got = {rank: rows[0][rank] for rank in RANKS}
            assert got == {rank: species[rank] for rank in RANKS}, (authority, species["name"])


@pytest.mark.parametrize("authority", ["gbif", "col"])
def test_synonyms_point_at_the_accepted_name_and_carry_its_ranks(
    loaded, sample_expected, authority
):
    workspace, _ = loaded
    with workspace.connect(read_only=True) as con:
        for synonym in sample_expected["synonyms"]:
            (row,) = taxon(con, authority, synonym["name"])
            assert row["status"] == "synonym"
            assert row["authorship"] == synonym["authorship"]
            (accepted,) = con.execute(
                "SELECT canonical_name FROM authority_taxa WHERE authority = ? AND taxon_id = ?",
                [authority, row["accepted_id"]],
            ).fetchall()
            assert accepted[0] == synonym["accepted"]
            (target,) = taxon(con, authority, synonym["accepted"])
            assert [row[r] for r in RANKS] == [target[r] for r in RANKS]
            assert row["species"] == synonym["accepted"]


@pytest.mark.parametrize("authority", ["gbif", "col"])  # the iNat sample has Pieris only
def test_homonym_genera_appear_once_per_kingdom(loaded, sample_expected, authority):
    workspace, _ = loaded
    with workspace.connect(read_only=True) as con:
        for homonym in sample_expected["homonyms"]:
            rows = [r for r in taxon(con, authority, homonym["genus"]) if r["rank"] == "genus"]
            kingdoms = sorted(r["kingdom"] for r in rows)
            assert kingdoms == sorted(t["kingdom"] for t in homonym["taxa"])


def test_inat_ranks_come_from_the_ancestry_and_inactive_taxa_are_flagged(loaded):
    workspace, _ = loaded
    with workspace.connect(read_only=True) as con:
        (peeper,) = taxon(con, "inat", "Pseudacris crucifer")
        assert [peeper[r] for r in RANKS] == [
            "Animalia", "Chordata", "Amphibia", "Anura", "Hylidae", "Pseudacris",
            "Pseudacris crucifer",
        ]  # fmt: skip
        (inactive,) = taxon(con, "inat", "Parus caeruleus")
        assert (inactive["status"], inactive["status_raw"]) == ("other", "inactive")


def test_col_vernacular_languages_become_iso_639_1(loaded):
    workspace, _ = loaded
    with workspace.connect(read_only=True) as con:
        languages = dict(
            con.execute(
                "SELECT language, count(*) FROM authority_vernaculars "
                "WHERE authority = 'col' GROUP BY ALL"
            ).fetchall()
        )
        assert set(languages) == {"en", "fr", "de"}
        (blue_tit,) = con.execute(
            "SELECT v.name, v.preferred FROM authority_vernaculars v JOIN authority_taxa t "
            "ON t.authority = v.authority AND t.taxon_id = v.taxon_id "
            "WHERE v.authority = 'col' AND t.canonical_name = 'Cyanistes caeruleus' "
            "AND v.language = 'en'"
        ).fetchall()
        assert blue_tit == ("Eurasian Blue Tit", True)


def test_reloading_gives_the_same_rows(tmp_path):
    workspace = Workspace(tmp_path / "ws").init()
    with workspace.connect() as con:
        first = load_authority(con, "col", COL_ZIP, version="v1", extract_dir=tmp_path / "x")
        again = load_authority(con, "col", COL_ZIP, version="v1", extract_dir=tmp_path / "x")
        assert again == first
        assert con.execute("SELECT count(*) FROM authority_taxa").fetchall()[0][0] == first.taxa


def test_folder_input_and_malformed_rows_go_to_quarantine(tmp_path):
    with zipfile.ZipFile(GBIF_ZIP) as zf:
        lines = zf.read("Taxon.tsv").decode().splitlines()
    folder = tmp_path / "backbone"
    folder.mkdir()
    broken = [
        *lines[:5],
        "999\tonly three\tfields",  # line 6: too few columns, DuckDB rejects it
        *lines[5:8],
        "\t" + lines[8].split("\t", 1)[1],  # line 10: no taxonID
        lines[9],
        lines[9],  # line 12: a duplicate taxonID (the first is kept)
    ]
    (folder / "taxon.TSV").write_text("\n".join(broken) + "\n")
    workspace = Workspace(tmp_path / "ws").init()
    with workspace.connect() as con:
        stats = load_authority(con, "gbif", folder, version="v", extract_dir=tmp_path / "x")
        quarantined = con.execute(
            "SELECT file, line, reason FROM quarantine WHERE source = 'authority:gbif' "
            "ORDER BY line"
        ).fetchall()
    assert [(file, line) for file, line, _ in quarantined] == [
        ("taxon.TSV", 6),
        ("taxon.TSV", 10),
        ("taxon.TSV", 12),
    ]
    assert "taxonID is empty" in quarantined[1][2]
    assert "duplicate" in quarantined[2][2]
    assert stats.quarantined == 3
    assert stats.taxa == len(broken) - 1 - 3
    assert stats.vernaculars == 0


def test_download_authority_fetches_the_manifest_file(tmp_path):
    manifest = load_manifest(repo_dir("manifests") / "sample" / "col.toml")
    workspace = Workspace(tmp_path / "ws").init()
    with LoopbackServer(SAMPLE_FILES) as server, fast_client() as client:
        path = download_authority(workspace, manifest, client, mirror=server.url)
    assert path == workspace.downloads / "col" / manifest.version / "2024_coldp.zip"
    assert path.read_bytes() == COL_ZIP.read_bytes()


def test_cli_load_authority_from_path_and_manifest(tmp_path):
    from typer.testing import CliRunner

    from treeoflife.cli import app

    runner = CliRunner()
    ws = tmp_path / "ws"
    backbone = SAMPLE_FILES / "hosted-datasets.gbif.org/datasets/backbone/2023-08-28/backbone.zip"
    result = runner.invoke(app, ["taxa", "load-authority", "gbif", str(backbone), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["authority"] == "gbif" and stats["taxa"] > 100 and stats["version"] == "local"
    with LoopbackServer(SAMPLE_FILES) as server:
        args = ["taxa", "load-authority", "col", "sample/col.toml", "-w", str(ws)]
        result = runner.invoke(app, [*args, "--mirror", server.url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == "2024-sample"
    bad = runner.invoke(app, ["taxa", "load-authority", "itis", str(backbone), "-w", str(ws)])
    assert bad.exit_code == 1 and "unknown authority kind" in bad.output
