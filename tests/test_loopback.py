"""The loopback server: ranges, HEAD, path safety, extra headers and fault injection."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from treeoflife.loopback import FaultPlan, LoopbackServer

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "www"
    (served / "img" / "noai").mkdir(parents=True)
    (served / "img" / "a.jpg").write_bytes(PAYLOAD)
    (served / "img" / "noai" / "b.jpg").write_bytes(PAYLOAD[:100])
    (tmp_path / "secret.txt").write_text("outside the served root")
    return served


@pytest.fixture
def server(root: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(root) as running:
        yield running


def raw_get(server: LoopbackServer, path: str, headers: dict[str, str] | None = None):
    """One request with the path sent verbatim (requests would normalise `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return connection, response


def test_serves_files_with_length_type_and_ranges(server):
    response = requests.get(server.url_for("img/a.jpg"), timeout=5)
    assert response.status_code == 200
    assert response.content == PAYLOAD
    assert response.headers["Content-Length"] == str(len(PAYLOAD))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "image/jpeg"
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=100-", 100, len(PAYLOAD) - 1), ("bytes=10-19", 10, 19), ("bytes=-5", 10235, 10239)],
)
def test_single_range_gets_206(server, header, first, last):
    response = requests.get(server.url_for("img/a.jpg"), headers={"Range": header}, timeout=5)
    assert response.status_code == 206
    assert response.content == PAYLOAD[first : last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(PAYLOAD)}"
    assert response.headers["Content-Length"] == str(last - first + 1)


def test_unsatisfiable_range_gets_416(server):
    response = requests.get(
        server.url_for("img/a.jpg"), headers={"Range": f"bytes={len(PAYLOAD)}-"}, timeout=5
    )
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"


def test_head_sends_headers_only(server):
    response = requests.head(server.url_for("img/a.jpg"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(PAYLOAD))
    assert response.content == b""
    assert server.request_log == [("HEAD", "/img/a.jpg", 200)]


@pytest.mark.parametrize("path", ["/../secret.txt", "/img/../../secret.txt", "/%2e%2e/secret.txt"])
def test_paths_escaping_root_are_404(server, path):
    connection, response = raw_get(server, path)
    assert response.status == 404
    assert b"outside" not in response.read()
    connection.close()


def test_missing_files_and_folders_are_404(server):
    assert requests.get(server.url_for("img/nope.jpg"), timeout=5).status_code == 404
    assert requests.get(server.url_for("img"), timeout=5).status_code == 404


def test_extra_headers_by_path_glob(root):
    with LoopbackServer(root, path_headers={"*/noai/*": {"X-Robots-Tag": "noai"}}) as server:
        flagged = requests.get(server.url_for("img/noai/b.jpg"), timeout=5)
        plain = requests.get(server.url_for("img/a.jpg"), timeout=5)
    assert flagged.headers["X-Robots-Tag"] == "noai"
    assert "X-Robots-Tag" not in plain.headers


def test_first_n_faults_come_in_order_per_path(root):
    plan = FaultPlan(status_5xx_first=1, status_429_first=1, reset_first=1, truncate_first=1)
    with LoopbackServer(root, plan) as server:
        url = server.url_for("img/a.jpg")
        assert requests.get(url, timeout=5).status_code == 503
        limited = requests.get(url, timeout=5)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
        connection, response = raw_get(server, "/img/a.jpg")
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert len(cut.value.partial) == len(PAYLOAD) // 2
        connection.close()
        assert requests.get(url, timeout=5).content == PAYLOAD
        # counters are per path: another path starts its own sequence
        assert requests.get(server.url_for("img/noai/b.jpg"), timeout=5).status_code == 503
    statuses = [status for _, _, status in server.request_log]
    assert statuses == [503, 429, 0, 200, 200, 503]


def test_reset_is_a_real_connection_reset(root):
    with LoopbackServer(root, FaultPlan(reset_first=1)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/img/a.jpg")
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            connection.getresponse()


def test_fault_paths_glob_restricts_faults(root):
    with LoopbackServer(root, FaultPlan(status_5xx_first=5, paths="*/noai/*")) as server:
        assert requests.get(server.url_for("img/a.jpg"), timeout=5).status_code == 200
        assert requests.get(server.url_for("img/noai/b.jpg"), timeout=5).status_code == 503


def test_random_faults_are_seeded_and_reproducible(root):
    def statuses(seed: int) -> list[int]:
        plan = FaultPlan(rate=0.5, seed=seed, kinds=("503", "429"))
        with LoopbackServer(root, plan) as server:
            return [
                requests.get(server.url_for("img/a.jpg"), timeout=5).status_code for _ in range(30)
            ]

    first = statuses(11)
    assert first == statuses(11)
    assert {200, 503, 429} <= set(first)
    with pytest.raises(ValueError):
        FaultPlan(kinds=("teapot",))


def test_slow_bodies_are_throttled(root):
    with LoopbackServer(root, FaultPlan(slow_bytes_per_s=20_000)) as server:
        began = time.monotonic()
        assert requests.get(server.url_for("img/a.jpg"), timeout=5).content == PAYLOAD
        assert time.monotonic() - began >= 0.45  # 10240 bytes at 20 kB/s


def test_kill_after_bytes_stops_server_and_port_can_be_reused(root):
    server = LoopbackServer(root, FaultPlan(kill_after_bytes=1000)).start()
    connection, response = raw_get(server, "/img/a.jpg")
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert len(cut.value.partial) == 1000
    connection.close()
    assert server.killed.wait(5)
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url_for("img/a.jpg"), timeout=2)
    with LoopbackServer(root, port=server.port) as revived:
        assert revived.url == server.url
        assert requests.get(revived.url_for("img/a.jpg"), timeout=5).content == PAYLOAD


def test_stop_then_restart_on_same_port_drops_keepalive_connections(root):
    session = requests.Session()
    first = LoopbackServer(root).start()
    assert session.get(first.url_for("img/a.jpg"), timeout=5).status_code == 200
    first.stop()
    with LoopbackServer(root, port=first.port) as second:
        assert session.get(second.url_for("img/a.jpg"), timeout=5).status_code == 200
        assert second.request_log == [("GET", "/img/a.jpg", 200)]
    session.close()


def test_request_log_is_thread_safe(server):
    def fetch() -> None:
        with requests.Session() as session:
            for _ in range(10):
                session.get(server.url_for("img/noai/b.jpg"), timeout=5)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.request_log) == 80
    assert len(server.request_headers) == 80
    assert server.max_in_flight >= 1


def test_cli_serves_a_folder(root):
    process = subprocess.Popen(
        [sys.executable, "-m", "treeoflife.loopback", str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        url = banner.split(" at ")[1].split()[0]
        assert requests.get(f"{url}/img/a.jpg", timeout=5).content == PAYLOAD
    finally:
        process.terminate()
        process.wait(timeout=5)
