"""`tol verify` passes a sound release and names the shard and sample of each planted fault."""

from __future__ import annotations

import io
import json
import tarfile

from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.shards.verify import verify_release


def _first_shard(release) -> str:
    return json.loads((release / "manifest.json").read_text())["shards"][0]["path"]


def _jpeg_offset(path) -> tuple[str, int, int]:
    """(key, data offset, size) of the first sample's jpg member."""
    with tarfile.open(path) as tar:
        info = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        return info.name.split(".", 1)[0], info.offset_data, info.size


def test_sound_release_verifies_serial_and_parallel(release_copy):
    for workers in (1, 2):
        report = verify_release(release_copy, workers=workers)
        assert report.ok, report.problems[:3]
        manifest = json.loads((release_copy / "manifest.json").read_text())
        assert report.shards == len(manifest["shards"])
        assert report.samples == sum(s["samples"] for s in manifest["shards"])


def test_flipped_byte_names_shard_and_sample(release_copy):
    shard = _first_shard(release_copy)
    path = release_copy / shard
    key, offset, size = _jpeg_offset(path)
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_release(release_copy)
    assert not report.ok
    named = {(p.shard, p.sample) for p in report.problems}
    assert (shard, key) in named
    assert any(
        p.shard == shard and "sha256 differs from manifest" in p.problem for p in report.problems
    )


def test_truncated_shard_is_named(release_copy):
    shard = _first_shard(release_copy)
    path = release_copy / shard
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    report = verify_release(release_copy)
    problems = [p for p in report.problems if p.shard == shard]
    assert problems and any(
        "unreadable" in p.problem or "not in the tar" in p.problem for p in problems
    )
    assert any(p.sample for p in problems)


def test_missing_member_is_named(release_copy):
    shard = _first_shard(release_copy)
    path = release_copy / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m for m, _ in members if m.name.endswith(".sci_com.txt"))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            if info is not dropped:
                tar.addfile(info, io.BytesIO(payload))
    report = verify_release(release_copy)
    key = dropped.name.split(".", 1)[0]
    assert any(
        p.shard == shard and p.sample == key and "missing member(s) sci_com.txt" in p.problem
        for p in report.problems
    )


def test_edited_caption_is_caught(release_copy):
    shard = _first_shard(release_copy)
    path = release_copy / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            if info.name.endswith(".com.txt") and b"edited" not in payload:
                payload = b"a photo of an edited caption."
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    report = verify_release(release_copy)
    assert any("com.txt is 'a photo of an edited caption.'" in p.problem for p in report.problems)


def test_cli_exits_nonzero_naming_the_bad_shard(release_copy):
    shard = _first_shard(release_copy)
    path = release_copy / shard
    key, offset, _ = _jpeg_offset(path)
    data = bytearray(path.read_bytes())
    data[offset + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", str(release_copy), "--workers", "1"])
    assert result.exit_code == 1
    assert shard in result.output and key in result.output
    ok = CliRunner().invoke(app, ["verify", str(release_copy.parent / "nothing")])
    assert ok.exit_code == 1 and "is missing" in " ".join(ok.output.split())
