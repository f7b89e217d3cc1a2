"""Staging shards: one work unit's fetched images as `staging/unit-NNNNNN.tar`, plus its
per-record results (`.parquet`) and stats (`.stats.json`), each committed atomically.

Commit order is tar, then Parquet, then stats JSON: the stats file is the unit's "finished"
marker, so a unit whose stats file exists holds a complete shard and a complete result
table, and a unit without it is re-run from scratch (its temp files are overwritten).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"
WRITE_BUFFER = 1 << 20  # shard bytes gathered per write() call

# One row per record of the unit, whatever its outcome; the coordinator ingests these.
RESULT_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("status", pa.string()),  # ok | failed | skipped
        ("error", pa.string()),  # reason, e.g. http-404, truncated, robots-noai
        ("sha256", pa.string()),  # of the original bytes
        ("phash", pa.string()),  # 16 hex digits
        ("dhash", pa.string()),
        ("width", pa.int32()),  # original size
        ("height", pa.int32()),
        ("out_width", pa.int32()),  # size of the stored JPEG
        ("out_height", pa.int32()),
        ("bytes", pa.int64()),  # size of the original bytes
        ("shard", pa.string()),  # staging tar, relative to the workspace root
        ("member", pa.string()),  # member name inside that tar
        ("fetched_at", pa.timestamp("us", tz="UTC")),
        ("unit", pa.int64()),
    ]
)


@dataclass(frozen=True)
class UnitPaths:
    """Where one unit's outputs live, relative names included (the catalog stores those)."""

    staging_dir: Path
    unit: int

    @property
    def stem(self) -> str:
        return f"unit-{self.unit:06d}"

    @property
    def shard(self) -> Path:
        return self.staging_dir / f"{self.stem}.tar"

    @property
    def results(self) -> Path:
        return self.staging_dir / f"{self.stem}.parquet"

    @property
    def stats(self) -> Path:
        return self.staging_dir / f"{self.stem}.stats.json"

    def shard_relative(self) -> str:
        """The shard path as the `images.shard` column holds it (relative to the workspace)."""
        return f"{self.staging_dir.name}/{self.shard.name}"

    def is_committed(self) -> bool:
        return self.stats.exists() and self.results.exists() and self.shard.exists()

    def remove_temporaries(self) -> None:
        for path in (self.shard, self.results, self.stats):
            tmp_path(path).unlink(missing_ok=True)


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


class ShardWriter:
    """Appends `<key>.jpg` members to a tar under a temp name; `commit()` fsyncs and renames.

    The bytes are exactly `tarfile`'s (USTAR headers, 512-byte blocks, two zero blocks and
    padding to a 10 KiB record at the end), written as one buffered write per member: a
    tarfile member list and its per-member copies cost more than the header itself.
    Single-threaded by design: the unit's collector thread is the only writer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = tmp_path(path)
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self._tmp, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self._offset = 0
        self.members = 0

    def add(self, name: str, payload: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = int(mtime)
        info.mode = 0o644
        header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        padding = -len(payload) % tarfile.BLOCKSIZE
        self._handle.write(header)
        self._handle.write(payload)
        if padding:
            self._handle.write(bytes(padding))
        self._offset += len(header) + len(payload) + padding
        self.members += 1

    def _end_of_archive(self) -> None:
        """What `TarFile.close()` writes: two zero blocks, then zeros to a whole record."""
        end = bytes(tarfile.BLOCKSIZE * 2)
        self._offset += len(end)
        self._handle.write(end + bytes(-self._offset % tarfile.RECORDSIZE))

    def commit(self) -> Path:
        self._end_of_archive()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        fsync_folder(self.path.parent)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        self._tmp.unlink(missing_ok=True)


def write_results(path: Path, rows: list[dict]) -> Path:
    """Write the unit's result rows as Parquet (temp name, fsync, rename).

    The rows reach Arrow as JSON lines read against `RESULT_SCHEMA`: building arrays from
    Python objects makes pyarrow import pandas (~0.5 s in every worker); the table is the
    same as `pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)`.
    """
    table = _rows_table(rows)
    tmp = tmp_path(path)
    pq.write_table(table, tmp, compression="zstd")
    _fsync_file(tmp)
    os.replace(tmp, path)
    return path


def _rows_table(rows: list[dict]) -> pa.Table:
    if not rows:
        return RESULT_SCHEMA.empty_table()
    lines = "".join(json.dumps(row, default=_json_value) + "\n" for row in rows)
    options = pa_json.ParseOptions(explicit_schema=RESULT_SCHEMA, unexpected_field_behavior="error")
    return pa_json.read_json(io.BytesIO(lines.encode()), parse_options=options)


def _json_value(value: object) -> str:
    if isinstance(value, datetime):  # ISO 8601 with its offset: Arrow parses it to UTC
        return value.isoformat()
    raise TypeError(f"result value {value!r} is not JSON-serialisable")


def write_stats(path: Path, stats: dict) -> Path:
    """Write the unit's stats JSON last: its presence marks the unit's outputs complete."""
    tmp = tmp_path(path)
    tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_folder(path.parent)
    return path


def read_stats(path: Path) -> dict:
    return json.loads(path.read_text())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Persist renames in `folder` (POSIX); skipped where a folder cannot be opened."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
