import json

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
