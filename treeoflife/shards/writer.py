"""Release shard writing: one shard is one unit, written to a temp name and renamed, then
recorded in `release_shards`; a killed run resumes into byte-identical shards.

Units run in worker processes that never open the catalog: each reads its rows from a
Parquet file the coordinator wrote and returns (samples, bytes, sha256, image digests).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from treeoflife.errors import TolError
from treeoflife.shards import text
from treeoflife.shards.catalog import SOURCE_ID_FIELDS, unit_fingerprints_sql

WRITER_VERSION = "treeoflife-shard-writer/1"
TAR_MTIME = 1_577_836_800  # 2020-01-01: fixed, so equal inputs give byte-identical tars
TAR_MODE = 0o444
JPEG_MAGIC = b"\xff\xd8\xff"
TMP_MARK = ".partial-"

# Columns a unit needs, in this order (also what its fingerprint covers).
UNIT_COLUMNS = (
    "pos",
    "treeoflife_id",
    "record_id",
    "source",
    "source_id",
    "source_url",
    "license",
    "license_raw",
    "rights_holder",
    "source_scientific_name",
    "source_common_name",
    *text.RANKS,
    "common_raw",
    "resolution_method",
    "authority",
    "authority_taxon_id",
    "resolution_status",
    "sha256",
    "phash",
    "width",
    "height",
    *SOURCE_ID_FIELDS,
    "staging_shard",
    "staging_offset",
    "staging_size",
)

SHARD_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS release_shards (
    shard VARCHAR PRIMARY KEY, split VARCHAR, shard_index INTEGER, fingerprint VARCHAR,
    samples INTEGER, bytes BIGINT, sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS release_shard_samples (
    shard VARCHAR, treeoflife_id VARCHAR, jpg_sha256 VARCHAR, jpg_bytes BIGINT
);
"""


@dataclass(frozen=True)
class ShardUnit:
    """One shard to write: its rows (a Parquet file) and where it goes."""

    shard: str  # relative to the release folder: 'train/shard-000000.tar'
    split: str
    shard_index: int
    fingerprint: str
    rows_path: Path
    release_dir: Path
    workspace_root: Path


@dataclass
class ShardResult:
    shard: str
    split: str
    shard_index: int
    fingerprint: str
    samples: int
    bytes: int
    sha256: str
    images: list[tuple[str, str, int]] = field(default_factory=list)  # (id, sha256, bytes)


class _HashingWriter(io.RawIOBase):
    """A write-only file that digests and counts what passes through it."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self._handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records, as tarfile does


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


class UstarWriter:
    """Writes the exact bytes `tarfile` writes in USTAR format for regular files with a
    fixed mtime/mode/owner, at a fraction of its cost (the header is built once; only the
    name, size and checksum change). A test pins byte equality with `tarfile`."""

    def __init__(
        self, sink, mtime: int = TAR_MTIME, mode: int = TAR_MODE, owner: str = "treeoflife"
    ):
        self._sink = sink
        self._offset = 0
        owner_field = owner.encode().ljust(32, b"\0")
        self._mode_to_size = _octal(mode, 8) + _octal(0, 8) + _octal(0, 8)
        self._after_size = _octal(mtime, 12)
        self._after_chksum = (
            b"0"
            + b"\0" * 100
            + b"ustar\x00"
            + b"00"
            + owner_field
            + owner_field
            + b"\0" * 16  # devmajor, devminor: empty for regular files, as tarfile writes
            + b"\0" * 155
            + b"\0" * 12
        )
        self._fixed_sum = sum(self._mode_to_size) + sum(self._after_size) + 8 * 32
        self._fixed_sum += sum(self._after_chksum)

    def add(self, name: str, payload: bytes) -> None:
        raw_name = name.encode("utf-8")
        if len(raw_name) > 100:
            raise TolError(f"tar member name {name!r} is longer than 100 bytes")
        name_field = raw_name.ljust(100, b"\0")
        size_field = _octal(len(payload), 12)
        checksum = self._fixed_sum + sum(raw_name) + sum(size_field)
        header = b"".join(
            (
                name_field,
                self._mode_to_size,
                size_field,
                self._after_size,
                b"%06o\0 " % checksum,
                self._after_chksum,
            )
        )
        padding = (-len(payload)) % BLOCK
        self._sink.write(header + payload + b"\0" * padding)
        self._offset += BLOCK + len(payload) + padding

    def close(self) -> None:
        """End-of-archive blocks, then pad to a whole record (as tarfile.close does)."""
        tail = 2 * BLOCK
        remainder = (self._offset + tail) % RECORD
        self._sink.write(b"\0" * (tail + (RECORD - remainder if remainder else 0)))


def scan_tar_headers(path: Path) -> Iterator[tuple[str, int, int]]:
    """(member name, data offset, size) of each regular file of an uncompressed tar, by
    seeking from header to header; falls back to tarfile for pax/GNU extended headers."""
    with path.open("rb") as handle:
        offset = 0
        while True:
            handle.seek(offset)
            header = handle.read(BLOCK)
            if len(header) < BLOCK or header == b"\0" * BLOCK:
                return
            kind = header[156:157]
            if kind not in (b"0", b"\0") or header[257:262] != b"ustar":
                break
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            yield (f"{prefix}/{name}" if prefix else name), offset + BLOCK, size
            offset += BLOCK + size + (-size) % BLOCK
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if info.isfile() and info.offset >= offset:
                yield info.name, info.offset_data, info.size


def index_staging_tars(
    con: duckdb.DuckDBPyConnection, workspace_root: Path, shards: Iterable[str]
) -> None:
    """Temp table `staging_index(shard, member, offset_data, size)` from tar headers only
    (no image bytes are read), so units can seek straight to each image."""
    rows = []
    for shard in shards:
        path = workspace_root / shard
        if not path.is_file():
            raise TolError(
                f"staging shard {path} (named in table images) is missing; "
                "re-run `tol images fetch` to rebuild it"
            )
        try:
            with tarfile.open(path, mode="r:") as tar:
                rows.extend(
                    (shard, info.name, info.offset_data, info.size) for info in tar if info.isfile()
                )
        except tarfile.TarError as exc:
            raise TolError(
                f"staging shard {path} is not a readable tar ({exc}); "
                "re-run `tol images fetch` to rebuild it"
            ) from None
    con.execute(
        "CREATE OR REPLACE TEMP TABLE staging_index "
        "(shard VARCHAR, member VARCHAR, offset_data BIGINT, size BIGINT)"
    )
    if rows:
        table = pa.table(
            {
                "shard": [r[0] for r in rows],
                "member": [r[1] for r in rows],
                "offset_data": [r[2] for r in rows],
                "size": [r[3] for r in rows],
            }
        )
        con.register("staging_index_arrow", table)
        con.execute("INSERT INTO staging_index SELECT * FROM staging_index_arrow")
        con.unregister("staging_index_arrow")


def sample_record(row: dict) -> dict:
    """The `<id>.json` member: the full record with its provenance (sorted keys)."""
    return {
        "treeoflife_id": row["treeoflife_id"],
        "record_id": row["record_id"],
        "source": row["source"],
        "source_id": row["source_id"],
        "source_ids": {key: row[key] for key in SOURCE_ID_FIELDS if row.get(key) is not None},
        "source_url": row["source_url"],
        "license": row["license"],
        "license_raw": row["license_raw"],
        "rights_holder": row["rights_holder"],
        "taxonomy": {rank: row[rank] for rank in text.RANKS},
        "common": text.common_name(row, row["common_raw"]),
        "source_names": {
            "scientific_name": row["source_scientific_name"],
            "common_name": row["source_common_name"],
        },
        "resolution": {
            "status": row["resolution_status"],
            "method": row["resolution_method"],
            "authority": row["authority"],
            "authority_taxon_id": row["authority_taxon_id"],
        },
        "image": {
            "sha256_original": row["sha256"],
            "phash": row["phash"],
            "width": row["width"],
            "height": row["height"],
        },
    }


def sample_members(row: dict, image_bytes: bytes) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one sample, always the same member set in the same order."""
    key = row["treeoflife_id"]
    if "." in key or "/" in key or not key:
        raise TolError(
            f"record {row['record_id']}: sample key {key!r} contains a dot or slash; "
            "webdataset cuts keys at the first dot and would merge samples"
        )
    texts = text.sample_texts(row, row["common_raw"])
    members = [(f"{key}.jpg", image_bytes)]
    members += [(f"{key}.{name}", texts[name].encode("utf-8")) for name in text.TEXT_MEMBERS]
    record = json.dumps(sample_record(row), sort_keys=True, ensure_ascii=False)
    members.append((f"{key}.json", record.encode("utf-8")))
    return members


def _as_jpeg(data: bytes, where: str) -> bytes:
    """Staged images are JPEG already; anything else is re-encoded once, deterministically."""
    if data.startswith(JPEG_MAGIC):
        return data
    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
    except OSError as exc:
        raise TolError(f"{where}: staged image does not decode ({exc})") from None


def _read_staged(row: dict, workspace_root: Path, handles: dict[str, BinaryIO]) -> bytes:
    """One record's staged JPEG bytes, by offset (staging tars stay open per unit)."""
    staging = row["staging_shard"]
    if staging not in handles:
        handles[staging] = (workspace_root / staging).open("rb")
    handle = handles[staging]
    handle.seek(row["staging_offset"])
    data = handle.read(row["staging_size"])
    if len(data) != row["staging_size"]:
        raise TolError(
            f"staging shard {staging}: the image of {row['record_id']} is truncated; "
            "re-run `tol images fetch`"
        )
    return _as_jpeg(data, f"{staging} ({row['record_id']})")


def write_unit(unit: ShardUnit) -> ShardResult:
    """Write one shard atomically: temp name, fsync, rename. Safe to run in a worker."""
    rows = pq.read_table(unit.rows_path).sort_by("pos").to_pylist()
    target = unit.release_dir / unit.shard
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}{TMP_MARK}{os.getpid()}")
    images: list[tuple[str, str, int]] = []
    handles: dict[str, BinaryIO] = {}
    try:
        with partial.open("wb") as raw:
            sink = _HashingWriter(raw)
            tar = UstarWriter(sink)
            for row in rows:
                data = _read_staged(row, unit.workspace_root, handles)
                images.append((row["treeoflife_id"], hashlib.sha256(data).hexdigest(), len(data)))
                for name, payload in sample_members(row, data):
                    tar.add(name, payload)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(target)
    finally:
        for handle in handles.values():
            handle.close()
        partial.unlink(missing_ok=True)
    return ShardResult(
        shard=unit.shard,
        split=unit.split,
        shard_index=unit.shard_index,
        fingerprint=unit.fingerprint,
        samples=len(rows),
        bytes=sink.size,
        sha256=sink.digest.hexdigest(),
        images=images,
    )


def record_result(con: duckdb.DuckDBPyConnection, result: ShardResult) -> None:
    """Mark one shard done (and its image digests) in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM release_shards WHERE shard = ?", [result.shard])
        con.execute("DELETE FROM release_shard_samples WHERE shard = ?", [result.shard])
        con.execute(
            "INSERT INTO release_shards VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                result.shard,
                result.split,
                result.shard_index,
                result.fingerprint,
                result.samples,
                result.bytes,
                result.sha256,
            ],
        )
        if result.images:
            table = pa.table(
                {
                    "shard": [result.shard] * len(result.images),
                    "treeoflife_id": [i[0] for i in result.images],
                    "jpg_sha256": [i[1] for i in result.images],
                    "jpg_bytes": [i[2] for i in result.images],
                }
            )
            con.register("shard_samples_arrow", table)
            con.execute("INSERT INTO release_shard_samples SELECT * FROM shard_samples_arrow")
            con.unregister("shard_samples_arrow")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def pending_units(
    con: duckdb.DuckDBPyConnection, release_dir: Path, workspace_root: Path, units_dir: Path
) -> tuple[list[ShardUnit], int]:
    """The planned shards not already written with the same fingerprint; exports their rows
    as Parquet (one file per shard). Returns (units to write, shards kept as they are)."""
    con.execute(SHARD_TABLES_SQL)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE planned_units AS "
        + unit_fingerprints_sql(UNIT_COLUMNS, WRITER_VERSION)
    )
    # Forget shards that are no longer planned, or planned differently.
    con.execute(
        "DELETE FROM release_shard_samples WHERE shard NOT IN (SELECT s.shard FROM "
        "release_shards s JOIN planned_units p USING (shard, fingerprint))"
    )
    con.execute(
        "DELETE FROM release_shards WHERE shard NOT IN (SELECT shard FROM release_shards s "
        "JOIN planned_units p USING (shard, fingerprint))"
    )
    done = {
        shard: size
        for shard, size in con.execute("SELECT shard, bytes FROM release_shards").fetchall()
    }
    units, kept = [], 0
    todo = []
    for split, shard_index, shard, _samples, fingerprint in con.execute(
        "SELECT split, shard_index, shard, samples, fingerprint FROM planned_units"
    ).fetchall():
        path = release_dir / shard
        if shard in done and path.is_file() and path.stat().st_size == done[shard]:
            kept += 1
            continue
        todo.append((split, shard_index, shard, fingerprint))
    if todo:
        units_dir.mkdir(parents=True, exist_ok=True)
        columns = ", ".join(f'"{c}"' for c in UNIT_COLUMNS)
        con.execute("CREATE OR REPLACE TEMP TABLE todo_units (split VARCHAR, shard_index INTEGER)")
        con.executemany("INSERT INTO todo_units VALUES (?, ?)", [(t[0], t[1]) for t in todo])
        target = str(units_dir).replace("'", "''")
        con.execute(
            f"""COPY (SELECT split, shard_index, {columns} FROM release_catalog
                      JOIN todo_units USING (split, shard_index) WHERE hosted)
                TO '{target}' (FORMAT parquet, PARTITION_BY (split, shard_index),
                               OVERWRITE_OR_IGNORE true)"""
        )
        for split, shard_index, shard, fingerprint in todo:
            units.append(
                ShardUnit(
                    shard=shard,
                    split=split,
                    shard_index=shard_index,
                    fingerprint=fingerprint,
                    rows_path=units_dir / f"split={split}" / f"shard_index={shard_index}",
                    release_dir=release_dir,
                    workspace_root=workspace_root,
                )
            )
    return units, kept


def run_units(
    con: duckdb.DuckDBPyConnection,
    units: list[ShardUnit],
    workers: int,
    on_done: Callable[[ShardResult], None] | None = None,
) -> list[ShardResult]:
    """Write units (in `workers` processes, or inline for 1), recording each as it lands.

    An exception from `on_done` (or Ctrl-C) stops the run; finished shards stay recorded,
    so the next run writes only the rest.
    """
    results: list[ShardResult] = []

    def land(result: ShardResult) -> None:
        record_result(con, result)
        results.append(result)
        if on_done is not None:
            on_done(result)

    if workers <= 1 or len(units) <= 1:
        for unit in units:
            land(write_unit(unit))
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(write_unit, unit) for unit in units}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    land(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def remove_strays(release_dir: Path, planned: set[str], splits: Iterable[str]) -> list[str]:
    """Delete shard files and temp files in the split folders that the plan does not name."""
    removed = []
    for split in splits:
        folder = release_dir / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            rel = f"{split}/{path.name}"
            is_shard = path.name.startswith("shard-") and ".tar" in path.name
            if (is_shard and rel not in planned) or TMP_MARK in path.name:
                path.unlink()
                removed.append(rel)
    return removed
