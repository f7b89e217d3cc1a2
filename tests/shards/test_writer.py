"""Shard writing: the member layout, sizing, the licence policy, resume after a kill."""

from __future__ import annotations

import json
import tarfile

import pytest

from tests.shards.conftest import SMALL_SHARDS, copy_workspace
from treeoflife.errors import TolError
from treeoflife.shards import ShardOptions, parse_size, shard_release, text
from treeoflife.shards.licenses_policy import CATALOG_ONLY, EXCLUDE, HOST, LicensePolicy
from treeoflife.shards.verify import split_member


def _members(path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_every_sample_has_the_full_member_set_and_dotless_key(released_workspace):
    release = released_workspace.root / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["shards"], "no shards written"
    for shard in manifest["shards"]:
        names = _members(release / shard["path"])
        by_key: dict[str, list[str]] = {}
        for name in names:
            key, field = split_member(name)
            by_key.setdefault(key, []).append(field)
        assert len(by_key) == shard["samples"]
        for key, fields in by_key.items():
            assert "." not in key and len(key) == 36
            assert tuple(fields) == text.SAMPLE_MEMBERS, key
        with tarfile.open(release / shard["path"]) as tar:
            assert {m.mtime for m in tar.getmembers()} == {1_577_836_800}


def test_shard_count_size_and_sizes_json(released_workspace):
    release = released_workspace.root / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    for split, totals in manifest["splits"].items():
        sizes = json.loads((release / split / "sizes.json").read_text())
        assert sum(sizes.values()) == totals["samples"]
        assert len(sizes) == totals["shards"] >= min(SMALL_SHARDS.min_shards, totals["samples"])
        assert max(sizes.values()) <= SMALL_SHARDS.shard_samples
        assert max(sizes.values()) - min(sizes.values()) <= 1  # balanced
        assert sorted(sizes) == [f"shard-{n:06d}.tar" for n in range(len(sizes))]
    assert set(manifest["splits"]) == {"train", "val", "train_small"}


def test_licence_policy_excludes_and_catalogs_only(released_workspace):
    with released_workspace.connect(read_only=True) as con:
        by_license = dict(
            con.execute(
                "SELECT license, bool_or(hosted) FROM release_catalog GROUP BY 1"
            ).fetchall()
        )
        excluded_arr = con.execute(
            "SELECT count(*) FROM release_catalog WHERE license = 'arr'"
        ).fetchall()[0][0]
    assert excluded_arr == 0
    assert by_license["cc-by-nd-4.0"] is False and by_license["cc-by-nc-nd-4.0"] is False
    assert by_license["cc-by-4.0"] is True and by_license["cc0-1.0"] is True
    policy = LicensePolicy(catalog_only_sources=("inat21",))
    assert policy.action("cc-by-4.0", "inat21") == CATALOG_ONLY
    assert policy.action("cc-by-4.0", "eol") == HOST
    assert policy.action("unknown", "eol") == EXCLUDE
    assert policy.action("cc-by-nc-sa-3.0") == HOST
    assert policy.action("cc-by-nc-nd-4.0") == CATALOG_ONLY


def test_options_from_pipeline_and_sizes():
    options = ShardOptions.from_pipeline(
        {"val_fraction": 0.1, "shard_size": "500MB", "license_host": ["cc0-*"]}, seed=3
    )
    assert options.val_fraction == 0.1 and options.shard_bytes == 500_000_000
    assert options.seed == 3 and options.license_policy.host == ("cc0-*",)
    assert parse_size("1GB") == 10**9 and parse_size("3e9") == 3 * 10**9
    with pytest.raises(TolError, match="unknown keys"):
        ShardOptions.from_pipeline({"val_fractoin": 0.1})
    with pytest.raises(TolError, match="between 0 and 1"):
        ShardOptions(val_fraction=1.5).plan_options()


class Killed(Exception):
    pass


def test_killed_run_resumes_into_identical_release(released_workspace, staged_workspace, tmp_path):
    workspace = copy_workspace(staged_workspace, tmp_path / "ws")
    landed = []

    def die_after_three(result):
        landed.append(result.shard)
        if len(landed) == 3:
            raise Killed

    with pytest.raises(Killed):
        shard_release(workspace, SMALL_SHARDS, on_shard=die_after_three)
    release = workspace.root / "release"
    assert not (release / "manifest.json").exists()
    # A kill mid-write leaves a temp file behind; it must not survive or be shipped.
    stray = release / "train" / "shard-000005.tar.partial-999"
    stray.write_bytes(b"half a shard")
    stats = shard_release(workspace, SMALL_SHARDS)
    assert stats.shards_kept == 3
    assert not stray.exists()
    want = json.loads((released_workspace.root / "release" / "manifest.json").read_text())
    got = json.loads((release / "manifest.json").read_text())
    assert got == want
    # A further run rewrites nothing.
    again = shard_release(workspace, SMALL_SHARDS)
    assert again.shards_written == 0 and again.shards_kept == len(want["shards"])


def test_changed_options_rewrite_and_drop_stale_shards(released_workspace, tmp_path):
    workspace = copy_workspace(released_workspace, tmp_path / "ws")
    stats = shard_release(workspace, ShardOptions(min_shards=1, shard_samples=1000))
    release = workspace.root / "release"
    assert sorted(p.name for p in (release / "train").glob("*.tar")) == ["shard-000000.tar"]
    assert stats.splits["train"]["shards"] == 1
    assert stats.removed  # the old train/shard-000001.tar ... are gone


def test_missing_staging_member_is_named(released_workspace, tmp_path):
    workspace = copy_workspace(released_workspace, tmp_path / "ws")
    with workspace.connect() as con:
        record = con.execute(
            "UPDATE images SET member = 'nope.jpg' WHERE record_id = (SELECT min(record_id) "
            "FROM release_catalog WHERE hosted) RETURNING record_id"
        ).fetchall()[0][0]
    with pytest.raises(TolError, match=f"record {record}.*nope.jpg"):
        shard_release(workspace, SMALL_SHARDS)


def test_shard_refuses_before_images_stage(pulled_workspace, tmp_path):
    workspace = copy_workspace(pulled_workspace, tmp_path / "ws")
    with pytest.raises(TolError, match="taxa_resolved.*tol taxa resolve"):
        shard_release(workspace)


def test_fast_ustar_writer_is_byte_identical_to_tarfile(tmp_path):
    import io

    from treeoflife.shards.writer import TAR_MODE, TAR_MTIME, UstarWriter, scan_tar_headers

    members = [
        (f"{n:08x}-aaaa.{field}", bytes(range(256)) * n + b"x" * (n * 37))
        for n in range(40)
        for field in ("jpg", "sci.txt", "json")
    ]
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), TAR_MTIME, TAR_MODE
            info.uname = info.gname = "treeoflife"
            tar.addfile(info, io.BytesIO(payload))
    fast = io.BytesIO()
    writer = UstarWriter(fast)
    for name, payload in members:
        writer.add(name, payload)
    writer.close()
    assert fast.getvalue() == reference.getvalue()
    path = tmp_path / "t.tar"
    path.write_bytes(fast.getvalue())
    with tarfile.open(path) as tar:
        want = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
    assert list(scan_tar_headers(path)) == want


@pytest.mark.slow
def test_sigkilled_tol_shard_resumes_into_identical_release(staged_workspace, tmp_path):
    """A real `tol shard` process killed with SIGKILL mid-write, then run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--shard-samples", "3", "--min-shards", "1", "--workers", "1", "--pipeline", "sample"]
    whole = copy_workspace(staged_workspace, tmp_path / "whole")
    command = [sys.executable, "-m", "treeoflife", "shard", *args]
    subprocess.run([*command, "-w", str(whole.root)], check=True, capture_output=True)
    killed = copy_workspace(staged_workspace, tmp_path / "killed")
    process = subprocess.Popen(
        [*command, "-w", str(killed.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    train = killed.root / "release" / "train"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(train.glob("shard-*.tar"))) < 10:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed.root / "release" / "manifest.json").exists(), "run finished before kill"
    subprocess.run([*command, "-w", str(killed.root)], check=True, capture_output=True)
    want = json.loads((whole.root / "release" / "manifest.json").read_text())
    got = json.loads((killed.root / "release" / "manifest.json").read_text())
    assert got == want
    assert not list((killed.root / "release").rglob("*.partial-*"))
