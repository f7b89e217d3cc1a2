"""The project's one HTTP client: polite retries, per-host limits and verified downloads.

Every network access goes through `HttpClient`, so backoff, User-Agent, per-host
concurrency and rate, resumption and "never leave unverified bytes at `dest`" live here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from treeoflife import __version__
from treeoflife.errors import ChecksumMismatch, DownloadError, TolError

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = (
    f"treeoflife/{__version__} (+https://github.com/treeoflife/treeoflife; "
    "biodiversity dataset builder)"
)
SUPPORTED_ALGORITHMS = ("md5", "sha256")
# Failures a later attempt may not see: dropped/reset connections, timeouts, cut bodies.
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
    HTTPException,
    ConnectionError,
)
T = TypeVar("T")


@dataclass(frozen=True)
class HttpPolicy:
    """How hard and how politely to fetch; one frozen object so every caller shares it."""

    retries: int = 5  # attempts after the first one
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: bool = True  # full jitter: sleep uniform(0, capped exponential backoff)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    per_host_concurrency: int = 4
    per_host_rate: float | None = None  # requests per second per host; None: unlimited
    user_agent: str = DEFAULT_USER_AGENT
    chunk_size: int = 1 << 20
    max_retry_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.per_host_concurrency < 1 or self.chunk_size < 1:
            raise TolError(f"invalid HttpPolicy {self}: retries >= 0, concurrency >= 1 needed")
        if self.per_host_rate is not None and self.per_host_rate <= 0:
            raise TolError(f"per_host_rate must be > 0 or None, got {self.per_host_rate}")


DEFAULT_POLICY = HttpPolicy()


@dataclass(frozen=True)
class Checksum:
    """A pinned digest, e.g. `Checksum.parse("sha256:9f86d0...")`; normalised to lower case."""

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        algorithm, digest = self.algorithm.strip().lower(), self.hexdigest.strip().lower()
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise TolError(f"checksum algorithm {self.algorithm!r} unsupported; use md5 or sha256")
        width = hashlib.new(algorithm).digest_size * 2
        if len(digest) != width or any(c not in "0123456789abcdef" for c in digest):
            raise TolError(f"{algorithm} digest {self.hexdigest!r} is not {width} hex digits")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "hexdigest", digest)

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, separator, digest = text.partition(":")
        if not separator:
            raise TolError(f"checksum {text!r} is not 'algorithm:hexdigest' (e.g. sha256:...)")
        return cls(algorithm, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (files may be many GB)."""
    if algorithm.lower() not in SUPPORTED_ALGORITHMS:
        raise TolError(f"checksum algorithm {algorithm!r} unsupported; use md5 or sha256")
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm.lower()).hexdigest()


def _verification_problem(
    path: Path, size: int | None, checksums: Sequence[Checksum]
) -> str | None:
    """What is wrong with `path` against the pins, or None if it verifies (one read pass)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"expected {size} bytes, got {actual_size}"
    if not checksums:
        return None
    hashers = {c.algorithm: hashlib.new(c.algorithm) for c in checksums}
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(block)
    for checksum in checksums:
        actual = hashers[checksum.algorithm].hexdigest()
        if actual != checksum.hexdigest:
            return f"expected {checksum}, got {checksum.algorithm}:{actual}"
    return None


def mirror_url(url: str, mirror: str | None) -> str:
    """Where `url` lives in a `wget --mirror` tree at `mirror` (host folder, then path)."""
    if mirror is None:
        return url
    parts = urlsplit(url)
    if not parts.hostname:
        raise TolError(f"cannot mirror {url!r}: it has no host")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    mirrored = f"{mirror.rstrip('/')}/{host}{parts.path or '/'}"
    return f"{mirrored}?{parts.query}" if parts.query else mirrored


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), if any."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retryable_status(status: int) -> bool:
    """Whether an HTTP error status is worth another attempt: timeouts, rate limits and
    server errors are transient; other client errors are permanent."""
    return status in (408, 429) or status >= 500


def status_retry_after_s(status: int, header: str | None) -> float | None:
    """The Retry-After to honour for this status (only 429 and 503 carry a meaningful one)."""
    return parse_retry_after(header) if status in (429, 503) else None


def backoff_delay_s(
    policy: HttpPolicy, failed_attempt: int, retry_after_s: float | None, rng: random.Random
) -> float:
    """Seconds to wait before the next attempt: the server's Retry-After (capped) when it
    gave one, else exponential backoff with full jitter (spreads clients that failed together)."""
    if retry_after_s is not None:
        return min(retry_after_s, policy.max_retry_after_s)
    cap = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (failed_attempt - 1))
    return rng.uniform(0.0, cap) if policy.jitter else cap


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) from `bytes 100-199/2000` or `bytes */2000`; None where unknown."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes ") :].partition("/")
    first = span.split("-", 1)[0]
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may not (network, 5xx, 429, cut body)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _TokenBucket:
    """Per-host rate limit: a token bucket holding at most one token, refilled at `rate`/s.

    Callers reserve a token (the balance may go negative) and sleep outside the lock, so
    concurrent threads are spaced 1/rate apart in arrival order.
    """

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(1.0, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


@dataclass
class _HostLimits:
    slots: threading.BoundedSemaphore
    bucket: _TokenBucket | None


class HttpClient:
    """Thread-safe GETs and downloads sharing one connection pool and per-host limits.

    `sleep` waits between retries; tests inject a recorder so they need not wait.
    """

    def __init__(
        self,
        policy: HttpPolicy = DEFAULT_POLICY,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._timeout = (policy.connect_timeout_s, policy.read_timeout_s)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=max(10, policy.per_host_concurrency))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = policy.user_agent
        self._hosts: dict[str, _HostLimits] = {}
        self._hosts_lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(
        self, url: str, *, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        """GET with retries. With `stream=True` the host slot is released once headers arrive;
        use `download` for big bodies, which holds it (and resumes) until the body is done."""

        def attempt() -> requests.Response:
            with self._host_slot(url):
                response = self._send(url, headers, stream)
            self._check_status(url, response)
            return response

        return self._retrying(url, attempt)

    def download(
        self,
        url: str,
        dest: Path,
        *,
        size: int | None = None,
        checksums: Sequence[Checksum] = (),
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Fetch `url` to `dest` via `dest.part`, resuming and verifying; returns `dest`.

        Bytes reach `dest` only after size and every checksum match, so a re-run either
        finds a verified file (no request made) or resumes/restarts the `.part`.
        """
        dest = Path(dest)
        if dest.exists():
            problem = _verification_problem(dest, size, checksums)
            if problem is None:
                log.debug("%s already present and verified; not downloading", dest)
                return dest
            log.warning("%s exists but %s; downloading it again", dest, problem)
            dest.unlink()
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._retrying(url, lambda: self._fetch_part(url, part, size, progress))
        problem = _verification_problem(part, size, checksums)
        if problem is not None:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{url}: {problem}; deleted {part.name}. The source changed or the pinned "
                "size/checksum is stale: check the manifest, then re-run to download again."
            )
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)
        _fsync_folder(dest.parent)
        return dest

    # one attempt -------------------------------------------------------------------------
    def _fetch_part(
        self,
        url: str,
        part: Path,
        size: int | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> None:
        """One attempt: continue `part` from its current length (Range) to the end."""
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:  # a stale .part longer than the file
            part.unlink()
            offset = 0
        headers = {"Accept-Encoding": "identity"}  # the bytes as stored, not re-encoded
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self._host_slot(url):
            response = self._send(url, headers, stream=True)
            with response:
                if offset and response.status_code == 416:
                    if _content_range(response.headers.get("Content-Range"))[1] == offset:
                        return  # the .part already holds the whole file
                    part.unlink()
                    raise _Retryable(f"HTTP 416 for bytes={offset}-; restarting from zero")
                self._check_status(url, response)
                if response.status_code == 206:
                    first, total = _content_range(response.headers.get("Content-Range"))
                    if first != offset:
                        part.unlink(missing_ok=True)
                        raise _Retryable(
                            f"asked for bytes={offset}-, got Content-Range "
                            f"{response.headers.get('Content-Range')!r}; restarting from zero"
                        )
                else:
                    if offset:
                        log.info("%s ignored Range; restarting %s from zero", url, part.name)
                    offset = 0
                    total = _int_or_none(response.headers.get("Content-Length"))
                if size is not None and total is not None and total != size:
                    part.unlink(missing_ok=True)
                    raise ChecksumMismatch(
                        f"{url}: expected {size} bytes, server reports {total}; the source "
                        "changed or the pinned size is stale: check the manifest."
                    )
                self._write_body(url, response, part, offset, total, progress)

    def _write_body(
        self,
        url: str,
        response: requests.Response,
        part: Path,
        offset: int,
        total: int | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> None:
        expected = _int_or_none(response.headers.get("Content-Length"))
        done, received = offset, 0
        if progress:
            progress(done, total)
        try:
            with open(part, "ab" if offset else "wb") as handle:
                for chunk in response.iter_content(chunk_size=self.policy.chunk_size):
                    handle.write(chunk)
                    done += len(chunk)
                    received += len(chunk)
                    if progress:
                        progress(done, total)
        except _TRANSIENT_ERRORS as error:
            raise _Retryable(f"connection dropped after {done} bytes ({error})") from error
        except requests.RequestException as error:
            raise DownloadError(f"GET {url} failed: {error}") from error
        except OSError as error:
            raise DownloadError(f"cannot write {part}: {error}; check disk space") from error
        if expected is not None and received < expected:
            raise _Retryable(f"body ended after {received} of {expected} bytes")

    def _send(self, url: str, headers: dict[str, str] | None, stream: bool) -> requests.Response:
        try:
            return self._session.get(url, headers=headers, stream=stream, timeout=self._timeout)
        except _TRANSIENT_ERRORS as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        except requests.RequestException as error:
            raise DownloadError(f"GET {url} failed and is not retryable: {error}") from error

    @staticmethod
    def _check_status(url: str, response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        response.close()
        reason = f"HTTP {status} {response.reason}".rstrip()
        if retryable_status(status):
            after = status_retry_after_s(status, response.headers.get("Retry-After"))
            raise _Retryable(reason, after)
        raise DownloadError(
            f"GET {url} answered {reason}; not retried (client errors are permanent). "
            "Check the URL, the mirror, or whether the file was removed upstream."
        )

    # retries and limits ------------------------------------------------------------------
    def _retrying(self, url: str, attempt: Callable[[], T]) -> T:
        attempts = self.policy.retries + 1
        for number in range(1, attempts + 1):
            try:
                return attempt()
            except _Retryable as failure:
                if number == attempts:
                    raise DownloadError(
                        f"GET {url} failed after {attempts} attempts; last error: "
                        f"{failure.reason}. Check the network or the server and re-run "
                        "(partial downloads resume)."
                    ) from failure
                delay = self._delay_s(number, failure.retry_after_s)
                log.info(
                    "GET %s: %s (attempt %d/%d); retrying in %.2fs",
                    url,
                    failure.reason,
                    number,
                    attempts,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _delay_s(self, failed_attempt: int, retry_after_s: float | None) -> float:
        return backoff_delay_s(self.policy, failed_attempt, retry_after_s, self._rng)

    def _limits(self, url: str) -> _HostLimits:
        host = (urlsplit(url).netloc or url).lower()
        with self._hosts_lock:
            limits = self._hosts.get(host)
            if limits is None:
                rate = self.policy.per_host_rate
                limits = _HostLimits(
                    threading.BoundedSemaphore(self.policy.per_host_concurrency),
                    _TokenBucket(rate) if rate else None,
                )
                self._hosts[host] = limits
            return limits

    @contextmanager
    def _host_slot(self, url: str) -> Iterator[None]:
        """Hold one of the host's concurrency slots, then wait for its rate token."""
        limits = self._limits(url)
        with limits.slots:
            if limits.bucket is not None:
                wait = limits.bucket.reserve()
                if wait > 0:
                    time.sleep(wait)  # real time: the bucket refills on the real clock
            yield


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); skipped where a folder cannot be opened."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
