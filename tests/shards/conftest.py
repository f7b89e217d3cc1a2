"""Release fixtures: a pulled sample workspace completed with taxa, images (real JPEGs in
real staging tars) and duplicates, as the taxonomy, images and dedup stages would leave it."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from treeoflife.shards import ShardOptions, shard_release
from treeoflife.workspace import Workspace

STAGING_UNIT = 100  # records per staging tar
FAILED_EVERY = 29  # every 29th record's image failed to fetch
DUPLICATE_EVERY = 31  # every 31st record is a planted duplicate of the record before it


def tiny_jpeg(seed: int) -> bytes:
    """A small, valid, distinct JPEG per record."""
    image = Image.new("RGB", (24, 16), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    for x in range(0, 24, 3):
        image.putpixel((x, seed % 16), (255 - x * 5, 0, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def copy_workspace(source: Workspace, target: Path) -> Workspace:
    shutil.copytree(source.root, target)
    return Workspace(target)


def complete_stages(workspace: Workspace) -> dict:
    """Fill taxa_resolved, images (+ staging tars) and duplicates for every record."""
    with workspace.connect() as con:
        con.execute("DELETE FROM taxa_resolved")
        con.execute("DELETE FROM images")
        con.execute("DELETE FROM duplicates")
        # Resolved taxonomy = the source's ranks, Metazoa read as Animalia; common names only
        # where the source had one (the rest exercise the fallback rule).
        con.execute(
            """
            INSERT INTO taxa_resolved
            SELECT record_id,
                   CASE WHEN kingdom = 'Metazoa' THEN 'Animalia' ELSE kingdom END,
                   phylum, class, "order", family, genus, species, common_name,
                   'exact', 'gbif', source_taxon_id,
                   CASE WHEN species IS NOT NULL THEN 'resolved'
                        WHEN coalesce(kingdom, phylum, class, "order", family, genus) IS NOT NULL
                        THEN 'partial' ELSE 'unresolved' END
            FROM records
            """
        )
        record_ids = [
            r[0] for r in con.execute("SELECT record_id FROM records ORDER BY record_id").fetchall()
        ]
        staging = workspace.root / "staging"
        staging.mkdir(exist_ok=True)
        rows = []
        for start in range(0, len(record_ids), STAGING_UNIT):
            shard = f"staging/unit-{start // STAGING_UNIT:06d}.tar"
            with tarfile.open(workspace.root / shard, "w") as tar:
                for offset, record_id in enumerate(record_ids[start : start + STAGING_UNIT]):
                    n = start + offset
                    if n % FAILED_EVERY == 5:
                        rows.append(
                            (record_id, "failed", "HTTP 404", None, None, None, None, None, None)
                        )
                        continue
                    data = tiny_jpeg(n)
                    member = f"{n:08x}.jpg"
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    rows.append(
                        (record_id, "ok", None, f"{n:064x}", f"{n:016x}", 24, 16, shard, member)
                    )
        con.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        dups = [
            (record_ids[n], record_ids[n - 1], "exact" if n % 2 else "near", 0 if n % 2 else 3)
            for n in range(DUPLICATE_EVERY, len(record_ids), DUPLICATE_EVERY)
        ]
        con.executemany("INSERT INTO duplicates VALUES (?, ?, ?, ?)", dups)
    return {"records": len(record_ids), "duplicates": len(dups)}


@pytest.fixture(scope="session")
def staged_workspace(pulled_workspace, tmp_path_factory) -> Workspace:
    """Pulled + taxa + images + dedup; tests copy it before writing."""
    workspace = copy_workspace(pulled_workspace, tmp_path_factory.mktemp("staged") / "ws")
    complete_stages(workspace)
    return workspace


SMALL_SHARDS = ShardOptions(min_shards=3, shard_samples=40)


@pytest.fixture(scope="session")
def released_workspace(staged_workspace, tmp_path_factory) -> Workspace:
    """A workspace with a finished release (read-only for tests)."""
    workspace = copy_workspace(staged_workspace, tmp_path_factory.mktemp("released") / "ws")
    shard_release(workspace, SMALL_SHARDS)
    return workspace


@pytest.fixture
def release_copy(released_workspace, tmp_path) -> Path:
    """A private copy of the release folder, for tests that damage it."""
    target = tmp_path / "release"
    shutil.copytree(released_workspace.root / "release", target)
    return target
