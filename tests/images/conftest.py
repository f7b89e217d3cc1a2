"""Fixtures for the image stage: synthetic JPEGs served over loopback, workspaces whose
records point at them, and copies of the pulled sample workspace (safe to write)."""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from treeoflife.http import HttpPolicy
from treeoflife.workspace import Workspace

SYNTHETIC_HOST = "img.test"
SYNTHETIC_COUNT = 60


def fast_policy(retries: int = 3) -> HttpPolicy:
    """Tiny backoffs: the loopback server recovers at once, tests need not wait."""
    return HttpPolicy(
        retries=retries,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_retry_after_s=0.1,
        connect_timeout_s=5,
        per_host_concurrency=16,
        read_timeout_s=5,
    )


def jpeg_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A distinct, real JPEG: coloured blocks drawn from `seed`."""
    rng = random.Random(seed)
    image = Image.new("RGB", size)
    block = 20
    for x in range(0, size[0], block):
        for y in range(0, size[1], block):
            colour = tuple(rng.randrange(256) for _ in range(3))
            image.paste(colour, (x, y, x + block, y + block))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def synthetic_site(tmp_path_factory) -> Path:
    """A mirror tree: <root>/img.test/{photos,noai,scoped}/NNN.jpg, served as-is."""
    root = tmp_path_factory.mktemp("site")
    for folder in ("photos", "noai", "scoped"):
        (root / SYNTHETIC_HOST / folder).mkdir(parents=True)
    for number in range(SYNTHETIC_COUNT):
        (root / SYNTHETIC_HOST / "photos" / f"{number:03d}.jpg").write_bytes(jpeg_bytes(number))
    noise = Image.frombytes("RGB", (500, 500), random.Random(7).randbytes(500 * 500 * 3))
    noise.save(root / SYNTHETIC_HOST / "photos" / "big.jpg", quality=95)  # ~400 KB
    for number in range(3):
        (root / SYNTHETIC_HOST / "noai" / f"{number:03d}.jpg").write_bytes(
            jpeg_bytes(1000 + number)
        )
        (root / SYNTHETIC_HOST / "scoped" / f"{number:03d}.jpg").write_bytes(
            jpeg_bytes(2000 + number)
        )
    return root


def url_workspace(root: Path, paths: list[str], source: str = "web") -> Workspace:
    """A workspace whose records are `https://img.test/<path>` URLs, one per path."""
    workspace = Workspace(root).init()
    with workspace.connect() as con:
        con.executemany(
            "INSERT INTO record_rows (source, source_id, url) VALUES (?, ?, ?)",
            [(source, path, f"https://{SYNTHETIC_HOST}/{path}") for path in paths],
        )
    return workspace


def photo_paths(count: int = SYNTHETIC_COUNT) -> list[str]:
    return [f"photos/{number:03d}.jpg" for number in range(count)]


@pytest.fixture
def photos_workspace(tmp_path) -> Workspace:
    return url_workspace(tmp_path / "ws", photo_paths())


@pytest.fixture
def sample_workspace(pulled_workspace, tmp_path) -> Workspace:
    """A private copy of the session's pulled sample workspace."""
    target = tmp_path / "sample-ws"
    shutil.copytree(pulled_workspace.root, target)
    return Workspace(target)


def shard_members(workspace: Workspace) -> dict[tuple[str, str], bytes]:
    """Every (shard, member) -> bytes found in the workspace's staging tars."""
    found = {}
    for shard in sorted((workspace.root / "staging").glob("*.tar")):
        relative = f"staging/{shard.name}"
        with tarfile.open(shard) as archive:
            for info in archive:
                found[(relative, info.name)] = archive.extractfile(info).read()
    return found


def image_rows(workspace: Workspace) -> list[tuple]:
    with workspace.connect() as con:
        return con.execute(
            "SELECT record_id, status, error, sha256, phash, width, height, shard, member "
            "FROM images ORDER BY record_id"
        ).fetchall()
