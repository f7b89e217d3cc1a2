"""Getting one image's bytes by URL: the adaptive per-host throttle, one GET per attempt
with our own retry loop, `X-Robots-Tag` opt-outs, and every failure named by a reason.

GETs go straight through urllib3 (one pooled connection per thread and host): requests'
per-call machinery cost ~1.4 ms of CPU per image, more than a JPEG's resize. Behind an
environment proxy the shared `HttpClient` (requests, which knows HTTP(S)_PROXY and
NO_PROXY) does them instead; both paths give the same reasons.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.util import Retry, Timeout, make_headers

from treeoflife.errors import DownloadError
from treeoflife.http import (
    HttpClient,
    backoff_delay_s,
    mirror_url,
    retryable_status,
    status_retry_after_s,
)

if TYPE_CHECKING:
    from treeoflife.images.fetch import FetchConfig

ROBOTS_DIRECTIVES = ("noai", "noimageai")
ROBOTS_AGENT = "treeoflife"
MAX_REDIRECTS = 30  # requests' default
# Body reads of up to 256 KB: a typical photo arrives in one or two reads. With 32 KB reads
# the per-read Python overhead cost ~0.4 ms of CPU per 100 KB image (benchmarks/images.py).
CHUNK_BYTES = 256 << 10


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

    def __init__(
        self, max_concurrency: int, max_interval_s: float = 1.0, min_interval_s: float = 0.0
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_interval_s = max(max_interval_s, min_interval_s)
        self.min_interval_s = min_interval_s  # the policy's per-host rate, never exceeded
        self._hosts: dict[str, _HostState] = {}
        self._cond = threading.Condition()

    def state(self, host: str) -> _HostState:
        if host not in self._hosts:
            self._hosts[host] = _HostState(
                window=float(self.max_concurrency), interval_s=self.min_interval_s
            )
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
            halved = state.interval_s / 2 if state.interval_s > 0.005 else 0.0
            state.interval_s = max(self.min_interval_s, halved)
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
                    doubled = max(0.02, state.interval_s * 2)
                    state.interval_s = min(self.max_interval_s, doubled)
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


# (reason, worth retrying, Retry-After seconds) of one attempt that got no image
Attempt = tuple["Fetched | str", bool, "float | None"]

_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
_TIMEOUTS = (
    requests.exceptions.Timeout,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
)
_BODY_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
    http.client.IncompleteRead,
)
_CONNECTION_ERRORS = (
    requests.ConnectionError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    OSError,
)


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
        return f"http-{code}", retryable_status(code), retry_after
    if cause is None:
        return "bad-url", False, None
    if "timeout" in text.lower() or "timed out" in text.lower():
        return "timeout", True, None
    return "connection-error", True, None


def _status_outcome(code: int, retry_after_header: str | None) -> Attempt:
    """An HTTP error status as the shared client reports it (`_classify` of its error)."""
    return f"http-{code}", retryable_status(code), status_retry_after_s(code, retry_after_header)


def _network_outcome(error: BaseException) -> Attempt:
    """A request that got no answer: timeout, refused/reset connection, or a bad URL."""
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        cause = error.reason
        if isinstance(cause, urllib3.exceptions.ResponseError):  # too many redirects
            return "bad-url", False, None
        return _network_outcome(cause) if cause is not None else ("connection-error", True, None)
    text = str(error).lower()
    timed_out = "timeout" in text or "timed out" in text  # as `_classify` reads requests'
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # subclasses the timeout
        return ("timeout" if timed_out else "connection-error"), True, None
    if isinstance(error, _TIMEOUTS) or timed_out:
        return "timeout", True, None
    if isinstance(error, _CONNECTION_ERRORS):
        return "connection-error", True, None
    return "bad-url", False, None


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


def _environment_proxies() -> bool:
    """Is a proxy configured (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY...)? requests honours them."""
    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


def _ca_bundle() -> str | None:
    """The CA certificates requests would verify with (its env overrides, then certifi)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    with contextlib.suppress(ImportError):
        import certifi

        return certifi.where()
    return None


class UrlFetcher:
    """GETs image URLs, one attempt per call, with our own retry loop, so each attempt's
    status drives the adaptive host throttle."""

    def __init__(self, config: FetchConfig, rng: random.Random | None = None) -> None:
        self.config = config
        policy = config.policy
        rate = policy.per_host_rate
        self.throttle = HostThrottle(
            policy.per_host_concurrency, min_interval_s=1.0 / rate if rate else 0.0
        )
        self._rng = rng or random.Random()
        self.client: HttpClient | None = None
        self.pool: urllib3.PoolManager | None = None
        if _environment_proxies():
            inner = replace(
                policy,
                retries=0,
                per_host_concurrency=max(policy.per_host_concurrency, config.threads),
            )
            self.client = HttpClient(inner)
        else:
            headers = make_headers(
                keep_alive=True, accept_encoding=True, user_agent=policy.user_agent
            )
            headers["Accept"] = "*/*"
            self.pool = urllib3.PoolManager(
                num_pools=10,  # hosts kept open at once (requests' pool_connections)
                maxsize=max(10, config.threads),
                headers=headers,
                timeout=Timeout(connect=policy.connect_timeout_s, read=policy.read_timeout_s),
                retries=Retry(
                    total=None,
                    connect=0,
                    read=0,
                    other=0,
                    status=0,
                    redirect=MAX_REDIRECTS,
                    raise_on_redirect=True,
                    raise_on_status=False,
                    respect_retry_after_header=False,
                ),
                ca_certs=_ca_bundle(),
            )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.pool is not None:
            self.pool.clear()

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
            delay = backoff_delay_s(policy, attempt, retry_after, self._rng)
            if time.monotonic() + delay >= deadline:
                return Fetched(status="failed", reason=reason)
            time.sleep(delay)
        return Fetched(status="failed", reason=reason)

    def _attempt(self, url: str, deadline: float) -> Attempt:
        """One GET: (Fetched, _, _) on an answer we keep, else (reason, retryable, after)."""
        if self.pool is None:
            return self._attempt_with_client(url, deadline)
        try:
            response = self.pool.request("GET", url, preload_content=False, decode_content=True)
        except urllib3.exceptions.LocationValueError:  # no host, unknown scheme, bad chars
            return "bad-url", False, None
        except _CONNECTION_ERRORS as error:
            return _network_outcome(error)
        try:
            if response.status >= 400:
                return _status_outcome(response.status, response.headers.get("Retry-After"))
            return self._body(response.headers, response.stream(CHUNK_BYTES), deadline)
        finally:
            response.close()  # a body left unread must not reach the next request
            response.release_conn()

    def _attempt_with_client(self, url: str, deadline: float) -> Attempt:
        """One GET through the shared HttpClient (requests), used behind a proxy."""
        assert self.client is not None
        try:
            response = self.client.get(url, stream=True)
        except DownloadError as error:
            return _classify(error)
        with response:
            return self._body(response.headers, response.iter_content(CHUNK_BYTES), deadline)

    def _body(self, headers: Any, chunks: Iterable[bytes], deadline: float) -> Attempt:
        """Read an answered GET's body within the size limit and the image's deadline."""
        config = self.config
        if config.respect_robots and robots_opt_out(headers):
            return Fetched(status="skipped", reason="robots-noai"), False, None
        declared = headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > config.max_bytes:
            return Fetched(status="failed", reason="too-large"), False, None
        parts, size = [], 0
        try:
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > config.max_bytes:
                    return Fetched(status="failed", reason="too-large"), False, None
                if time.monotonic() > deadline:
                    return "timeout", False, None
        except _TIMEOUTS:
            return "timeout", True, None
        except _BODY_ERRORS:
            return "truncated-body", True, None
        except _CONNECTION_ERRORS:
            return "connection-error", True, None
        if declared and declared.isdigit() and size < int(declared):
            return "truncated-body", True, None
        return Fetched(payload=b"".join(parts)), False, None
