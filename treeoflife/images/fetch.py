"""`tol images fetch`: every record without a finished image, fetched by URL or read from its
archive member, verified/hashed/resized in one pass (`transform.process_image`), and
appended to a staging shard; one work unit at a time is committed to the `images` table.

Roles: `run_unit` is the unit function (runs in a worker process or a Ray task; reads
nothing but its inputs, writes only its staging files); getting one URL's bytes (throttle,
retries, reasons) is `download.py`'s. Everything else here runs in the coordinator, the
one process that writes `catalog.duckdb`: planning units, downloading the archives they
read, ingesting each finished unit's Parquet in one transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import queue
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from treeoflife.engine import open_engine, report_progress
from treeoflife.errors import TolError
from treeoflife.http import DEFAULT_POLICY, HttpClient, HttpPolicy
from treeoflife.images.download import (  # noqa: F401 (re-exported: fetch's public names)
    ROBOTS_AGENT,
    ROBOTS_DIRECTIVES,
    Fetched,
    HostThrottle,
    UrlFetcher,
    robots_opt_out,
)
from treeoflife.images.phash import one_blas_thread
from treeoflife.images.staging import ShardWriter, UnitPaths, read_stats, write_results, write_stats
from treeoflife.images.transform import ImageRejected, ResizeSpec, process_batch, process_image
from treeoflife.workspace import Workspace

log = logging.getLogger(__name__)

STAGING = "staging"
MAX_UNIT_ATTEMPTS = 3  # crashed attempts of one unit before its records count as failed
UNITS_LOCK = ".units.lock"
CHECK_S = 0.25  # how often a unit looks for stragglers and reports progress
# Failures worth another try on a later run (`--retry-failed`); the others are permanent.
TRANSIENT_ERRORS = (
    "timeout",
    "connection-error",
    "truncated-body",
    "http-408",
    "http-429",
    "http-500",
    "http-502",
    "http-503",
    "http-504",
    "worker-died",
)

# Our own tables: the plan (which records each unit holds) and each unit's state.
UNIT_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS image_units (
    unit INTEGER PRIMARY KEY, kind VARCHAR, source VARCHAR, archive VARCHAR,
    records INTEGER, status VARCHAR,            -- planned | done
    shard VARCHAR, ok INTEGER, failed INTEGER, skipped INTEGER, seconds DOUBLE,
    planned_at TIMESTAMP, finished_at TIMESTAMP
);
ALTER TABLE image_units ADD COLUMN IF NOT EXISTS attempts INTEGER DEFAULT 0;
ALTER TABLE image_units ADD COLUMN IF NOT EXISTS last_error VARCHAR;
CREATE TABLE IF NOT EXISTS image_unit_records (
    unit INTEGER NOT NULL, record_id VARCHAR NOT NULL, url VARCHAR, source VARCHAR,
    archive VARCHAR, member VARCHAR
);
ALTER TABLE images ADD COLUMN IF NOT EXISTS dhash VARCHAR;
ALTER TABLE images ADD COLUMN IF NOT EXISTS out_width INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS out_height INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS bytes BIGINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS fetched_at TIMESTAMPTZ;
ALTER TABLE images ADD COLUMN IF NOT EXISTS unit INTEGER;
"""

# Pending records (no `images` row, not in an unfinished unit), cut into units: URL records
# spread by a hash of their id (many hosts per unit), archive records in member order (a
# tar is read front to back) and never mixed across archives.
PLAN_SQL = """
INSERT INTO image_unit_records
WITH pending AS (
    SELECT r.record_id, r.url, r.source, r.archive, r.member
    FROM record_images r
    WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.record_id = r.record_id)
      AND NOT EXISTS (SELECT 1 FROM image_unit_records u WHERE u.record_id = r.record_id)
    QUALIFY row_number() OVER (PARTITION BY r.record_id ORDER BY r.url, r.member) = 1
    ORDER BY hash(r.record_id)
    LIMIT $limit
), grouped AS (
    SELECT *,
        CASE WHEN url IS NULL AND archive IS NOT NULL THEN 'archive' ELSE 'url' END AS kind,
        CASE WHEN url IS NULL AND archive IS NOT NULL THEN member
             ELSE lpad(hash(record_id)::VARCHAR, 20, '0') END AS sort_key
    FROM pending
), chunked AS (
    SELECT *, (row_number() OVER (
        PARTITION BY kind, coalesce(source, ''), coalesce(archive, '') ORDER BY sort_key
    ) - 1) // $unit_size AS chunk
    FROM grouped
)
SELECT $first_unit + dense_rank() OVER (
           ORDER BY kind DESC, coalesce(source, ''), coalesce(archive, ''), chunk) - 1,
       record_id, url,
       CASE WHEN kind = 'archive' THEN source END,
       CASE WHEN kind = 'archive' THEN archive END,
       CASE WHEN kind = 'archive' THEN member END
FROM chunked
"""

INGEST_SQL = """
INSERT INTO images (record_id, status, error, sha256, phash, width, height, shard, member,
                    dhash, out_width, out_height, bytes, fetched_at, unit)
SELECT record_id, status, error, sha256, phash, width, height, shard, member,
       dhash, out_width, out_height, bytes, fetched_at, unit
FROM read_parquet($path)
"""


# ---------------------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchConfig:
    """Everything a unit needs besides its records; picklable, shared by every unit."""

    spec: ResizeSpec = field(default_factory=ResizeSpec)
    policy: HttpPolicy = DEFAULT_POLICY  # retries, backoff, timeouts, per-host concurrency
    mirror: str | None = None
    threads: int = 16  # download threads per unit (per worker process)
    # Decode/hash/resize threads per unit: about one core's worth. More threads than cores
    # only add GIL hand-offs and cache misses (measured: 16 decoding threads cost ~40% more
    # CPU per image than 2).
    decode_threads: int = 2
    respect_robots: bool = True
    image_deadline_s: float = 120.0  # all attempts of one image, backoff included
    straggler_timeout_s: float = 180.0  # a unit stops waiting for an image after this
    max_bytes: int = 64 << 20  # a bigger body is refused (too-large)


@dataclass(frozen=True)
class UnitTask:
    """One unit's inputs: records as Arrow (record_id, url, archive_path, member)."""

    unit: int
    records: pa.Table
    staging_dir: str  # absolute; every worker (every Ray node) must see it
    config: FetchConfig


@dataclass(frozen=True)
class UnitResult:
    unit: int
    results_path: str
    stats: dict


@dataclass
class FetchStats:
    """What one `fetch_images` call did (this run), and the totals now in `images`."""

    units: int = 0  # units finished and ingested in this run
    units_failed: int = 0  # units that crashed; re-run by the next call
    units_waiting: int = 0  # units whose archive could not be downloaded this time
    problems: list[str] = field(default_factory=list)  # what the user should fix
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # 'failed:http-404' -> n
    seconds: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)  # all rows of `images` by status

    @property
    def images(self) -> int:
        return self.ok + self.failed + self.skipped

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def add(self, stats: dict) -> None:
        self.units += 1
        for status in ("ok", "failed", "skipped"):
            setattr(self, status, getattr(self, status) + stats.get(status, 0))
        for reason, count in stats.get("reasons", {}).items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count

    def summary(self) -> str:
        """One line for the console, e.g. `340 ok, 6 failed (http-404 1, ...), 1 skipped`."""

        def detail(status: str) -> str:
            parts = [
                f"{reason.split(':', 1)[1]} {count}"
                for reason, count in sorted(self.reasons.items())
                if reason.startswith(status + ":")
            ]
            return f" ({', '.join(parts)})" if parts else ""

        return (
            f"{self.ok} ok, {self.failed} failed{detail('failed')}, "
            f"{self.skipped} skipped{detail('skipped')} in {self.units} units, "
            f"{self.seconds:.1f} s ({self.images_per_s:.0f} images/s)"
        )


def iter_archive(path: Path, members: list[str]) -> Iterator[tuple[str, Fetched]]:
    """(member, Fetched) for each wanted member of a zip or tar, read in one pass.

    Zip members are read by name; a tar is streamed front to back and left as soon as
    every wanted member was seen (units of a tar are planned in member order).
    """
    wanted = set(members)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in members:
                try:
                    yield name, Fetched(payload=archive.read(name))
                except KeyError:
                    yield name, Fetched(status="failed", reason="missing-member")
                except (zipfile.BadZipFile, OSError, EOFError):
                    yield name, Fetched(status="failed", reason="archive-error")
        return
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for info in archive:
                archive.members.clear()  # a stream of millions: keep no member list
                if info.name not in wanted or info.name in seen or not info.isfile():
                    continue
                handle = archive.extractfile(info)
                payload = handle.read() if handle is not None else b""
                seen.add(info.name)
                yield info.name, Fetched(payload=payload)
                if len(seen) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as error:
        log.warning("%s: archive unreadable after %d members: %s", path, len(seen), error)
        for name in members:
            if name not in seen:
                seen.add(name)
                yield name, Fetched(status="failed", reason="archive-error")
    for name in members:
        if name not in seen:
            yield name, Fetched(status="failed", reason="missing-member")


# ---------------------------------------------------------------------------------------
# the unit function
# ---------------------------------------------------------------------------------------
def member_key(record_id: str) -> str:
    """The staging member's key: no dots, no slashes, stable per record."""
    return hashlib.sha1(record_id.encode()).hexdigest()


def _hex64(value: Any) -> str | None:
    if value is None:
        return None
    return f"{value:016x}" if isinstance(value, int) else str(value)


class _UnitCollector:
    """Turns each record's outcome into a result row and, when ok, a shard member."""

    def __init__(self, task: UnitTask, paths: UnitPaths) -> None:
        self.task = task
        self.paths = paths
        self.writer = ShardWriter(paths.shard)
        self.rows: list[dict] = []
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        self.reasons: dict[str, int] = {}
        self.bytes_in = 0
        self._last_report = 0.0

    def add(self, record_id: str, fetched: Fetched, processed: Any = None) -> None:
        now = datetime.now(UTC)
        row = {"record_id": record_id, "fetched_at": now, "unit": self.task.unit}
        if processed is not None:
            member = f"{member_key(record_id)}.jpg"
            self.writer.add(member, processed.jpeg, now.timestamp())
            row.update(
                status="ok",
                error=None,
                sha256=processed.sha256,
                phash=_hex64(processed.phash),
                dhash=_hex64(getattr(processed, "dhash", None)),
                width=processed.width,
                height=processed.height,
                out_width=processed.out_width,
                out_height=processed.out_height,
                bytes=len(fetched.payload or b""),
                shard=self.paths.shard_relative(),
                member=member,
            )
            self.bytes_in += len(fetched.payload or b"")
        else:
            row.update(status=fetched.status, error=fetched.reason)
            key = f"{fetched.status}:{fetched.reason}"
            self.reasons[key] = self.reasons.get(key, 0) + 1
        self.counts[row["status"]] += 1
        self.rows.append(row)
        self.report()

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= 0.5:
            self._last_report = now
            report_progress((self.task.unit, dict(self.counts)))


def _process(record_id: str, fetched: Fetched, spec: ResizeSpec) -> tuple[str, Fetched, Any]:
    """Decode/verify/hash/resize/encode; any rejection becomes a failed status."""
    if fetched.payload is None:
        return record_id, fetched, None
    try:
        return record_id, fetched, process_image(fetched.payload, spec)
    except ImageRejected as rejected:
        reason = getattr(rejected, "reason", None) or "not-an-image"
        return record_id, Fetched(fetched.payload, "failed", reason), None
    except Exception as error:  # a decoder bug must not sink the unit: record it
        log.warning("%s: unexpected %s while decoding: %s", record_id, type(error).__name__, error)
        return record_id, Fetched(fetched.payload, "failed", "decode-error"), None


class _BatchDecoder:
    """A few decoding threads that take whatever fetched images are waiting (up to
    `batch`) and run them through `process_batch` together: the hash arithmetic is one
    numpy pass per batch (measured ~7% faster than one call per image with fast hashes,
    ~20% with exact ones). Callers get one Future per image."""

    def __init__(self, spec: ResizeSpec, threads: int, batch: int = 16) -> None:
        self.spec = spec
        self.batch = batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"decode-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, record_id: str, fetched: Fetched) -> Future:
        future: Future = Future()
        if fetched.payload is None:
            future.set_result((record_id, fetched, None))
        else:
            self._queue.put((record_id, fetched, future))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # leave the stop signal for this thread's next turn
                    break
                items.append(item)
            self._decode(items)

    def _decode(self, items: list) -> None:
        try:
            results = process_batch([fetched.payload for _, fetched, _ in items], self.spec)
        except Exception:  # an unexpected error: isolate it, one image at a time
            for record_id, fetched, future in items:
                future.set_result(_process(record_id, fetched, self.spec))
            return
        for (record_id, fetched, future), result in zip(items, results, strict=True):
            if isinstance(result, ImageRejected):
                reason = getattr(result, "reason", None) or "not-an-image"
                future.set_result((record_id, Fetched(fetched.payload, "failed", reason), None))
            else:
                future.set_result((record_id, fetched, result))


class _Jobs:
    """The unit's submitted records: future -> (record_id, start time once running), and
    the finished futures in completion order (so collecting one costs O(1), not a `wait`
    over every record still running)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.running: dict[Future, list] = {}
        self.finished: queue.SimpleQueue[Future] = queue.SimpleQueue()

    def submit(self, function: Callable, record_id: str, *args: Any) -> None:
        job = [record_id, None]

        def timed() -> Any:
            job[1] = time.monotonic()
            return function(record_id, *args)

        with self.lock:
            future = self.pool.submit(timed)
            self.running[future] = job
        future.add_done_callback(self.finished.put)

    def next_finished(self, timeout_s: float) -> Future | None:
        try:
            return self.finished.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def count(self) -> int:
        with self.lock:
            return len(self.running)

    def pop(self, future: Future) -> list | None:
        with self.lock:
            return self.running.pop(future, None)

    def overdue(self, timeout_s: float) -> list[tuple[Future, str, float]]:
        now = time.monotonic()
        with self.lock:
            return [
                (future, record_id, now - began)
                for future, (record_id, began) in self.running.items()
                if began is not None and not future.done() and now - began > timeout_s
            ]


def run_unit(task: UnitTask) -> UnitResult:
    """Fetch, process and stage one unit's records; commit shard, Parquet, stats in order.

    Runs anywhere (process pool, Ray task). A record still running after the straggler
    timeout is recorded as failed (timeout) and left behind, so a unit always finishes.
    BLAS stays on one thread for the whole unit: its products are small, and switching
    OpenBLAS's thread count per image cost more than the products themselves.
    """
    with _units_running(Path(task.staging_dir)), one_blas_thread():
        return _run_unit(task)


def _run_unit(task: UnitTask) -> UnitResult:
    started = time.monotonic()
    config = task.config
    paths = UnitPaths(Path(task.staging_dir), task.unit)
    paths.remove_temporaries()
    collector = _UnitCollector(task, paths)
    records = task.records.to_pylist()
    fetcher = UrlFetcher(config)
    pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix=f"unit{task.unit}")
    decoders = _BatchDecoder(config.spec, config.decode_threads)
    jobs = _Jobs(pool)
    # Archive bytes are read ahead of processing; bound how many wait in memory.
    read_ahead = threading.BoundedSemaphore(config.threads * 2)
    try:
        by_archive: dict[str, list[dict]] = {}
        for record in records:
            if not record.get("url") and record.get("archive_path"):
                by_archive.setdefault(record["archive_path"], []).append(record)

        def fetch_and_process(record_id: str, url: str | None) -> tuple[str, Fetched, Any]:
            if not url:
                return record_id, Fetched(status="failed", reason="no-location"), None
            try:
                fetched = fetcher.fetch(url)
            except TolError:  # e.g. a URL without a host
                fetched = Fetched(status="failed", reason="bad-url")
            except Exception as error:  # never let one record sink the unit
                log.warning("%s: %s fetching %s: %s", record_id, type(error).__name__, url, error)
                fetched = Fetched(status="failed", reason="fetch-error")
            return decoders.submit(record_id, fetched).result()

        def process_member(record_id: str, fetched: Fetched) -> tuple[str, Fetched, Any]:
            try:
                return decoders.submit(record_id, fetched).result()
            finally:
                read_ahead.release()

        def submit_member(record_id: str, fetched: Fetched) -> None:
            read_ahead.acquire()
            jobs.submit(process_member, record_id, fetched)

        for record in records:
            if record.get("url") or not record.get("archive_path"):
                jobs.submit(fetch_and_process, record["record_id"], record.get("url"))
        readers = [
            threading.Thread(
                target=_read_archive, args=(Path(archive), group, submit_member), daemon=True
            )
            for archive, group in by_archive.items()
        ]
        for reader in readers:
            reader.start()
        _collect(jobs, readers, collector, config.straggler_timeout_s)
        collector.writer.commit()
    except BaseException:
        collector.writer.abort()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        decoders.close()
        fetcher.close()
    write_results(paths.results, collector.rows)
    seconds = time.monotonic() - started
    stats = {
        "unit": task.unit,
        "records": len(records),
        **collector.counts,
        "reasons": collector.reasons,
        "members": collector.writer.members,
        "bytes_in": collector.bytes_in,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(records) / seconds, 1) if seconds > 0 else None,
        "shard": paths.shard_relative(),
        "spec": repr(config.spec),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    write_stats(paths.stats, stats)
    collector.report(force=True)
    return UnitResult(task.unit, str(paths.results), stats)


def _read_archive(archive: Path, group: list[dict], submit_member: Callable) -> None:
    by_member: dict[str, list[str]] = {}
    for record in group:
        by_member.setdefault(record["member"], []).append(record["record_id"])
    for member, fetched in iter_archive(archive, sorted(by_member)):
        for record_id in by_member[member]:
            submit_member(record_id, fetched)


def _collect(
    jobs: _Jobs, readers: list[threading.Thread], collector: _UnitCollector, timeout_s: float
) -> None:
    """Hand finished records to the collector until none is running or still to be read."""
    next_check = time.monotonic() + CHECK_S
    while True:
        future = jobs.next_finished(CHECK_S)
        if future is not None and jobs.pop(future) is not None:
            collector.add(*future.result())
        now = time.monotonic()
        if now >= next_check:
            next_check = now + CHECK_S
            for late, record_id, waited in jobs.overdue(timeout_s):
                if jobs.pop(late) is not None:
                    log.warning(
                        "%s: no answer after %.0f s; recorded as timeout", record_id, waited
                    )
                    collector.add(record_id, Fetched(status="failed", reason="timeout"))
        collector.report()
        if future is None and not jobs.count():
            if not any(reader.is_alive() for reader in readers) and not jobs.count():
                return


# ---------------------------------------------------------------------------------------
# coordinator: plan, archives, ingest
# ---------------------------------------------------------------------------------------
def ensure_tables(con) -> None:
    con.execute(UNIT_TABLES_SQL)


def plan_units(con, *, unit_size: int, workers: int, limit: int | None = None) -> int:
    """Put every pending record into a planned unit; returns how many units were added.

    Units are at most `unit_size` records, and smaller when there are fewer pending
    records than `unit_size * workers`, so every worker gets a share.
    """
    if unit_size < 1:
        raise TolError(f"--unit-size must be at least 1, got {unit_size}")
    ensure_tables(con)
    pending = con.execute(
        """SELECT count(DISTINCT r.record_id) FROM record_images r
           WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.record_id = r.record_id)
             AND NOT EXISTS (SELECT 1 FROM image_unit_records u WHERE u.record_id = r.record_id)
        """
    ).fetchall()[0][0]
    if limit is not None:
        pending = min(pending, limit)
    if pending == 0:
        return 0
    size = max(1, min(unit_size, -(-pending // max(1, workers))))
    first = con.execute("SELECT coalesce(max(unit) + 1, 0) FROM image_units").fetchall()[0][0]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(PLAN_SQL, {"limit": pending, "unit_size": size, "first_unit": first})
        con.execute(
            """INSERT INTO image_units (unit, kind, source, archive, records, status, planned_at)
               SELECT unit, CASE WHEN any_value(archive) IS NULL THEN 'url' ELSE 'archive' END,
                      any_value(source), any_value(archive), count(*), 'planned', now()
               FROM image_unit_records WHERE unit >= ? GROUP BY unit""",
            [first],
        )
        added = con.execute("SELECT count(*) FROM image_units WHERE unit >= ?", [first]).fetchall()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return added[0][0]


def reset_transient_failures(con) -> int:
    """Forget failed images whose reason may not recur (5xx, timeouts), so they are re-planned."""
    ensure_tables(con)
    placeholders = ", ".join("?" for _ in TRANSIENT_ERRORS)
    where = f"status = 'failed' AND error IN ({placeholders})"
    count = con.execute(f"SELECT count(*) FROM images WHERE {where}", TRANSIENT_ERRORS).fetchall()
    con.execute("BEGIN TRANSACTION")
    con.execute(
        f"""DELETE FROM image_unit_records WHERE record_id IN
            (SELECT record_id FROM images WHERE {where})""",
        TRANSIENT_ERRORS,
    )
    con.execute(f"DELETE FROM images WHERE {where}", TRANSIENT_ERRORS)
    con.execute("COMMIT")
    return count[0][0]


def _find_manifest(source: str, version: str | None, pipeline: str | None):
    """The manifest a source was pulled with: the pipeline's, or any with that name+version."""
    from treeoflife.manifest import load_manifest, load_pipeline, repo_dir

    if pipeline:
        plan = load_pipeline(pipeline)
        if source in plan.sources:
            return plan.sources[source]
    for path in sorted(repo_dir("manifests").rglob("*.toml")):
        try:
            manifest = load_manifest(path)
        except TolError:
            continue
        if manifest.name == source and (version is None or manifest.version == version):
            return manifest
    raise TolError(
        f"no manifest for source {source!r} version {version!r} under manifests/; "
        "name the pipeline it was pulled with (--pipeline)"
    )


def ensure_archives(
    workspace: Workspace,
    needed: list[tuple[str, str]],
    client: HttpClient,
    *,
    mirror: str | None,
    pipeline: str | None = None,
    progress: Callable | None = None,
) -> tuple[dict[tuple[str, str], Path], dict[tuple[str, str], str]]:
    """Local paths of the image archives units read, downloading any still missing, and
    the problem with each archive that could not be had (its units wait for a re-run).

    Downloads are resumable (`.part` + Range) and verified against the manifest; an
    archive already in place with the pinned (or recorded) size is not re-hashed.
    """
    paths: dict[tuple[str, str], Path] = {}
    problems: dict[tuple[str, str], str] = {}
    for source, role in needed:
        try:
            paths[(source, role)] = _ensure_archive(
                workspace,
                source,
                role,
                client,
                mirror=mirror,
                pipeline=pipeline,
                progress=progress,
            )
        except TolError as error:
            log.error("image archive %s %s unavailable: %s", source, role, error)
            problems[(source, role)] = str(error)
    return paths, problems


def _ensure_archive(
    workspace: Workspace,
    source: str,
    role: str,
    client: HttpClient,
    *,
    mirror: str | None,
    pipeline: str | None,
    progress: Callable | None,
) -> Path:
    from treeoflife.pull import download_dir, download_source_files

    with workspace.connect() as con:
        version = con.execute("SELECT version FROM pulls WHERE source = ?", [source]).fetchall()
        recorded = con.execute(
            "SELECT size FROM downloads WHERE source = ? AND role = ?", [source, role]
        ).fetchall()
    manifest = _find_manifest(source, version[0][0] if version else None, pipeline)
    spec = manifest.file(role)
    dest = download_dir(workspace, manifest) / spec.filename
    # A finished download of the pinned size is trusted: re-hashing 200 GB each run is not.
    size = spec.size if spec.size is not None else (recorded[0][0] if recorded else None)
    if dest.exists() and size is not None and dest.stat().st_size == size:
        return dest
    log.info("downloading image archive %s %s to %s", source, role, dest)
    path = download_source_files(
        workspace, manifest, client, mirror=mirror, roles=[role], progress=progress
    )[role]
    with workspace.connect() as con:
        con.execute(
            "INSERT OR REPLACE INTO downloads VALUES (?, ?, ?, ?, ?, ?, now())",
            [
                source,
                role,
                manifest.download_url(role, mirror),
                str(path),
                path.stat().st_size,
                next((c.hexdigest for c in spec.checksums if c.algorithm == "sha256"), None),
            ],
        )
    return path


def ingest_unit(con, unit: int, results_path: Path, stats: dict) -> None:
    """Record one finished unit: its result rows into `images`, the unit marked done,
    in one transaction (a crash before COMMIT leaves the unit planned, to be re-ingested)."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM images WHERE record_id IN "
            "(SELECT record_id FROM image_unit_records WHERE unit = ?)",
            [unit],
        )
        con.execute(INGEST_SQL, {"path": str(results_path)})
        con.execute(
            """UPDATE image_units SET status = 'done', shard = ?, ok = ?, failed = ?,
                   skipped = ?, seconds = ?, finished_at = now() WHERE unit = ?""",
            [
                stats.get("shard"),
                stats.get("ok", 0),
                stats.get("failed", 0),
                stats.get("skipped", 0),
                stats.get("seconds"),
                unit,
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def record_unit_failure(con, unit: int, error: BaseException) -> bool:
    """Count a crashed attempt of `unit` (worker killed, disk full, a bug). After
    MAX_UNIT_ATTEMPTS its records are recorded as failed (worker-died) so a unit that kills
    its worker every time cannot stall the stage; `--retry-failed` tries them again."""
    con.execute(
        "UPDATE image_units SET attempts = coalesce(attempts, 0) + 1, last_error = ? "
        "WHERE unit = ?",
        [f"{type(error).__name__}: {error}"[:2000], unit],
    )
    attempts = con.execute("SELECT attempts FROM image_units WHERE unit = ?", [unit]).fetchall()
    if attempts[0][0] < MAX_UNIT_ATTEMPTS:
        return False
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            """INSERT INTO images (record_id, status, error, fetched_at, unit)
               SELECT record_id, 'failed', 'worker-died', now(), unit
               FROM image_unit_records u WHERE unit = ?
                 AND NOT EXISTS (SELECT 1 FROM images i WHERE i.record_id = u.record_id)""",
            [unit],
        )
        con.execute(
            "UPDATE image_units SET status = 'done', ok = 0, failed = records, skipped = 0, "
            "finished_at = now() WHERE unit = ?",
            [unit],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


@contextlib.contextmanager
def _units_running(staging: Path) -> Iterator[None]:
    """Held (shared) by every running unit, so a new coordinator can tell that workers of
    a killed run are still writing; the OS drops it when the process dies."""
    handle = open(staging / UNITS_LOCK, "a")  # noqa: SIM115 (closed below)
    try:
        with contextlib.suppress(OSError):  # filesystems without flock: no guard
            fcntl.flock(handle, fcntl.LOCK_SH)
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def _fetch_lock(staging: Path, wait_s: float = 60.0) -> Iterator[None]:
    """One coordinator per workspace, and no worker of an earlier (killed) run still
    writing a unit this run would redo. The OS drops both locks when a process dies."""
    staging.mkdir(parents=True, exist_ok=True)
    handle = open(staging / ".fetch.lock", "w")  # noqa: SIM115 (closed below)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TolError(
                f"another `tol images fetch` is running on {staging.parent}; wait for it "
                "or stop it (a killed run resumes where it stopped)"
            ) from None
        with open(staging / UNITS_LOCK, "a") as units:
            give_up = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(units, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(units, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise TolError(
                            f"worker processes of an earlier run still hold {units.name}; "
                            "stop them (they are named after the python running tol), then "
                            "re-run"
                        ) from None
                    time.sleep(0.2)
        yield
    finally:
        handle.close()


@dataclass
class FetchProgress:
    """Live counts for a progress bar: finished units plus the running units' latest."""

    total: int
    done: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    running: dict[int, dict[str, int]] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)  # late messages from these are stale

    def update(self, unit: int, counts: dict[str, int]) -> None:
        if unit not in self.finished:
            self.running[unit] = counts

    def finish(self, unit: int, unit_stats: dict | None) -> None:
        self.finished.add(unit)
        self.running.pop(unit, None)
        if unit_stats is not None:
            _merge(self.done, unit_stats)

    def counts(self) -> dict[str, int]:
        merged = dict(self.done)
        for counts in self.running.values():
            for status, count in counts.items():
                merged[status] = merged.get(status, 0) + count
        return merged

    def completed(self) -> int:
        return sum(self.counts().values())


def fetch_images(
    workspace: Workspace,
    spec: ResizeSpec | None = None,
    *,
    mirror: str | None = None,
    client_policy: HttpPolicy = DEFAULT_POLICY,
    engine: str = "local",
    workers: int = 2,
    threads: int = 16,
    unit_size: int = 10_000,
    limit: int | None = None,
    respect_robots: bool = True,
    address: str | None = None,
    retry_failed: bool = False,
    pipeline: str | None = None,
    image_deadline_s: float = 120.0,
    straggler_timeout_s: float | None = None,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchStats:
    """Fetch every record without a finished image; returns what this run did.

    Idempotent and resumable: units already committed on disk but not yet recorded are
    ingested without refetching; unfinished units run again from scratch.
    """
    began = time.monotonic()
    stats = FetchStats()
    config = FetchConfig(
        spec=spec or ResizeSpec(),
        policy=client_policy,
        mirror=mirror,
        threads=threads,
        respect_robots=respect_robots,
        image_deadline_s=image_deadline_s,
        straggler_timeout_s=straggler_timeout_s or image_deadline_s + 60.0,
    )
    staging = workspace.root / STAGING
    with _fetch_lock(staging):
        with workspace.connect() as con:
            ensure_tables(con)
            if retry_failed:
                reset_transient_failures(con)
            plan_units(con, unit_size=unit_size, workers=workers, limit=limit)
            units = con.execute(
                "SELECT unit, records, source, archive FROM image_units "
                "WHERE status = 'planned' ORDER BY unit"
            ).fetchall()
            needed = con.execute(
                """SELECT DISTINCT source, archive FROM image_unit_records
                   WHERE archive IS NOT NULL AND unit IN
                       (SELECT unit FROM image_units WHERE status = 'planned')
                   ORDER BY ALL"""
            ).fetchall()
        live = FetchProgress(total=sum(unit[1] for unit in units))
        # Units whose outputs were committed before a crash: record them, no refetch.
        to_run = []
        for unit, *_ in units:
            paths = UnitPaths(staging, unit)
            if paths.is_committed():
                unit_stats = read_stats(paths.stats)
                with workspace.connect() as con:
                    ingest_unit(con, unit, paths.results, unit_stats)
                stats.add(unit_stats)
                live.finish(unit, unit_stats)
            else:
                paths.remove_temporaries()
                to_run.append(unit)
        if progress:
            progress(live)
        if to_run:
            with HttpClient(client_policy) as client:
                archives, problems = ensure_archives(
                    workspace, [tuple(n) for n in needed], client, mirror=mirror, pipeline=pipeline
                )
            for (source, role), problem in problems.items():
                stats.problems.append(f"image archive {source} {role}: {problem}")
            waiting = {unit for unit, _, source, role in units if (source, role) in problems}
            to_run = [unit for unit in to_run if unit not in waiting]
            stats.units_waiting = len(waiting)
            live.total -= sum(unit[1] for unit in units if unit[0] in waiting)
            with open_engine(engine, workers=workers, address=address) as executor:
                tasks = _tasks(workspace, to_run, archives, config)

                def on_progress(messages: list) -> None:
                    for unit, counts in messages:
                        live.update(unit, counts)
                    if progress:
                        progress(live)

                for outcome in executor.run(run_unit, tasks, on_progress):
                    unit = outcome.task.unit
                    if outcome.error is not None:
                        live.finish(unit, None)
                        stats.units_failed += 1
                        with workspace.connect() as con:
                            gave_up = record_unit_failure(con, unit, outcome.error)
                        if gave_up:
                            UnitPaths(staging, unit).remove_temporaries()
                        log.error(
                            "unit %d failed (%s): %s",
                            unit,
                            "its records are recorded as failed (worker-died)"
                            if gave_up
                            else "it stays planned and runs again next time",
                            outcome.error,
                        )
                        continue
                    result: UnitResult = outcome.result
                    with workspace.connect() as con:
                        ingest_unit(con, unit, Path(result.results_path), result.stats)
                    stats.add(result.stats)
                    live.finish(unit, result.stats)
                    if progress:
                        progress(live)
    with workspace.connect() as con:
        stats.totals = dict(
            con.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall()
        )
    stats.seconds = time.monotonic() - began
    return stats


def _merge(into: dict[str, int], unit_stats: dict) -> None:
    for status in ("ok", "failed", "skipped"):
        into[status] = into.get(status, 0) + unit_stats.get(status, 0)


def _tasks(
    workspace: Workspace,
    units: list[int],
    archives: dict[tuple[str, str], Path],
    config: FetchConfig,
) -> Iterator[UnitTask]:
    """Each unit's inputs as an Arrow table, read from the plan when the engine asks.

    The archive paths are joined in SQL, so the table comes whole from DuckDB: building
    Arrow arrays from Python lists makes pyarrow import pandas (~0.5 s per run).
    """
    staging_dir = str((workspace.root / STAGING).resolve())
    paths = [(source, role, str(path.resolve())) for (source, role), path in archives.items()]
    if paths:
        values = ", ".join("(?, ?, ?)" for _ in paths)
        join = f"LEFT JOIN (VALUES {values}) a(source, archive, path) USING (source, archive)"
        path_column = "a.path"
        params = [value for row in paths for value in row]
    else:
        join, path_column, params = "", "NULL::VARCHAR", []
    query = f"""SELECT r.record_id, r.url, {path_column} AS archive_path, r.member
                FROM image_unit_records r {join}
                WHERE r.unit = ? ORDER BY r.member, r.record_id"""
    for unit in units:
        with workspace.connect() as con:
            records = con.cursor().sql(query, params=[*params, unit]).to_arrow_table()
        yield UnitTask(unit, records, staging_dir, config)
