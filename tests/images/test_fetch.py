"""`tol images fetch` on real bytes over loopback: every outcome recorded with its reason,
only good images in the shards, retries/robots/stragglers, resume from committed units."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.images.conftest import (
    SYNTHETIC_HOST,
    fast_policy,
    image_rows,
    jpeg_bytes,
    photo_paths,
    shard_members,
    url_workspace,
)
from treeoflife.archives import read_member
from treeoflife.images.fetch import (
    FetchConfig,
    HostThrottle,
    _tasks,
    ensure_tables,
    fetch_images,
    iter_archive,
    member_key,
    plan_units,
    record_unit_failure,
    robots_opt_out,
    run_unit,
)
from treeoflife.images.staging import UnitPaths
from treeoflife.images.transform import ResizeSpec
from treeoflife.loopback import FaultPlan, LoopbackServer
from treeoflife.sample import SAMPLE_FILES

# What the transform reports for each planted corruption in the sample.
CORRUPT_REASONS = {
    "html-error-page": "not-an-image",
    "random-bytes": "not-an-image",
    "truncated-jpeg": "truncated",
    "empty": "empty",
}


def rid(item: dict) -> str:
    return f"{item['source']}:{item['source_id']}"


def assert_shards_hold_exactly_the_ok_rows(workspace) -> None:
    """Every ok row's (shard, member) is a decodable JPEG; nothing else is in any shard."""
    rows = image_rows(workspace)
    members = shard_members(workspace)
    ok = {(row[7], row[8]): row for row in rows if row[1] == "ok"}
    assert set(members) == set(ok)
    for (_shard, member), payload in members.items():
        assert "." not in member.removesuffix(".jpg")
        image = Image.open(io.BytesIO(payload))
        image.load()
        assert image.format == "JPEG"
    for row in rows:
        if row[1] != "ok":
            assert row[2], f"{row[0]} has status {row[1]} but no reason"
            assert row[7] is None and row[8] is None
    assert len({row[0] for row in rows}) == len(rows)  # one row per record


def test_sample_outcomes(sample_workspace, sample_server, sample_expected):
    seen = []
    stats = fetch_images(
        sample_workspace,
        ResizeSpec(),
        mirror=sample_server.url,
        client_policy=fast_policy(),
        workers=2,
        progress=lambda live: seen.append((live.completed(), live.total)),
    )
    assert all(done <= total for done, total in seen)  # live counts never run ahead
    assert seen[-1][0] == seen[-1][1] == stats.images
    rows = {row[0]: row for row in image_rows(sample_workspace)}
    with sample_workspace.connect() as con:
        records = con.execute(
            "SELECT record_id, url, source, archive, member FROM record_images"
        ).fetchall()
        archives = dict(
            ((source, role), path)
            for source, role, path in con.execute(
                "SELECT source, role, path FROM downloads"
            ).fetchall()
        )
    assert set(rows) == {record[0] for record in records}
    for item in sample_expected["corrupt_images"]:
        assert rows[rid(item)][1:3] == ("failed", CORRUPT_REASONS[item["kind"]]), item
    for item in sample_expected["missing_images"]:
        assert rows[rid(item)][1:3] == ("failed", "http-404")
    for item in sample_expected["special_images"]:
        assert rows[rid(item)][1] == "ok", item
    bad = len(sample_expected["corrupt_images"]) + len(sample_expected["missing_images"])
    assert stats.failed == bad and stats.ok == len(records) - bad and stats.skipped == 0
    assert sum(stats.reasons.values()) == bad
    # sha256 is of the original bytes; width/height are the original (upright) size.
    for record_id, url, source, archive, member in records:
        row = rows[record_id]
        if row[1] != "ok":
            continue
        if url:
            parts = urlsplit(url)
            raw = (SAMPLE_FILES / parts.hostname / parts.path.lstrip("/")).read_bytes()
        else:
            raw = read_member(Path(archives[(source, archive)]), member)
        assert row[3] == hashlib.sha256(raw).hexdigest(), record_id
        assert len(row[4]) == 16
        assert row[8] == f"{member_key(record_id)}.jpg"
    # Orientation 6: the stored pixels are turned; the recorded size is the upright one.
    rotated = rid(next(i for i in sample_expected["special_images"] if "exif" in i["kind"]))
    rotated_url = urlsplit(dict((r[0], r[1]) for r in records)[rotated])
    with Image.open(SAMPLE_FILES / rotated_url.hostname / rotated_url.path[1:]) as stored:
        assert (rows[rotated][5], rows[rotated][6]) == (stored.height, stored.width)
    assert_shards_hold_exactly_the_ok_rows(sample_workspace)
    for payload in list(shard_members(sample_workspace).values())[:20]:
        assert Image.open(io.BytesIO(payload)).size == (224, 224)

    # Idempotent: a second run plans nothing and fetches nothing.
    requests_before = len(sample_server.request_log)
    again = fetch_images(sample_workspace, ResizeSpec(), mirror=sample_server.url)
    assert again.units == 0 and again.images == 0
    assert len(sample_server.request_log) == requests_before
    assert len(image_rows(sample_workspace)) == len(records)


def test_transient_faults_are_retried(tmp_path, synthetic_site):
    workspace = url_workspace(tmp_path / "ws", photo_paths(12))
    plan = FaultPlan(
        status_5xx_first=1,
        status_429_first=1,
        reset_first=1,
        retry_after_s=0,
        paths="*/00[0-3].jpg",
    )
    with LoopbackServer(synthetic_site, plan) as server:
        stats = fetch_images(
            workspace, mirror=server.url, client_policy=fast_policy(retries=4), workers=1
        )
        statuses = [status for _, _, status in server.request_log]
    assert stats.ok == 12 and stats.failed == 0
    assert statuses.count(503) == 4 and statuses.count(429) == 4 and statuses.count(0) == 4
    assert statuses.count(200) == 12
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_persistent_errors_recorded_after_retries(tmp_path, synthetic_site):
    paths = photo_paths(6) + ["photos/missing.jpg"]
    workspace = url_workspace(tmp_path / "ws", paths)
    with workspace.connect() as con:  # a URL without a host cannot be fetched at all
        con.execute(
            "INSERT INTO record_rows (source, source_id, url) VALUES ('web', 'x', 'https:///x.jpg')"
        )
    plan = FaultPlan(status_5xx_first=100, paths="*/00[0-2].jpg")
    with LoopbackServer(synthetic_site, plan) as server:
        stats = fetch_images(
            workspace, mirror=server.url, client_policy=fast_policy(retries=2), workers=1
        )
        log = server.request_log
    rows = {row[0].split(":", 1)[1]: row for row in image_rows(workspace)}
    for number in range(3):
        path = f"photos/{number:03d}.jpg"
        assert rows[path][1:3] == ("failed", "http-503")
        assert sum(1 for _, p, _ in log if p.endswith(path)) == 3  # first try + 2 retries
    assert rows["photos/missing.jpg"][1:3] == ("failed", "http-404")
    assert sum(1 for _, p, _ in log if p.endswith("missing.jpg")) == 1  # 404: never retried
    assert rows["x"][1:3] == ("failed", "bad-url")
    assert stats.reasons == {"failed:http-503": 3, "failed:http-404": 1, "failed:bad-url": 1}
    assert_shards_hold_exactly_the_ok_rows(workspace)

    # --retry-failed fetches the transient failures again, not the 404.
    with LoopbackServer(synthetic_site) as server:
        again = fetch_images(workspace, mirror=server.url, retry_failed=True, workers=1)
    assert again.ok == 3 and again.failed == 0
    rows = {row[0].split(":", 1)[1]: row for row in image_rows(workspace)}
    assert rows["photos/missing.jpg"][1:3] == ("failed", "http-404")
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_robots_opt_out_is_honoured(tmp_path, synthetic_site):
    paths = ["noai/000.jpg", "noai/001.jpg", "scoped/000.jpg", "scoped/001.jpg", "photos/000.jpg"]
    headers = {
        f"/{SYNTHETIC_HOST}/noai/000.jpg": {"X-Robots-Tag": "noai"},
        f"/{SYNTHETIC_HOST}/noai/001.jpg": {"X-Robots-Tag": "noindex, NoImageAI"},
        f"/{SYNTHETIC_HOST}/scoped/000.jpg": {"X-Robots-Tag": "otherbot: noai"},
        f"/{SYNTHETIC_HOST}/scoped/001.jpg": {"X-Robots-Tag": "treeoflife: noimageai"},
    }
    with LoopbackServer(synthetic_site, path_headers=headers) as server:
        respected = url_workspace(tmp_path / "a", paths)
        fetch_images(respected, mirror=server.url, client_policy=fast_policy(), workers=1)
        ignored = url_workspace(tmp_path / "b", paths)
        fetch_images(
            ignored,
            mirror=server.url,
            client_policy=fast_policy(),
            workers=1,
            respect_robots=False,
        )
    outcome = {row[0].split(":", 1)[1]: row[1:3] for row in image_rows(respected)}
    assert outcome == {
        "noai/000.jpg": ("skipped", "robots-noai"),
        "noai/001.jpg": ("skipped", "robots-noai"),
        "scoped/000.jpg": ("ok", None),  # addressed to another crawler
        "scoped/001.jpg": ("skipped", "robots-noai"),
        "photos/000.jpg": ("ok", None),
    }
    assert_shards_hold_exactly_the_ok_rows(respected)
    assert {row[1] for row in image_rows(ignored)} == {"ok"}


def test_robots_header_parsing():
    assert robots_opt_out({"X-Robots-Tag": "noai"})
    assert robots_opt_out({"X-Robots-Tag": "noindex,noimageai"})
    assert robots_opt_out({"X-Robots-Tag": "*: noai"})
    assert not robots_opt_out({"X-Robots-Tag": "googlebot: noai"})
    assert not robots_opt_out({"X-Robots-Tag": "noindex"})
    assert not robots_opt_out({})


def test_straggler_never_hangs_the_run(tmp_path, synthetic_site):
    """A server dribbling one image's bytes cannot hold the unit: it ends as a timeout."""
    workspace = url_workspace(tmp_path / "ws", photo_paths(4) + ["photos/big.jpg"])
    plan = FaultPlan(slow_bytes_per_s=50_000)  # small files 0.1 s, big.jpg 8 s
    began = time.monotonic()
    with LoopbackServer(synthetic_site, plan) as server:
        stats = fetch_images(
            workspace,
            mirror=server.url,
            client_policy=fast_policy(retries=1),
            workers=1,
            image_deadline_s=1.5,
        )
    assert time.monotonic() - began < 6
    rows = {row[0].split(":", 1)[1]: row for row in image_rows(workspace)}
    assert rows["photos/big.jpg"][1:3] == ("failed", "timeout")
    assert stats.ok == 4
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_throttle_backs_off_and_recovers():
    throttle = HostThrottle(max_concurrency=8)
    state = throttle.state("h")
    throttle.overloaded("h", retry_after_s=None, sent_at=time.monotonic())
    throttle.overloaded("h", retry_after_s=None, sent_at=0.0)  # same episode: ignored
    assert state.window == 4.0 and state.interval_s == 0.0
    for _ in range(3):  # 4 -> 2 -> 1, then space requests out
        throttle.overloaded("h", retry_after_s=None, sent_at=time.monotonic())
    assert state.window == 1.0 and state.interval_s > 0
    for _ in range(40):
        throttle.success("h")
    assert state.window == 8.0 and state.interval_s == 0.0
    throttle.overloaded("h", retry_after_s=0.3)  # Retry-After pauses the whole host
    began = time.monotonic()
    with throttle.slot("h", deadline=time.monotonic() + 5):
        pass
    assert time.monotonic() - began >= 0.25


def test_throttle_allows_one_request_at_a_time_after_overloads():
    throttle = HostThrottle(max_concurrency=8)
    for _ in range(3):  # 8 -> 4 -> 2 -> 1
        throttle.overloaded("h", retry_after_s=None, sent_at=time.monotonic())
    active, peak, lock = 0, 0, threading.Lock()

    def request() -> None:
        nonlocal active, peak
        with throttle.slot("h", deadline=time.monotonic() + 10):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.01)
            with lock:
                active -= 1

    workers = [threading.Thread(target=request) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert peak == 1


def test_a_429_storm_still_completes(tmp_path, synthetic_site):
    """Every image answers 429 once: all are fetched, each retried exactly once."""
    workspace = url_workspace(tmp_path / "ws", photo_paths(20))
    plan = FaultPlan(status_429_first=1, retry_after_s=0)
    with LoopbackServer(synthetic_site, plan) as server:
        stats = fetch_images(
            workspace, mirror=server.url, client_policy=fast_policy(retries=3), workers=1
        )
        statuses = [status for _, _, status in server.request_log]
    assert stats.ok == 20
    assert statuses.count(429) == 20 and statuses.count(200) == 20


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_archive_members_read_in_one_pass(tmp_path):
    members = {f"train/{n:02d}/a.jpg": jpeg_bytes(n) for n in range(5)}
    tar = _tar_gz(tmp_path / "train.tar.gz", members)
    zip_path = tmp_path / "images.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    wanted = ["train/01/a.jpg", "train/03/a.jpg", "train/09/nope.jpg"]
    for path in (tar, zip_path):
        got = dict(iter_archive(path, wanted))
        assert got["train/01/a.jpg"].payload == members["train/01/a.jpg"]
        assert got["train/03/a.jpg"].payload == members["train/03/a.jpg"]
        assert (got["train/09/nope.jpg"].status, got["train/09/nope.jpg"].reason) == (
            "failed",
            "missing-member",
        )


def test_committed_unit_is_ingested_without_refetching(tmp_path, synthetic_site):
    """A crash after a unit's files were committed but before the catalog recorded them:
    the next run ingests the unit from disk and fetches none of its images again."""
    workspace = url_workspace(tmp_path / "ws", photo_paths(10))
    with LoopbackServer(synthetic_site) as server:
        config = FetchConfig(policy=fast_policy(), mirror=server.url, threads=4)
        with workspace.connect() as con:
            ensure_tables(con)
            assert plan_units(con, unit_size=10, workers=1) == 1
        (task,) = list(_tasks(workspace, [0], {}, config))
        result = run_unit(task)
        assert result.stats["ok"] == 10
        assert UnitPaths(workspace.root / "staging", 0).is_committed()
        fetched = len(server.request_log)
        stats = fetch_images(workspace, mirror=server.url, workers=1)
        assert len(server.request_log) == fetched  # nothing fetched twice
    assert stats.ok == 10 and stats.units == 1
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_limit_and_unit_size(tmp_path, synthetic_site):
    workspace = url_workspace(tmp_path / "ws", photo_paths(30))
    with LoopbackServer(synthetic_site) as server:
        first = fetch_images(workspace, mirror=server.url, workers=2, unit_size=4, limit=10)
        assert first.images == 10 and first.units == 3  # 4 + 4 + 2
        rest = fetch_images(workspace, mirror=server.url, workers=2, unit_size=100)
    assert rest.images == 20 and rest.units == 2  # 20 pending over 2 workers
    assert len(image_rows(workspace)) == 30
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_cli_fetch(tmp_path, synthetic_site):
    from treeoflife.cli import app

    workspace = url_workspace(tmp_path / "ws", photo_paths(8) + ["photos/missing.jpg"])
    with LoopbackServer(synthetic_site) as server:
        result = CliRunner().invoke(
            app,
            [
                "images",
                "fetch",
                "-w",
                str(workspace.root),
                "--mirror",
                server.url,
                "--workers",
                "1",
                "--retries",
                "1",
                "--resize",
                "keep-ratio",
                "--size",
                "64",
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    assert '"ok": 8' in result.output and '"failed:http-404": 1' in result.output
    sizes = {Image.open(io.BytesIO(p)).size for p in shard_members(workspace).values()}
    assert sizes == {(64, 48)}


def test_cli_reports_missing_workspace(tmp_path):
    from treeoflife.cli import app

    result = CliRunner().invoke(app, ["images", "fetch", "-w", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "no workspace" in result.output


@pytest.mark.parametrize("mode", ["center-crop", "bioclip", "none"])
def test_resize_modes_reach_the_shard(tmp_path, synthetic_site, mode):
    workspace = url_workspace(tmp_path / "ws", photo_paths(2))
    with LoopbackServer(synthetic_site) as server:
        fetch_images(workspace, ResizeSpec(mode=mode, size=32), mirror=server.url, workers=1)
    expected = (160, 120) if mode == "none" else (32, 32)
    sizes = {Image.open(io.BytesIO(p)).size for p in shard_members(workspace).values()}
    assert sizes == {expected}


def test_a_unit_that_keeps_crashing_is_given_up(tmp_path, synthetic_site):
    """Three crashed attempts: the unit's records are failed (worker-died), the stage can
    finish, and --retry-failed plans them again."""
    workspace = url_workspace(tmp_path / "ws", photo_paths(4))
    with workspace.connect() as con:
        ensure_tables(con)
        plan_units(con, unit_size=10, workers=1)
        crashes = [record_unit_failure(con, 0, RuntimeError("boom")) for _ in range(3)]
        units = con.execute("SELECT status, attempts, last_error FROM image_units").fetchall()
    assert crashes == [False, False, True]
    assert units == [("done", 3, "RuntimeError: boom")]
    assert {row[1:3] for row in image_rows(workspace)} == {("failed", "worker-died")}
    with LoopbackServer(synthetic_site) as server:
        again = fetch_images(workspace, mirror=server.url, retry_failed=True, workers=1)
    assert again.ok == 4
    assert_shards_hold_exactly_the_ok_rows(workspace)


def test_unavailable_archive_leaves_its_units_waiting(sample_workspace, sample_expected):
    """BIOSCAN's zips cannot be downloaded this time: URL and iNat21 units finish, the
    BIOSCAN units wait, and the next run (zips reachable) completes them."""
    broken = FaultPlan(status_5xx_first=10_000, paths="*.zip")
    with LoopbackServer(SAMPLE_FILES, broken) as server:
        first = fetch_images(
            sample_workspace, mirror=server.url, client_policy=fast_policy(retries=0), workers=2
        )
    assert first.units_waiting == 3 and len(first.problems) == 3
    assert all("bioscan" in problem for problem in first.problems)
    sources = {row[0].split(":", 1)[0] for row in image_rows(sample_workspace)}
    assert sources == {"inat21", "inat-open-data", "eol"}
    with LoopbackServer(SAMPLE_FILES) as server:
        second = fetch_images(sample_workspace, mirror=server.url, workers=2)
    assert second.units == 3 and second.units_waiting == 0
    with sample_workspace.connect() as con:
        records = con.execute("SELECT count(*) FROM record_images").fetchall()[0][0]
    assert len(image_rows(sample_workspace)) == records
    assert_shards_hold_exactly_the_ok_rows(sample_workspace)
