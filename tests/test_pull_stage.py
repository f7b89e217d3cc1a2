"""The pull stage's guarantees: idempotent, resumable, verified, atomic, safe with archives."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tests.conftest import fast_client, pull_all
from treeoflife import sources
from treeoflife.cli import app
from treeoflife.errors import ChecksumMismatch, DownloadError, UnsafeArchiveMember
from treeoflife.http import Checksum
from treeoflife.loopback import FaultPlan, LoopbackServer
from treeoflife.pull import download_dir, pull_source
from treeoflife.sample import SAMPLE_FILES


def _counts(workspace):
    with workspace.connect(read_only=True) as con:
        return con.execute(
            "SELECT (SELECT count(*) FROM records), (SELECT count(*) FROM quarantine), "
            "(SELECT count(DISTINCT record_id) FROM records)"
        ).fetchone()


def test_rerun_adds_nothing_and_skips_unchanged_sources(
    fresh_workspace, sample_pipeline, sample_server
):
    first = pull_all(fresh_workspace, sample_pipeline, sample_server.url)
    before = _counts(fresh_workspace)
    assert before[0] == before[2] == sum(r.records for r in first.values())
    requests_before = len(sample_server.request_log)
    again = pull_all(fresh_workspace, sample_pipeline, sample_server.url)
    assert all(r.skipped for r in again.values())
    assert len(sample_server.request_log) == requests_before  # verified files are reused
    assert _counts(fresh_workspace) == before
    manifest = sample_pipeline.sources["eol"]
    forced = pull_source(
        fresh_workspace, manifest, fast_client(), mirror=sample_server.url, force=True
    )
    assert not forced.skipped
    assert _counts(fresh_workspace) == before


def test_injected_faults_are_retried(fresh_workspace, sample_pipeline):
    plan = FaultPlan(
        status_5xx_first=1, status_429_first=1, reset_first=1, truncate_first=1, retry_after_s=0
    )
    with LoopbackServer(SAMPLE_FILES, faults=plan) as server:
        results = pull_all(fresh_workspace, sample_pipeline, server.url, fast_client(retries=5))
        statuses = [status for _, _, status in server.request_log]
    assert {503, 429, 0} <= set(statuses)
    assert results["eol"].records == 90


def test_retries_running_out_is_a_clear_error_and_keeps_the_catalog(
    fresh_workspace, sample_pipeline
):
    manifest = sample_pipeline.sources["bioscan-1m"]
    with LoopbackServer(SAMPLE_FILES, faults=FaultPlan(status_5xx_first=10)) as server:
        with pytest.raises(
            DownloadError,
            match=r"BIOSCAN_Insect_Dataset_metadata.tsv.*3 attempts|"
            r"BIOSCAN_Insect_Dataset_metadata.tsv.*attempts",
        ):
            pull_source(fresh_workspace, manifest, fast_client(retries=2), mirror=server.url)
    assert _counts(fresh_workspace) == (0, 0, 0)
    assert not (
        download_dir(fresh_workspace, manifest) / "BIOSCAN_Insect_Dataset_metadata.tsv"
    ).exists()


def test_download_killed_mid_body_resumes_with_range(fresh_workspace, sample_pipeline):
    manifest = sample_pipeline.sources["bioscan-1m"]
    server = LoopbackServer(SAMPLE_FILES, faults=FaultPlan(kill_after_bytes=20_000)).start()
    try:
        with pytest.raises(DownloadError):
            pull_source(fresh_workspace, manifest, fast_client(retries=1), mirror=server.url)
    finally:
        server.stop()
    target = download_dir(fresh_workspace, manifest) / "BIOSCAN_Insect_Dataset_metadata.tsv"
    partial = target.with_name(target.name + ".part")
    kept = partial.stat().st_size
    assert 0 < kept < manifest.file("metadata").size
    with LoopbackServer(SAMPLE_FILES, port=server.port) as restarted:
        result = pull_source(fresh_workspace, manifest, fast_client(), mirror=restarted.url)
        ranges = [h.get("Range") for h in restarted.request_headers if h.get("Range")]
    assert ranges == [f"bytes={kept}-"]
    assert result.records == 40
    assert not partial.exists() and target.stat().st_size == manifest.file("metadata").size


def test_checksum_mismatch_keeps_no_file_and_no_records(
    fresh_workspace, sample_pipeline, sample_server
):
    manifest = sample_pipeline.sources["bioscan-1m"]
    wrong = dataclasses.replace(
        manifest.files["metadata"], checksums=(Checksum("sha256", "0" * 64),)
    )
    broken = dataclasses.replace(manifest, files={**manifest.files, "metadata": wrong})
    with pytest.raises(ChecksumMismatch, match="sha256"):
        pull_source(fresh_workspace, broken, fast_client(), mirror=sample_server.url)
    folder = download_dir(fresh_workspace, manifest)
    assert not any(folder.iterdir())
    assert _counts(fresh_workspace) == (0, 0, 0)


def test_escaping_archive_members_are_refused(
    fresh_workspace, sample_pipeline, sample_server, tmp_path
):
    manifest = sample_pipeline.sources["bioscan-5m"]
    evil_url = manifest.base_url.replace("11973457", "8030065") + "evil_members.zip"
    evil = dataclasses.replace(
        manifest.files["metadata"], url=evil_url, member="*.jpg", checksums=(), size=None
    )
    broken = dataclasses.replace(manifest, files={"metadata": evil})
    with pytest.raises(UnsafeArchiveMember, match=r"evil_members.zip.*\.\./escape.jpg"):
        pull_source(fresh_workspace, broken, fast_client(), mirror=sample_server.url)
    assert not list(fresh_workspace.root.rglob("escape.jpg"))
    assert _counts(fresh_workspace) == (0, 0, 0)


def test_a_failing_ingest_rolls_back_to_the_previous_state(
    fresh_workspace, sample_pipeline, sample_server, monkeypatch
):
    manifest = sample_pipeline.sources["bioscan-1m"]
    pull_source(fresh_workspace, manifest, fast_client(), mirror=sample_server.url)
    before = _counts(fresh_workspace)

    def dies_midway(ctx):
        ctx.con.execute("DELETE FROM record_rows")
        raise KeyboardInterrupt  # as if the user hit Ctrl-C in the middle of the ingest

    monkeypatch.setitem(sources.LOADERS, "bioscan-1m", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        pull_source(fresh_workspace, manifest, fast_client(), mirror=sample_server.url, force=True)
    assert _counts(fresh_workspace) == before


def test_cli_pull_all_and_status(tmp_path, sample_server):
    runner = CliRunner()
    ws = tmp_path / "ws"
    result = runner.invoke(
        app, ["pull", "all", "--pipeline", "sample", "--mirror", sample_server.url, "-w", str(ws)]
    )
    assert result.exit_code == 0, result.output
    assert "quarantined rows" in result.output and "photos.csv.gz:11" in result.output
    status = json.loads(runner.invoke(app, ["status", "--json", "-w", str(ws)]).stdout)
    pulled = status["stages"]["pull"]
    assert pulled["complete"] and pulled["rows"] == 346
    assert set(pulled["sources"]) == {"inat21", "inat-open-data", "bioscan-1m", "bioscan-5m", "eol"}
    bad = runner.invoke(app, ["pull", "nope", "--pipeline", "sample", "-w", str(ws)])
    assert bad.exit_code == 1 and "unknown source 'nope'" in bad.output


def test_inat_open_data_from_the_dated_snapshot_tarball(
    fresh_workspace, sample_pipeline, sample_server
):
    """The real manifest reads the four TSVs from the dated tarball: same records either way."""
    manifest = sample_pipeline.sources["inat-open-data"]
    tarball = manifest.base_url + "metadata/inaturalist-open-data-20241127.tar.gz"
    files = {
        role: dataclasses.replace(
            spec, url=tarball, member=f"*/{role}.csv", checksums=(), size=None
        )
        for role, spec in manifest.files.items()
    }
    snapshot = dataclasses.replace(manifest, files=files)
    result = pull_source(fresh_workspace, snapshot, fast_client(), mirror=sample_server.url)
    assert result.records == 87
    with fresh_workspace.connect(read_only=True) as con:
        labels = {r[0] for r in con.execute("SELECT DISTINCT file FROM quarantine").fetchall()}
    assert labels == {
        "inaturalist-open-data-20241127.tar.gz!inaturalist-open-data-20241127/photos.csv"
    }
