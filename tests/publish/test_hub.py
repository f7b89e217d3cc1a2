"""Publishing without the internet: the dry run's exact file set and card, and the upload
planning (what is missing, in which batches) as a pure function of two listings."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.publish.hub import (
    LocalFile,
    RemoteFile,
    check_hub_limits,
    list_local,
    plan_upload,
    publish_release,
    same_file,
)


def _expected_files(release) -> set[str]:
    manifest = json.loads((release / "manifest.json").read_text())
    files = {s["path"] for s in manifest["shards"]}
    files |= set(manifest["files"])
    files |= {"manifest.json", "README.md"}
    for split in manifest["splits"]:
        files |= {f"{split}/sizes.json", f"{split}/wids.json"}
    return files


def test_dry_run_lists_exactly_the_release_and_the_card(release_copy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (release_copy / ".catalog.csv.partial").write_text("left over")  # never uploaded
    plan = publish_release(release_copy, "someone/treeoflife-sample", dry_run=True)
    assert {f.path for f in plan.files} == _expected_files(release_copy)
    assert {f.path for f in plan.upload} == _expected_files(release_copy)
    assert plan.unchanged == [] and not plan.remote_checked
    assert plan.batches[-2:] == [["manifest.json"], ["README.md"]]
    assert all(p.endswith(".tar") for p in plan.batches[0][:10])
    assert plan.card == (release_copy / "README.md").read_text()
    manifest = json.loads((release_copy / "manifest.json").read_text())
    by_path = {f.path: f for f in plan.files}
    for shard in manifest["shards"]:
        assert by_path[shard["path"]].sha256 == shard["sha256"]


def test_dry_run_cli_prints_files_and_card(release_copy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        app, ["publish", str(release_copy), "--repo-id", "someone/tol", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "upload train/shard-000000.tar" in result.output
    assert "config_name: train_small" in result.output and "# TreeOfLife" in result.output


def test_real_publish_needs_a_token_and_never_prints_one(release_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(TolError, match="no Hugging Face token"):
        publish_release(release_copy, "someone/tol", dry_run=False)
    with pytest.raises(TolError, match="ORG/NAME"):
        publish_release(release_copy, "no-slash", dry_run=True)


def _local(n_shards: int = 5) -> list[LocalFile]:
    files = [LocalFile(f"train/shard-{i:06d}.tar", 1000 + i, f"{i:064x}") for i in range(n_shards)]
    files += [
        LocalFile("catalog.csv", 10, "c" * 64, "1" * 40),
        LocalFile("manifest.json", 5, "m" * 64, "2" * 40),
        LocalFile("README.md", 7, "r" * 64, "3" * 40),
    ]
    return files


def test_plan_uploads_only_what_is_missing_or_different():
    local = _local()
    remote = {
        # Uploaded before the interruption, same bytes (LFS/Xet: sha256).
        "train/shard-000000.tar": RemoteFile("train/shard-000000.tar", 1000, sha256=f"{0:064x}"),
        "train/shard-000001.tar": RemoteFile("train/shard-000001.tar", 1001, sha256=f"{1:064x}"),
        # Same path, other bytes: re-upload.
        "train/shard-000002.tar": RemoteFile("train/shard-000002.tar", 1002, sha256="f" * 64),
        # Small files live in git: compared by blob id.
        "catalog.csv": RemoteFile("catalog.csv", 10, blob_id="1" * 40),
        "manifest.json": RemoteFile("manifest.json", 5, blob_id="9" * 40),
        "old.txt": RemoteFile("old.txt", 1, blob_id="0" * 40),
    }
    upload, unchanged, batches = plan_upload(local, remote, batch_files=2)
    assert [f.path for f in upload] == [
        "train/shard-000002.tar",
        "train/shard-000003.tar",
        "train/shard-000004.tar",
        "manifest.json",
        "README.md",
    ]
    assert unchanged == ["catalog.csv", "train/shard-000000.tar", "train/shard-000001.tar"]
    assert batches == [
        ["train/shard-000002.tar", "train/shard-000003.tar"],
        ["train/shard-000004.tar"],
        ["manifest.json"],
        ["README.md"],
    ]
    # After everything landed, a re-run plans nothing.
    everything = {
        f.path: RemoteFile(
            f.path, f.size, sha256=f.sha256 if f.path.endswith(".tar") else None, blob_id=f.git_sha1
        )
        for f in local
    }
    assert plan_upload(local, everything) == ([], sorted(f.path for f in local), [])


def test_batches_respect_byte_budget_and_size_mismatch_reuploads():
    local = [LocalFile(f"train/shard-{i:06d}.tar", 600, f"{i:064x}") for i in range(4)]
    _, _, batches = plan_upload(local, {}, batch_files=100, batch_bytes=1000)
    assert [len(b) for b in batches] == [1, 1, 1, 1]
    _, _, batches = plan_upload(local, {}, batch_files=100, batch_bytes=1200)
    assert [len(b) for b in batches] == [2, 2]
    assert not same_file(local[0], RemoteFile(local[0].path, 599, sha256=local[0].sha256))


def test_hub_limits_are_enforced():
    crowded = [LocalFile(f"train/shard-{i:06d}.tar", 1, "0" * 64) for i in range(10_000)]
    with pytest.raises(TolError, match="folder train has 10000 entries"):
        check_hub_limits(crowded)
    check_hub_limits(crowded[:9_999])
    with pytest.raises(TolError, match="GB"):
        check_hub_limits([LocalFile("train/shard-000000.tar", 60 * 10**9, "0" * 64)])


def test_list_local_skips_hidden_and_partial_files(release_copy):
    (release_copy / "train" / "shard-000099.tar.partial-12").write_bytes(b"x")
    (release_copy / ".cache").mkdir()
    (release_copy / ".cache" / "state").write_text("x")
    paths = {f.path for f in list_local(release_copy)}
    assert paths == _expected_files(release_copy)
