"""`tol verify`: re-read every shard of a release and compare it with the manifest and the
catalog: tar integrity, the member set, image decoding, caption text, sha256 digests.

One hashing read per shard, then the tar parsed in place from an mmap (page-cache hot),
shards in parallel; the catalog is streamed in shard order so memory stays bounded by the
shards in flight.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import duckdb
from PIL import Image

from treeoflife.errors import TolError
from treeoflife.shards import text
from treeoflife.shards.catalog import file_digest

EXPECTED_FIELDS = frozenset(text.SAMPLE_MEMBERS)


@dataclass(frozen=True)
class VerifyProblem:
    """One thing wrong: the shard (or file), the sample key if one is to blame, and what."""

    shard: str
    sample: str | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.shard} sample {self.sample}" if self.sample else self.shard
        return f"{where}: {self.problem}"


@dataclass
class VerifyReport:
    release_dir: Path
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        rate = self.bytes / 1e6 / self.seconds if self.seconds else 0.0
        head = (
            f"verified {self.shards} shards, {self.samples} samples, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.0f} MB/s)"
        )
        if self.ok:
            return f"{head}: all good"
        return f"{head}: {len(self.problems)} problems, first: {self.problems[0]}"


@dataclass(frozen=True)
class ShardTask:
    """One shard to check: where it is, what the manifest says, what the catalog expects."""

    shard: str
    path: Path
    sha256: str
    size: int
    samples: int
    expected: dict[str, dict]  # treeoflife_id -> {ranks..., common, jpg_sha256}


@dataclass
class ShardCheck:
    shard: str
    samples: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[VerifyProblem] = field(default_factory=list)


class TarDamage(Exception):
    """The tar structure itself is broken (bad header checksum, truncated data)."""


ZERO_BLOCK = b"\0" * 512


def iter_ustar(buffer) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of a USTAR archive held in `buffer` (bytes or an mmap),
    checking every header checksum; release shards hold regular files only, so anything
    else is damage. Headers are parsed in place: no per-member read calls."""
    end, offset = len(buffer), 0
    while True:
        header = buffer[offset : offset + 512]
        if not header:
            raise TarDamage("unexpected end of file: no end-of-archive blocks")
        if len(header) < 512:
            raise TarDamage(f"unexpected end of file in a header ({len(header)} of 512 bytes)")
        if header == ZERO_BLOCK:
            return
        try:
            stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"-1", 8)
        except ValueError:
            raise TarDamage("header has non-octal size or checksum fields") from None
        if stored != sum(header) - sum(header[148:156]) + 256:
            raise TarDamage("header checksum mismatch")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[156:157] not in (b"0", b"\0") or size < 0:
            raise TarDamage(f"member {name!r} is not a regular file")
        start = offset + 512
        if start + size > end:
            raise TarDamage(
                f"unexpected end of file in member {name!r} ({end - start} of {size} bytes)"
            )
        yield (f"{prefix}/{name}" if prefix else name), buffer[start : start + size]
        offset = start + size + (-size) % 512


def split_member(name: str) -> tuple[str, str]:
    """(key, field) the way webdataset cuts names: the key ends at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    key, dot, field_name = base.partition(".")
    return (f"{folder}/{key}" if folder else key), (field_name if dot else "")


def _check_sample(key: str, members: dict[str, bytes], expected: dict | None) -> list[str]:
    """What is wrong with one sample (empty when nothing)."""
    problems = []
    fields = set(members)
    if fields != EXPECTED_FIELDS:
        missing = sorted(EXPECTED_FIELDS - fields)
        extra = sorted(fields - EXPECTED_FIELDS)
        if missing:
            problems.append(f"missing member(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected member(s) {', '.join(extra)}")
    if expected is None:
        problems.append("not in catalog.parquet for this shard")
        return problems
    image = members.get("jpg")
    if image is not None:
        if (
            expected.get("jpg_sha256")
            and hashlib.sha256(image).hexdigest() != expected["jpg_sha256"]
        ):
            problems.append("jpg sha256 differs from catalog.parquet jpg_sha256")
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                # 1/8-scale DCT decoding still reads every entropy-coded block, so truncated
                # or corrupt scans fail, at a third less cost than a full decode.
                decoded.draft("RGB", (max(decoded.width // 8, 1), max(decoded.height // 8, 1)))
                decoded.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
            problems.append(f"jpg does not decode ({exc})")
    texts = text.sample_texts(expected, expected.get("common"))
    for name, want in texts.items():
        got = members.get(name)
        if got is not None and (got_text := got.decode("utf-8", "replace")) != want:
            problems.append(f"{name} is {got_text[:120]!r}, catalog says {want!r}")
    record = members.get("json")
    if record is not None:
        try:
            if json.loads(record).get("treeoflife_id") != key:
                problems.append("json treeoflife_id differs from the sample key")
        except ValueError as exc:
            problems.append(f"json does not parse ({exc})")
    return problems


def check_shard(task: ShardTask) -> ShardCheck:
    """Stream one shard: digest, tar structure, every sample against the catalog."""
    check = ShardCheck(task.shard)

    def problem(sample: str | None, message: str) -> None:
        check.problems.append(VerifyProblem(task.shard, sample, message))

    if not task.path.is_file():
        problem(None, "shard file is missing")
        return check
    seen: set[str] = set()
    current: str | None = None
    members: dict[str, bytes] = {}

    def finish() -> None:
        if current is None:
            return
        check.samples += 1
        check.keys.append(current)
        if current in seen:
            problem(current, "key appears twice in the shard (samples not contiguous)")
        seen.add(current)
        for message in _check_sample(current, members, task.expected.get(current)):
            problem(current, message)

    with task.path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()  # C loop, GIL released
        size = os.fstat(handle.fileno()).st_size
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            for name, data in iter_ustar(buffer):
                key, field_name = split_member(name)
                if key != current:
                    finish()
                    current, members = key, {}
                if not field_name:
                    problem(key, f"member {name!r} has no field after the key")
                if field_name in members:
                    problem(key, f"duplicate member {name!r}")
                members[field_name] = data
            finish()
        except TarDamage as exc:
            after = f" (at or after sample {current})" if current else ""
            problem(current, f"tar is unreadable{after}: {exc}")
        finally:
            if size:
                buffer.close()
    check.bytes = size
    for missing in sorted(set(task.expected) - seen):
        problem(missing, "in catalog.parquet for this shard but not in the tar")
    if check.samples != task.samples:
        problem(None, f"{check.samples} samples, manifest.json says {task.samples}")
    if size != task.size:
        problem(None, f"{size} bytes, manifest.json says {task.size}")
    if digest != task.sha256:
        problem(None, "sha256 differs from manifest.json")
    return check


EXPECTED_COLUMNS = (*text.RANKS[:-1], "species_name", "common", "jpg_sha256")


def _expected_by_shard(catalog_path: Path) -> Iterator[tuple[str, dict[str, dict]]]:
    """(shard, {id: expected row}) in shard order, streamed from catalog.parquet (its
    `species_name` is the full species name the captions were made from)."""
    con = duckdb.connect()
    try:
        quoted = str(catalog_path).replace("'", "''")
        columns = ", ".join(f'"{c}"' for c in EXPECTED_COLUMNS)
        result = con.execute(
            f"SELECT shard, treeoflife_id, {columns} FROM read_parquet('{quoted}') "
            "WHERE hosted ORDER BY shard, treeoflife_id"
        )
        current, rows = None, {}
        while batch := result.fetchmany(10_000):
            for shard, key, *values in batch:
                if shard != current:
                    if current is not None:
                        yield current, rows
                    current, rows = shard, {}
                row = dict(zip(EXPECTED_COLUMNS, values, strict=True))
                row["species"] = row.pop("species_name")
                rows[key] = row
        if current is not None:
            yield current, rows
    finally:
        con.close()


def _check_files(release_dir: Path, manifest: dict) -> list[VerifyProblem]:
    problems = []
    for name, want in manifest.get("files", {}).items():
        path = release_dir / name
        if not path.is_file():
            problems.append(VerifyProblem(name, None, "file listed in manifest.json is missing"))
            continue
        size, sha = file_digest(path)
        if (size, sha) != (want["bytes"], want["sha256"]):
            problems.append(VerifyProblem(name, None, "sha256 differs from manifest.json"))
    listed = {shard["path"] for shard in manifest["shards"]}
    for split in manifest.get("splits", {}):
        folder = release_dir / split
        sizes_path = folder / "sizes.json"
        want_sizes = {
            s["path"].split("/", 1)[1]: s["samples"]
            for s in manifest["shards"]
            if s["split"] == split
        }
        try:
            if json.loads(sizes_path.read_text()) != want_sizes:
                problems.append(
                    VerifyProblem(f"{split}/sizes.json", None, "differs from manifest.json")
                )
        except (OSError, ValueError) as exc:
            problems.append(VerifyProblem(f"{split}/sizes.json", None, f"unreadable: {exc}"))
        for path in sorted(folder.glob("*.tar")) if folder.is_dir() else []:
            if f"{split}/{path.name}" not in listed:
                problems.append(
                    VerifyProblem(f"{split}/{path.name}", None, "shard not in manifest.json")
                )
    return problems


def verify_release(
    release_dir: Path,
    workers: int = 1,
    on_shard: Callable[[ShardCheck], None] | None = None,
) -> VerifyReport:
    """Check a release folder; the report lists every problem (empty when it is sound)."""
    started = time.perf_counter()
    manifest_path = release_dir / "manifest.json"
    catalog_path = release_dir / "catalog.parquet"
    if not manifest_path.is_file():
        raise TolError(f"{manifest_path} is missing: is {release_dir} a `tol shard` release?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise TolError(f"{manifest_path} is not valid JSON ({exc})") from None
    report = VerifyReport(release_dir=release_dir)
    report.problems.extend(_check_files(release_dir, manifest))
    by_path = {shard["path"]: shard for shard in manifest["shards"]}
    expected_iter = _expected_by_shard(catalog_path) if catalog_path.is_file() else iter(())
    split_keys: dict[str, set[str]] = {}

    def tasks() -> Iterator[ShardTask]:
        pending = dict(by_path)
        for shard, expected in expected_iter:
            entry = pending.pop(shard, None)
            if entry is None:
                report.problems.append(
                    VerifyProblem(shard, None, "catalog.parquet names it; manifest.json does not")
                )
                continue
            yield _task(release_dir, entry, expected)
        for entry in pending.values():
            yield _task(release_dir, entry, {})

    def land(check: ShardCheck) -> None:
        report.shards += 1
        report.samples += check.samples
        report.bytes += check.bytes
        report.problems.extend(check.problems)
        keys = split_keys.setdefault(check.shard.split("/", 1)[0], set())
        for key in check.keys:
            if key in keys:
                report.problems.append(VerifyProblem(check.shard, key, "key repeats in its split"))
            keys.add(key)
        if on_shard is not None:
            on_shard(check)

    if workers <= 1:
        for task in tasks():
            land(check_shard(task))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            in_flight: set[Future] = set()
            for task in tasks():
                in_flight.add(pool.submit(check_shard, task))
                if len(in_flight) >= 2 * workers:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        land(future.result())
            for future in in_flight:
                land(future.result())
    report.seconds = time.perf_counter() - started
    return report


def _task(release_dir: Path, entry: dict, expected: dict[str, dict]) -> ShardTask:
    return ShardTask(
        shard=entry["path"],
        path=release_dir / entry["path"],
        sha256=entry["sha256"],
        size=entry["bytes"],
        samples=entry["samples"],
        expected=expected,
    )
