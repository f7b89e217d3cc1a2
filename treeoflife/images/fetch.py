"""`tol images fetch`: every record without a finished image, fetched by URL or read from its
archive member, verified/hashed/resized in one pass (`transform.process_image`), and
appended to a staging shard; one work unit at a time is committed to the `images` table.

Roles: `run_unit` is the unit function (runs in a worker process or a Ray task; reads
nothing but its inputs, writes only its staging files). Everything else here runs in the
coordinator, the one process that writes `catalog.duckdb`: planning units, downloading
the archives they read, ingesting each finished unit's Parquet in one transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import queue
import random
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import requests
import urllib3

from treeoflife.engine import open_engine, report_progress
from treeoflife.errors import DownloadError, TolError
from treeoflife.http import DEFAULT_POLICY, HttpClient, HttpPolicy, mirror_url
from treeoflife.images.staging import ShardWriter, UnitPaths, read_stats, write_results, write_stats
from treeoflife.images.transform import ImageRejected, ResizeSpec, process_batch, process_image
from treeoflife.workspace import Workspace

log = logging.getLogger(__name__)

STAGING = "staging"
MAX_UNIT_ATTEMPTS = 3  # crashed attempts of one unit before its records count as failed
UNITS_LOCK = ".units.lock"
ROBOTS_DIRECTIVES = ("noai", "noimageai")
ROBOTS_AGENT = "treeoflife"
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


# ---------------------------------------------------------------------------------------
# adaptive per-host limits (one per worker process, shared by its threads)
# ---------------------------------------------------------------------------------------
@dataclass
class _HostState:
    window: float  # concurrent requests allowed now
    in_flight: int = 0
    interval_s: float = 0.0  # minimum spacing between request starts (adaptive rate)
    next_start: float = 0.0
    paused_until: float = 0.0
    backed_off_at: float = -1.0  # overloads seen by requests sent before this are old news


class _Deadline(Exception):
    """The image ran out of time while waiting for its host."""


class HostThrottle:
    """AIMD per host: 429/5xx halves the concurrency window, down to one request at a
    time; 429s beyond that double the spacing between requests (5xx is a failing server,
    not a rate limit: retry backoff handles it); Retry-After pauses the whole host. Each
    success halves the spacing and widens the window by 1/window, so a recovered host
    returns to full speed.

    Like TCP, it reacts once per congestion episode: an overload reported by a request
    sent before the last back-off is already accounted for.
    """

    def __init__(self, max_concurrency: int, max_interval_s: float = 1.0) -> None:
        self.max_concurrency = max_concurrency
        self.max_interval_s = max_interval_s
        self._hosts: dict[str, _HostState] = {}
        self._cond = threading.Condition()

    def state(self, host: str) -> _HostState:
        if host not in self._hosts:
            self._hosts[host] = _HostState(window=float(self.max_concurrency))
        return self._hosts[host]

    @contextlib.contextmanager
    def slot(self, host: str, deadline: float) -> Iterator[float]:
        """Wait for the host's window and spacing; yields the time the request starts."""
        with self._cond:
            state = self.state(host)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise _Deadline
                ready_at = max(state.paused_until, state.next_start)
                if state.in_flight < max(1, int(state.window)) and now >= ready_at:
                    break
                wait_s = ready_at - now if now < ready_at else 0.5
                self._cond.wait(timeout=max(0.001, min(wait_s, deadline - now)))
            state.in_flight += 1
            state.next_start = now + state.interval_s
        try:
            yield now
        finally:
            with self._cond:
                state.in_flight -= 1
                self._cond.notify_all()

    def success(self, host: str) -> None:
        with self._cond:
            state = self.state(host)
            state.window = min(float(self.max_concurrency), state.window + 1.0 / state.window)
            state.interval_s = state.interval_s / 2 if state.interval_s > 0.005 else 0.0
            self._cond.notify_all()

    def overloaded(
        self,
        host: str,
        retry_after_s: float | None,
        sent_at: float = 0.0,
        rate_limited: bool = True,
    ) -> None:
        """React to a 429 (`rate_limited`) or a 5xx answer to a request sent at `sent_at`."""
        with self._cond:
            state = self.state(host)
            if sent_at >= state.backed_off_at:
                state.backed_off_at = time.monotonic()
                if state.window > 1.0:  # first fewer requests at once
                    state.window = max(1.0, state.window / 2)
                elif rate_limited:  # then, if the host says "too many", spaced out
                    state.interval_s = min(self.max_interval_s, max(0.02, state.interval_s * 2))
            if retry_after_s:
                state.paused_until = max(state.paused_until, time.monotonic() + retry_after_s)


# ---------------------------------------------------------------------------------------
# getting the bytes
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    """Bytes, or why there are none: (status, reason) with status failed | skipped."""

    payload: bytes | None = None
    status: str = "ok"
    reason: str | None = None


_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
_BODY_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
)
_READ_TIMEOUTS = (requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)


def _classify(error: DownloadError) -> tuple[str, bool, float | None]:
    """(reason, worth retrying, Retry-After seconds) for one failed attempt of the client.

    The client (retries=0) raises DownloadError; a retryable attempt carries the client's
    internal cause with `reason` and `retry_after_s`.
    """
    cause = error.__cause__
    if "not retryable" in str(error):  # invalid URL, unsupported scheme
        return "bad-url", False, None
    text = getattr(cause, "reason", None) or str(error)
    retry_after = getattr(cause, "retry_after_s", None)
    match = _HTTP_STATUS.search(text)
    if match:
        code = int(match.group(1))
        return f"http-{code}", code in (408, 429) or code >= 500, retry_after
    if cause is None:
        return "bad-url", False, None
    if "timeout" in text.lower() or "timed out" in text.lower():
        return "timeout", True, None
    return "connection-error", True, None


def robots_opt_out(headers: Any) -> bool:
    """True when X-Robots-Tag forbids AI use (`noai`, `noimageai`) for all bots or for us.

    Directives may be scoped to one crawler (`otherbot: noai`); those apply only when the
    name is ours. Several headers arrive comma-joined.
    """
    value = headers.get("X-Robots-Tag") if headers is not None else None
    if not value:
        return False
    for part in value.split(","):
        part = part.strip().lower()
        agent, sep, directive = part.partition(":")
        if sep and agent.strip() not in ("*", ROBOTS_AGENT) and " " not in agent.strip():
            continue
        directive = directive.strip() if sep else part
        if directive in ROBOTS_DIRECTIVES:
            return True
    return False


class UrlFetcher:
    """GETs image URLs through the project's HttpClient (one attempt per call) with our
    own retry loop, so each attempt's status drives the adaptive host throttle."""

    def __init__(self, config: FetchConfig, rng: random.Random | None = None) -> None:
        self.config = config
        policy = config.policy
        inner = replace(
            policy, retries=0, per_host_concurrency=max(policy.per_host_concurrency, config.threads)
        )
        self.client = HttpClient(inner)
        self.throttle = HostThrottle(policy.per_host_concurrency)
        self._rng = rng or random.Random()

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str) -> Fetched:
        config, policy = self.config, self.config.policy
        deadline = time.monotonic() + config.image_deadline_s
        url = mirror_url(url, config.mirror)
        host = (urlsplit(url).netloc or url).lower()
        reason = "timeout"
        for attempt in range(1, policy.retries + 2):
            try:
                with self.throttle.slot(host, deadline) as sent_at:
                    outcome, retryable, retry_after = self._attempt(url, deadline)
            except _Deadline:
                return Fetched(status="failed", reason=reason)
            if isinstance(outcome, Fetched):
                self.throttle.success(host)
                return outcome
            reason = outcome
            if reason == "http-429" or reason.startswith("http-5"):
                self.throttle.overloaded(
                    host, retry_after, sent_at, rate_limited=reason == "http-429"
                )
            if not retryable or attempt > policy.retries:
                return Fetched(status="failed", reason=reason)
            if retry_after is not None:
                delay = min(retry_after, policy.max_retry_after_s)
            else:
                cap = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
                delay = self._rng.uniform(0.0, cap) if policy.jitter else cap
            if time.monotonic() + delay >= deadline:
                return Fetched(status="failed", reason=reason)
            time.sleep(delay)
        return Fetched(status="failed", reason=reason)

    def _attempt(self, url: str, deadline: float) -> tuple[Fetched | str, bool, float | None]:
        """One GET: (Fetched, _, _) on an answer we keep, else (reason, retryable, after)."""
        try:
            response = self.client.get(url, stream=True)
        except DownloadError as error:
            return _classify(error)
        with response:
            if self.config.respect_robots and robots_opt_out(response.headers):
                return Fetched(status="skipped", reason="robots-noai"), False, None
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                return Fetched(status="failed", reason="too-large"), False, None
            chunks, size = [], 0
            try:
                for chunk in response.iter_content(chunk_size=32 << 10):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.config.max_bytes:
                        return Fetched(status="failed", reason="too-large"), False, None
                    if time.monotonic() > deadline:
                        return "timeout", False, None
            except _READ_TIMEOUTS:
                return "timeout", True, None
            except _BODY_ERRORS:
                return "truncated-body", True, None
            except (requests.ConnectionError, ConnectionError, OSError):
                return "connection-error", True, None
            if declared and declared.isdigit() and size < int(declared):
                return "truncated-body", True, None
        return Fetched(payload=b"".join(chunks)), False, None


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
    """The unit's submitted records: future -> (record_id, start time once running)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.running: dict[Future, list] = {}

    def submit(self, function: Callable, record_id: str, *args: Any) -> None:
        job = [record_id, None]

        def timed() -> Any:
            job[1] = time.monotonic()
            return function(record_id, *args)

        with self.lock:
            self.running[self.pool.submit(timed)] = job

    def snapshot(self) -> list[Future]:
        with self.lock:
            return list(self.running)

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
    """
    with _units_running(Path(task.staging_dir)):
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
    while True:
        futures = jobs.snapshot()
        if not futures:
            if not any(reader.is_alive() for reader in readers) and not jobs.snapshot():
                return
            time.sleep(0.01)
            continue
        done, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
        for future in done:
            if jobs.pop(future) is not None:
                collector.add(*future.result())
        for future, record_id, waited in jobs.overdue(timeout_s):
            if jobs.pop(future) is not None:
                log.warning("%s: no answer after %.0f s; recorded as timeout", record_id, waited)
                collector.add(record_id, Fetched(status="failed", reason="timeout"))
        collector.report()


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
    """Each unit's inputs as an Arrow table, read from the plan when the engine asks."""
    staging_dir = str((workspace.root / STAGING).resolve())
    for unit in units:
        with workspace.connect() as con:
            rows = (
                con.cursor()
                .sql(
                    """SELECT record_id, url, source, archive, member FROM image_unit_records
                   WHERE unit = ? ORDER BY member, record_id""",
                    params=[unit],
                )
                .to_arrow_table()
            )
        archive_paths = [
            str(archives[(source, role)].resolve()) if role is not None else None
            for source, role in zip(
                rows.column("source").to_pylist(), rows.column("archive").to_pylist(), strict=True
            )
        ]
        records = pa.table(
            {
                "record_id": rows.column("record_id"),
                "url": rows.column("url"),
                "archive_path": pa.array(archive_paths, pa.string()),
                "member": rows.column("member"),
            }
        )
        yield UnitTask(unit, records, staging_dir, config)
