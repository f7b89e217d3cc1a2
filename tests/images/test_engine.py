"""Engines run the same unit function: a local process pool (crashes contained) and a real
local Ray; and a real `kill -9` of `tol images fetch` mid-unit loses and doubles nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.images.conftest import (
    SYNTHETIC_COUNT,
    fast_policy,
    image_rows,
    photo_paths,
    shard_members,
    url_workspace,
)
from treeoflife.engine import open_engine, report_progress
from treeoflife.errors import TolError
from treeoflife.images.fetch import fetch_images
from treeoflife.loopback import FaultPlan, LoopbackServer

REPO = Path(__file__).resolve().parents[2]


def square(number: int) -> int:
    report_progress((number, {"ok": number}))
    time.sleep(0.2)  # the queue's feeder thread sends it while the task still runs
    if number == 3:
        raise ValueError("unit 3 fails")
    return number * number


def die(number: int) -> int:
    if number == 0:
        os._exit(13)  # a worker killed under the pool (OOM killer, decoder segfault)
    time.sleep(0.2)
    return number


def test_local_engine_runs_every_task_and_reports_progress():
    messages = []
    with open_engine("local", workers=2) as engine:
        outcomes = list(engine.run(square, range(6), messages.extend))
    results = {o.task: o.result for o in outcomes if o.error is None}
    errors = {o.task: o.error for o in outcomes if o.error is not None}
    assert results == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert list(errors) == [3] and "unit 3 fails" in str(errors[3])
    assert sorted(unit for unit, _ in messages) == list(range(6))


def test_local_engine_survives_a_dead_worker():
    with open_engine("local", workers=1) as engine:
        outcomes = list(engine.run(die, range(4)))
    assert len(outcomes) == 4
    failed = [o.task for o in outcomes if o.error is not None]
    assert failed == [0]  # only the unit the dead worker held
    assert sorted(o.result for o in outcomes if o.error is None) == [1, 2, 3]


def test_unknown_engine_is_refused():
    with pytest.raises(TolError, match="unknown engine"):
        with open_engine("spark", workers=1):
            pass


def finished(workspace) -> set[tuple]:
    """What a run produced, independent of unit numbering and timing."""
    return {
        (row[0], row[1], row[2], row[3], row[4], row[5], row[6]) for row in image_rows(workspace)
    }


def assert_consistent(workspace) -> None:
    rows = image_rows(workspace)
    assert len({row[0] for row in rows}) == len(rows)  # nothing doubled
    members = shard_members(workspace)
    assert set(members) == {(row[7], row[8]) for row in rows if row[1] == "ok"}
    staging = workspace.root / "staging"
    assert not list(staging.glob("*.tmp"))  # no half-written file left behind
    with workspace.connect() as con:
        states = con.execute("SELECT DISTINCT status FROM image_units").fetchall()
    assert states == [("done",)]


@pytest.mark.slow
def test_ray_engine_matches_local(tmp_path, synthetic_site):
    """The same unit function on a real local Ray instance gives the same images."""
    paths = photo_paths(20) + ["photos/missing.jpg"]
    local = url_workspace(tmp_path / "local", paths)
    on_ray = url_workspace(tmp_path / "ray", paths)
    with LoopbackServer(synthetic_site) as server:
        fetch_images(local, mirror=server.url, client_policy=fast_policy(), workers=1)
        progress = []
        stats = fetch_images(
            on_ray,
            mirror=server.url,
            client_policy=fast_policy(),
            engine="ray",
            workers=1,
            unit_size=7,
            progress=lambda live: progress.append(live.completed()),
        )
    assert stats.units == 3 and stats.ok == 20 and stats.reasons == {"failed:http-404": 1}
    assert finished(on_ray) == finished(local)
    assert progress and progress[-1] == 21
    assert_consistent(on_ray)


def _fetch_command(workspace, mirror: str) -> list[str]:
    return [
        sys.executable, "-m", "treeoflife", "images", "fetch",
        "-w", str(workspace.root), "--mirror", mirror,
        "--workers", "1", "--threads", "2", "--unit-size", "10", "--retries", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_kill_9_mid_unit_then_resume(tmp_path, synthetic_site):
    """SIGKILL the coordinator while a unit is half written; the resumed run ends with
    exactly the images an uninterrupted run has, each once, shards matching the catalog."""
    paths = photo_paths(SYNTHETIC_COUNT) + ["photos/missing.jpg"]
    reference = url_workspace(tmp_path / "reference", paths)
    killed = url_workspace(tmp_path / "killed", paths)
    with LoopbackServer(synthetic_site) as server:
        fetch_images(reference, mirror=server.url, client_policy=fast_policy(), workers=1)
    staging = killed.root / "staging"
    # Slow bodies (~0.2 s an image, 2 threads): a unit of 10 takes about a second.
    with LoopbackServer(synthetic_site, FaultPlan(slow_bytes_per_s=25_000)) as slow:
        process = subprocess.Popen(
            _fetch_command(killed, slow.url),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            committed = list(staging.glob("unit-*.stats.json"))
            writing = list(staging.glob("unit-*.tar.tmp"))
            if len(committed) >= 2 and writing:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        stderr = process.stderr.read().decode()
    assert process.returncode == -signal.SIGKILL, stderr
    assert list(staging.glob("unit-*.tar.tmp")), "the kill should land mid-unit"
    with LoopbackServer(synthetic_site) as server:
        resumed = subprocess.run(
            _fetch_command(killed, server.url), cwd=REPO, capture_output=True, timeout=300
        )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert finished(killed) == finished(reference)
    assert len(finished(killed)) == len(paths)
    assert_consistent(killed)
