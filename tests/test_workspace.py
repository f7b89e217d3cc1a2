import json

import duckdb
import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.workspace import SCHEMA_VERSION, Workspace, status

CORE_TABLES = {"records", "quarantine", "taxa_resolved", "images", "duplicates", "release"}


def test_init_creates_layout_and_schema(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    for sub in ("downloads", "staging", "release", "reports", "runs"):
        assert (ws.root / sub).is_dir()
    with ws.connect() as con:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        assert CORE_TABLES <= tables
        report = status(con)
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["stages"]["pull"] == {
        "complete": False,
        "rows": 0,
        "sources": {},
        "quarantined": 0,
    }
    Workspace(tmp_path / "ws").init()  # idempotent


def test_missing_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(TolError, match="tol init"):
        with Workspace(tmp_path / "nope").connect():
            pass


def test_newer_schema_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    with ws.connect() as con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(TolError, match="newer than this treeoflife"):
        with ws.connect():
            pass


def test_cli_init_and_status_json(tmp_path):
    runner = CliRunner()
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["init", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status", "--workspace", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["stages"]) == {"pull", "taxa", "images", "dedup", "shard"}
    result = runner.invoke(app, ["status", "--workspace", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "tol init" in result.output
    assert "Traceback" not in result.output


def test_a_version_1_catalog_is_migrated_with_its_records(tmp_path):
    """v1 stored `record_images` as a table; v2 keeps its rows in `record_rows` and reads
    them through the `record_images` view, ids unchanged."""
    root = tmp_path / "ws"
    root.mkdir()
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute(
        """
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE record_images (
            record_id VARCHAR GENERATED ALWAYS AS (source || ':' || source_id) VIRTUAL,
            source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, source_version VARCHAR,
            group_id VARCHAR, url VARCHAR, archive VARCHAR, member VARCHAR, license VARCHAR,
            license_raw VARCHAR, rights_holder VARCHAR, taxon_key VARCHAR, width INTEGER,
            height INTEGER, source_file VARCHAR
        );
        INSERT INTO record_images (source, source_id, group_id, url, rights_holder, taxon_key)
        VALUES ('eol', '12', 'g1', 'https://x/12.jpg', 'Ann', 't9');
        CREATE VIEW records AS SELECT * FROM record_images;
        """
    )
    con.close()
    ws = Workspace(root)
    with ws.connect() as con:
        rows = con.execute(
            "SELECT record_id, source_id, group_id, url, rights_holder, taxon_key "
            "FROM record_images"
        ).fetchall()
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        con.execute("INSERT INTO record_rows (source, source_num) VALUES ('inat-open-data', 7)")
        added = con.execute(
            "SELECT record_id FROM records WHERE source = 'inat-open-data'"
        ).fetchall()
    assert rows == [("eol:12", "12", "g1", "https://x/12.jpg", "Ann", "t9")]
    assert version == (str(SCHEMA_VERSION),)
    assert added == [("inat-open-data:7",)]
