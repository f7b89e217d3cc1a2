"""A threaded HTTP server on 127.0.0.1 that serves a folder, with deterministic fault injection.

`tol demo` and the tests fetch real bytes from it (ranges, retries, opt-out headers, a
server dying mid-download) instead of mocking the network or needing the internet.
"""

from __future__ import annotations

import argparse
import mimetypes
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

FAULT_KINDS = ("503", "429", "reset", "truncate")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_BODY_STEP = 64 * 1024


@dataclass
class FaultPlan:
    """Which requests misbehave, and how; deterministic so tests can assert on retries.

    Requests to each path are numbered from 0: the first `status_5xx_first` get 503, the
    next `status_429_first` get 429 (with `Retry-After`), the next `reset_first` get their
    connection reset without a response, the next `truncate_first` get full headers but
    half the body. After those, with `rate > 0` each request independently (seeded) gets
    one fault drawn from `kinds`. Only paths matching the `paths` glob are affected.
    `kill_after_bytes` makes the whole server die after sending that many bytes of a body.
    """

    status_5xx_first: int = 0
    status_429_first: int = 0
    reset_first: int = 0
    truncate_first: int = 0
    slow_bytes_per_s: float | None = None
    rate: float = 0.0
    seed: int = 0
    kinds: Sequence[str] = FAULT_KINDS
    paths: str = "*"
    kill_after_bytes: int | None = None
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULT_KINDS}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {self.rate}")


@dataclass(frozen=True)
class _Record:
    method: str
    path: str
    status: int  # 0: connection reset without a response
    headers: dict[str, str]


class _Unsatisfiable(Exception):
    """The Range header asks for bytes past the end of the file."""


class LoopbackServer:
    """Serves `root` on http://127.0.0.1:PORT from a daemon thread; use as a context manager.

    `port=0` picks a free port; pass a stopped server's `.port` to restart on the same one.
    `path_headers` maps a path glob (e.g. "*/noai/*") to extra response headers.
    """

    def __init__(
        self,
        root: Path,
        faults: FaultPlan | None = None,
        *,
        port: int = 0,
        path_headers: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.faults = faults
        self.path_headers = {glob: dict(extra) for glob, extra in (path_headers or {}).items()}
        self.killed = threading.Event()
        self.max_in_flight = 0
        self._port = port
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._records: list[_Record] = []
        self._counts: dict[str, int] = {}
        self._rng = random.Random(faults.seed if faults else 0)
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _Httpd | None = None
        self._thread: threading.Thread | None = None
        self._dead = False

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        with self._stop_lock:
            if self._httpd is not None:
                return self
            self._dead = False
            self.killed.clear()
            self._httpd = _Httpd(("127.0.0.1", self._port), self)
            self._port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"loopback-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections; idempotent and callable from any thread."""
        with self._stop_lock:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            self._dead = True
            httpd.shutdown()
            httpd.server_close()
            with self._lock:
                open_connections = list(self._connections)
            for connection in open_connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def url_for(self, relative_path: str) -> str:
        return f"{self.url}/{quote(relative_path.lstrip('/'))}"

    # request log -----------------------------------------------------------------------
    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) per answered request, in order; status 0 means reset."""
        with self._lock:
            return [(r.method, r.path, r.status) for r in self._records]

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The request headers of each `request_log` entry, in the same order."""
        with self._lock:
            return [dict(r.headers) for r in self._records]

    # used by the handler -----------------------------------------------------------------
    def _record(self, method: str, path: str, status: int, headers: dict[str, str]) -> None:
        with self._lock:
            self._records.append(_Record(method, path, status, headers))

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _track(self, connection: socket.socket, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _pick_fault(self, path: str) -> str | None:
        plan = self.faults
        if plan is None or not fnmatchcase(path, plan.paths):
            return None
        with self._lock:
            number = self._counts.get(path, 0)
            self._counts[path] = number + 1
            for kind, first in zip(
                FAULT_KINDS,
                (
                    plan.status_5xx_first,
                    plan.status_429_first,
                    plan.reset_first,
                    plan.truncate_first,
                ),
                strict=True,
            ):
                if number < first:
                    return kind
                number -= first
            if plan.rate > 0 and plan.kinds and self._rng.random() < plan.rate:
                return self._rng.choice(list(plan.kinds))
        return None

    def _resolve(self, path: str) -> Path | None:
        """The file a URL path names, or None when missing, a folder, or outside `root`."""
        candidate = (self.root / unquote(path).lstrip("/")).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _extra_headers(self, path: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for glob, extra in self.path_headers.items():
            if fnmatchcase(path, glob):
                merged.update(extra)
        return merged

    def _kill(self) -> None:
        """Die like a crashed server: refuse new connections at once, then stop listening."""
        self._dead = True
        self.killed.set()
        threading.Thread(target=self.stop, daemon=True).start()


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def verify_request(self, request, client_address) -> bool:
        return not self.owner._dead

    def process_request(self, request, client_address) -> None:
        self.owner._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.owner._track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """Clients dropping a connection (resets, retries) are expected, not errors to print."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "treeoflife-loopback"
    disable_nagle_algorithm = True  # else each small response waits out a 40 ms delayed ACK
    timeout = 30  # idle keep-alive connections end instead of pinning a thread
    server: _Httpd
    _in_flight = False

    def log_message(self, format: str, *args: object) -> None:
        """Silenced: the server keeps its own request log."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        self._in_flight = True
        owner._enter()
        try:
            fault = owner._pick_fault(path)
            if fault == "reset":
                owner._record(self.command, path, 0, dict(self.headers))
                self._reset()
                return
            if fault == "503":
                self._answer_status(503)
                return
            if fault == "429":
                assert owner.faults is not None
                self._answer_status(429, {"Retry-After": str(owner.faults.retry_after_s)})
                return
            file = owner._resolve(path)
            if file is None:
                self._answer_status(404)
                return
            self._answer_file(file, path, head, truncate=fault == "truncate")
        except OSError:  # the client went away mid-response
            self.close_connection = True
        finally:
            self._land()

    def _land(self) -> None:
        """Stop counting this request as in flight (idempotent)."""
        if self._in_flight:
            self._in_flight = False
            self.server.owner._leave()

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        path = urlsplit(self.path).path
        self.server.owner._record(self.command, path, status, dict(self.headers))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _answer_status(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self._start(
            status,
            {"Content-Type": "text/plain", "Content-Length": str(len(body)), **(headers or {})},
        )
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer_file(self, file: Path, path: str, head: bool, truncate: bool) -> None:
        owner = self.server.owner
        size = file.stat().st_size
        headers = {
            "Content-Type": mimetypes.guess_type(file.name)[0] or "application/octet-stream",
            "Accept-Ranges": "bytes",
            **owner._extra_headers(path),
        }
        try:
            byte_range = _parse_range(self.headers.get("Range"), size)
        except _Unsatisfiable:
            self._start(416, {**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"})
            return
        if byte_range is None:
            status, start, length = 200, 0, size
        else:
            status, start, length = 206, byte_range[0], byte_range[1] - byte_range[0] + 1
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        headers["Content-Length"] = str(length)
        self._start(status, headers)
        if not head:
            self._send_body(file, start, length, truncate)

    def _send_body(self, file: Path, start: int, length: int, truncate: bool) -> None:
        plan = self.server.owner.faults
        limit = length // 2 if truncate else length
        if plan is not None and plan.kill_after_bytes is not None:
            limit = min(limit, plan.kill_after_bytes)
        slow = plan.slow_bytes_per_s if plan is not None else None
        step = max(1, min(_BODY_STEP, int(slow / 20))) if slow else _BODY_STEP
        began, sent = time.monotonic(), 0
        with open(file, "rb") as source:
            source.seek(start)
            while sent < limit:
                chunk = source.read(min(step, limit - sent))
                if not chunk:
                    break
                if slow:  # pace before writing, so nothing lingers after the last byte
                    time.sleep(max(0.0, began + (sent + len(chunk)) / slow - time.monotonic()))
                if sent + len(chunk) >= length:
                    # Landed before the last write: once the client holds every byte, this
                    # request no longer counts, so in-flight tallies never overlap the next.
                    self._land()
                self.wfile.write(chunk)
                sent += len(chunk)
        if sent < length:  # cut short on purpose: the client sees EOF before Content-Length
            self.close_connection = True
            if plan is not None and plan.kill_after_bytes is not None and not truncate:
                self.server.owner._kill()

    def _reset(self) -> None:
        """Close with SO_LINGER 0 so the kernel sends RST: a connection reset, no response."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.rfile.close()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for one satisfiable range; None to send the whole file.

    Multiple or malformed ranges are ignored (RFC 9110 lets a server answer 200).
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m treeoflife.loopback ROOT [--port N]`: serve a folder until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path, help="folder to serve")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="random fault probability")
    parser.add_argument("--seed", type=int, default=0, help="seed for random faults")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a folder")
    faults = FaultPlan(rate=args.fault_rate, seed=args.seed) if args.fault_rate else None
    with LoopbackServer(args.root, faults, port=args.port) as server:
        print(f"serving {server.root} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
