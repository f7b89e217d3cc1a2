"""HttpClient against a real loopback server: retries, resume, verification, politeness."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from treeoflife.errors import ChecksumMismatch, DownloadError, TolError
from treeoflife.http import (
    Checksum,
    HttpClient,
    HttpPolicy,
    file_digest,
    mirror_url,
    parse_retry_after,
)
from treeoflife.loopback import FaultPlan, LoopbackServer

FAST = HttpPolicy(
    retries=3,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    connect_timeout_s=2,
    read_timeout_s=5,
    chunk_size=64 * 1024,
)
BIG_PATH = "data/big.bin"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "www"
    (served / "data").mkdir(parents=True)
    (served / "data" / "small.txt").write_bytes(b"hello tree of life\n" * 50)
    return served


@pytest.fixture
def big(root: Path) -> bytes:
    """~2 MB of incompressible bytes, so a cut body leaves a partial .part."""
    payload = random.Random(7).randbytes(2 * 1024 * 1024 + 123)
    (root / BIG_PATH).write_bytes(payload)
    return payload


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    started: list[LoopbackServer] = []

    def start(root: Path, faults: FaultPlan | None = None, **options) -> LoopbackServer:
        server = LoopbackServer(root, faults, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def sha256(payload: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(payload).hexdigest())


def md5(payload: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(payload).hexdigest())


def gets(server: LoopbackServer) -> list[tuple[str, str, int]]:
    return [entry for entry in server.request_log if entry[0] == "GET"]


def test_download_verifies_size_sha256_and_md5(root, big, serve, tmp_path):
    server = serve(root)
    dest = tmp_path / "out" / "big.bin"
    seen: list[tuple[int, int | None]] = []
    with HttpClient(FAST) as client:
        result = client.download(
            server.url_for(BIG_PATH),
            dest,
            size=len(big),
            checksums=[sha256(big), md5(big)],
            progress=lambda done, total: seen.append((done, total)),
        )
    assert result == dest
    assert dest.read_bytes() == big
    assert not dest.with_name("big.bin.part").exists()
    assert seen[-1] == (len(big), len(big))
    assert file_digest(dest, "sha256") == sha256(big).hexdigest
    assert server.request_log == [("GET", "/" + BIG_PATH, 200)]


def test_checksum_mismatch_leaves_neither_dest_nor_part(root, big, serve, tmp_path):
    server = serve(root)
    dest = tmp_path / "big.bin"
    wrong = Checksum("sha256", "0" * 64)
    url = server.url_for(BIG_PATH)
    with pytest.raises(ChecksumMismatch) as caught:
        HttpClient(FAST).download(url, dest, checksums=[wrong])
    message = str(caught.value)
    assert url in message
    assert f"expected {wrong}" in message
    assert sha256(big).hexdigest in message
    assert not dest.exists()
    assert not (tmp_path / "big.bin.part").exists()


def test_size_mismatch_is_a_checksum_mismatch(root, big, serve, tmp_path):
    server = serve(root)
    dest = tmp_path / "big.bin"
    with pytest.raises(ChecksumMismatch, match=rf"expected {len(big) + 1} bytes.*{len(big)}"):
        HttpClient(FAST).download(server.url_for(BIG_PATH), dest, size=len(big) + 1)
    assert not dest.exists()
    assert not (tmp_path / "big.bin.part").exists()


def test_resume_after_server_dies_mid_body(root, big, serve, tmp_path):
    dying = serve(root, FaultPlan(kill_after_bytes=700_000))
    url = dying.url_for(BIG_PATH)
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    client = HttpClient(HttpPolicy(retries=1, backoff_base_s=0.001, chunk_size=64 * 1024))
    with pytest.raises(DownloadError, match="after 2 attempts"):
        client.download(url, dest, size=len(big), checksums=[sha256(big)])
    assert dying.killed.is_set()
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept <= 700_000
    assert part.read_bytes() == big[:kept]

    dying.stop()
    revived = serve(root, port=dying.port)
    assert revived.url == dying.url
    client.download(url, dest, size=len(big), checksums=[sha256(big)])
    assert dest.read_bytes() == big
    assert not part.exists()
    assert revived.request_log == [("GET", "/" + BIG_PATH, 206)]
    assert revived.request_headers[0]["Range"] == f"bytes={kept}-"


def test_truncated_body_is_continued_by_the_next_attempt(root, big, serve, tmp_path):
    server = serve(root, FaultPlan(truncate_first=2))
    dest = tmp_path / "big.bin"
    sleeps: list[float] = []
    HttpClient(FAST, sleep=sleeps.append).download(
        server.url_for(BIG_PATH), dest, checksums=[sha256(big)]
    )
    assert dest.read_bytes() == big
    statuses = [status for _, _, status in gets(server)]
    assert statuses == [200, 206, 206]
    ranges = [headers.get("Range") for headers in server.request_headers]
    assert ranges[0] is None and all(r.startswith("bytes=") for r in ranges[1:])
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "faults",
    [FaultPlan(status_5xx_first=2), FaultPlan(reset_first=2), FaultPlan(truncate_first=2)],
    ids=["503", "reset", "truncate"],
)
def test_injected_faults_are_retried(root, serve, faults, tmp_path):
    server = serve(root, faults)
    payload = (root / "data" / "small.txt").read_bytes()
    sleeps: list[float] = []
    client = HttpClient(FAST, sleep=sleeps.append)
    assert client.get(server.url_for("data/small.txt")).content == payload
    dest = client.download(server.url_for("data/small.txt"), tmp_path / "s.txt", size=len(payload))
    assert dest.read_bytes() == payload
    assert len(sleeps) == 2
    assert all(0 <= s <= FAST.backoff_max_s for s in sleeps)


def test_retry_after_is_honoured_and_capped(root, serve):
    server = serve(root, FaultPlan(status_429_first=2, retry_after_s=1))
    sleeps: list[float] = []
    client = HttpClient(FAST, sleep=sleeps.append)
    assert client.get(server.url_for("data/small.txt")).status_code == 200
    assert sleeps == [1.0, 1.0]

    capped = serve(root, FaultPlan(status_429_first=1, retry_after_s=120))
    sleeps.clear()
    policy = HttpPolicy(retries=2, max_retry_after_s=0.25)
    HttpClient(policy, sleep=sleeps.append).get(capped.url_for("data/small.txt"))
    assert sleeps == [0.25]


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= parse_retry_after(in_a_minute) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_exhausted_retries_raise_download_error_naming_url(root, serve, tmp_path):
    server = serve(root, FaultPlan(status_5xx_first=100))
    url = server.url_for("data/small.txt")
    sleeps: list[float] = []
    with pytest.raises(DownloadError) as caught:
        HttpClient(FAST, sleep=sleeps.append).download(url, tmp_path / "s.txt")
    message = str(caught.value)
    assert url in message and "4 attempts" in message and "503" in message
    assert len(gets(server)) == 4
    assert len(sleeps) == 3
    assert not (tmp_path / "s.txt").exists()


def test_unreachable_host_raises_download_error(tmp_path, root):
    with LoopbackServer(root) as server:
        url = server.url_for("data/small.txt")
    with pytest.raises(DownloadError, match=r"after 2 attempts.*ConnectionError"):
        HttpClient(HttpPolicy(retries=1, backoff_base_s=0.001)).get(url)


def test_404_fails_at_once_without_retries(root, serve, tmp_path):
    server = serve(root)
    url = server.url_for("data/missing.bin")
    sleeps: list[float] = []
    client = HttpClient(FAST, sleep=sleeps.append)
    with pytest.raises(DownloadError, match="404") as caught:
        client.download(url, tmp_path / "missing.bin")
    assert url in str(caught.value)
    with pytest.raises(DownloadError, match="404"):
        client.get(url)
    assert sleeps == []
    assert len(server.request_log) == 2
    assert not (tmp_path / "missing.bin.part").exists()


def test_existing_valid_dest_makes_no_request(root, big, serve, tmp_path):
    server = serve(root)
    dest = tmp_path / "big.bin"
    dest.write_bytes(big)
    client = HttpClient(FAST)
    assert client.download(server.url_for(BIG_PATH), dest, checksums=[sha256(big)]) == dest
    assert server.request_log == []

    dest.write_bytes(b"corrupt")
    client.download(server.url_for(BIG_PATH), dest, checksums=[sha256(big)])
    assert dest.read_bytes() == big
    assert len(server.request_log) == 1


def test_stale_part_from_another_file_is_rejected(root, big, serve, tmp_path):
    server = serve(root)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(b"x" * 1000)
    with pytest.raises(ChecksumMismatch):
        HttpClient(FAST).download(server.url_for(BIG_PATH), dest, checksums=[sha256(big)])
    assert not dest.exists() and not (tmp_path / "big.bin.part").exists()
    HttpClient(FAST).download(server.url_for(BIG_PATH), dest, checksums=[sha256(big)])
    assert dest.read_bytes() == big


def test_unsatisfiable_range_restarts_or_completes(root, big, serve, tmp_path):
    server = serve(root)
    url = server.url_for(BIG_PATH)
    sleeps: list[float] = []
    client = HttpClient(FAST, sleep=sleeps.append)

    too_long = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(big + b"extra")
    client.download(url, too_long, checksums=[sha256(big)])
    assert too_long.read_bytes() == big
    assert [status for _, _, status in server.request_log] == [416, 200]

    complete = tmp_path / "b.bin"
    (tmp_path / "b.bin.part").write_bytes(big)
    client.download(url, complete, checksums=[sha256(big)])
    assert complete.read_bytes() == big
    assert [status for _, _, status in server.request_log][2:] == [416]


def test_random_faults_still_succeed_after_retries(root, serve, tmp_path):
    for number in range(20):
        (root / "data" / f"f{number}.bin").write_bytes(random.Random(number).randbytes(5000))
    server = serve(root, FaultPlan(rate=0.3, seed=3, kinds=("503", "reset", "truncate")))
    client = HttpClient(HttpPolicy(retries=10, backoff_base_s=0.001, backoff_max_s=0.005))
    for number in range(20):
        payload = (root / "data" / f"f{number}.bin").read_bytes()
        dest = client.download(
            server.url_for(f"data/f{number}.bin"), tmp_path / f"f{number}.bin", size=5000
        )
        assert dest.read_bytes() == payload
    assert len(server.request_log) > 20


def test_per_host_concurrency_is_enforced(root, serve):
    (root / "data" / "slow.bin").write_bytes(b"s" * 2000)
    server = serve(root, FaultPlan(slow_bytes_per_s=20_000))
    client = HttpClient(HttpPolicy(per_host_concurrency=2, retries=0))
    url = server.url_for("data/slow.bin")
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            assert len(client.get(url).content) == 2000
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(server.request_log) == 8
    assert server.max_in_flight == 2


def test_per_host_rate_spaces_requests(root, serve):
    server = serve(root)
    client = HttpClient(HttpPolicy(per_host_rate=20.0))
    began = time.monotonic()
    for _ in range(10):
        client.get(server.url_for("data/small.txt"))
    assert time.monotonic() - began >= 0.4
    assert len(server.request_log) == 10


def test_user_agent_is_sent(root, serve):
    server = serve(root)
    HttpClient(FAST).get(server.url_for("data/small.txt"))
    agent = server.request_headers[0]["User-Agent"]
    assert agent == FAST.user_agent
    assert agent.startswith("treeoflife/") and "biodiversity dataset builder" in agent


def test_mirror_url():
    mirror = "http://127.0.0.1:8000/m"
    assert (
        mirror_url("https://eol.org/data/media_manifest.tgz", mirror)
        == "http://127.0.0.1:8000/m/eol.org/data/media_manifest.tgz"
    )
    assert (
        mirror_url("https://API.gbif.org:8443/v1/occ?q=1&x=2", mirror + "/")
        == "http://127.0.0.1:8000/m/api.gbif.org:8443/v1/occ?q=1&x=2"
    )
    assert mirror_url("https://eol.org/a", None) == "https://eol.org/a"


def test_checksum_parse_and_validation(tmp_path):
    digest = hashlib.sha256(b"abc").hexdigest()
    assert Checksum.parse(f"SHA256:{digest.upper()}") == Checksum("sha256", digest)
    assert str(Checksum.parse(f"sha256:{digest}")) == f"sha256:{digest}"
    assert Checksum.parse("md5:" + hashlib.md5(b"abc").hexdigest()).algorithm == "md5"
    for bad in ("sha256", "sha1:" + "0" * 40, "sha256:xyz", "md5:" + "0" * 31):
        with pytest.raises(TolError):
            Checksum.parse(bad)
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_digest(path, "sha256") == digest
    assert file_digest(path, "md5") == hashlib.md5(b"abc").hexdigest()
