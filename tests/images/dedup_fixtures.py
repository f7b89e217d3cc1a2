"""Dedup test fixtures: fill a pulled sample workspace's `images` table straight from the
bundled sample files (the same decode and hashes as `tol images fetch`, without the network),
and read the planted duplicates of `expected.json` as record ids."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from treeoflife.images.phash import pdq_hex
from treeoflife.images.transform import ImageRejected, ResizeSpec, decode_image, process_image
from treeoflife.manifest import load_pipeline
from treeoflife.sample import SAMPLE_FILES
from treeoflife.workspace import Workspace


def sample_path(url: str) -> Path:
    """The bundled copy of a source URL (the sample is laid out `<host>/<path>`)."""
    parsed = urlparse(url)
    return SAMPLE_FILES / parsed.netloc / parsed.path.lstrip("/")


def _archive_members(archive: Path) -> dict[str, bytes]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return {name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
    with tarfile.open(archive) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def sample_image_bytes(workspace: Workspace) -> dict[str, bytes | None]:
    """record_id -> the image bytes the sample serves for it (None where none is served)."""
    pipeline = load_pipeline("sample")
    with workspace.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT record_id, source, url, archive, member FROM record_images ORDER BY 1"
        ).fetchall()
    archives: dict[tuple[str, str], dict[str, bytes]] = {}
    found: dict[str, bytes | None] = {}
    for record_id, source, url, archive, member in rows:
        if url:
            path = sample_path(url)
            found[record_id] = path.read_bytes() if path.is_file() else None
            continue
        key = (source, archive)
        if key not in archives:
            archive_url = pipeline.sources[source].file(archive).url
            archives[key] = _archive_members(sample_path(archive_url))
        found[record_id] = archives[key].get(member)
    return found


def fill_images(workspace: Workspace, *, with_pdq: bool = False) -> dict[str, bytes | None]:
    """Write one `images` row per record as fetch would (ok with hashes, or failed + reason);
    with_pdq adds an `images.pdq` column (64 hex digits). Returns the bytes per record."""
    raw_by_record = sample_image_bytes(workspace)
    rows = []
    for record_id, raw in raw_by_record.items():
        if raw is None:
            rows.append((record_id, "failed", "http-404", None, None, None, None, None))
            continue
        try:
            processed = process_image(raw, ResizeSpec())
        except ImageRejected as exc:
            sha256 = hashlib.sha256(raw).hexdigest()
            rows.append((record_id, "failed", exc.reason, sha256, None, None, None, None))
            continue
        pdq = pdq_hex(decode_image(raw))[0] if with_pdq else None
        rows.append(
            (record_id, "ok", None, processed.sha256, processed.phash, processed.width,
             processed.height, pdq)
        )  # fmt: skip
    with workspace.connect() as con:
        if with_pdq:
            con.execute("ALTER TABLE images ADD COLUMN IF NOT EXISTS pdq VARCHAR")
        con.execute("DELETE FROM images")
        columns = "record_id, status, error, sha256, phash, width, height"
        if with_pdq:
            con.executemany(f"INSERT INTO images ({columns}, pdq) VALUES (?,?,?,?,?,?,?,?)", rows)
        else:
            con.executemany(
                f"INSERT INTO images ({columns}) VALUES (?,?,?,?,?,?,?)", [r[:7] for r in rows]
            )
    return raw_by_record


def copy_workspace(workspace: Workspace, dest: Path) -> Workspace:
    """A writable copy of a (session-scoped, read-only) workspace."""
    shutil.copytree(workspace.root, dest)
    return Workspace(dest)


def rid(ref: dict) -> str:
    return f"{ref['source']}:{ref['source_id']}"


def expected_clusters(expected: dict) -> list[set[str]]:
    """The planted duplicate clusters: each exact group, and each near pair merged with any
    group it touches (so a near pair of an exact-duplicated image is one cluster)."""
    clusters = [{rid(ref) for ref in group} for group in expected["exact_duplicate_groups"]]
    for pair in expected["near_duplicate_pairs"]:
        merged = {rid(pair["a"]), rid(pair["b"])}
        for cluster in [c for c in clusters if c & merged]:
            merged |= cluster
            clusters.remove(cluster)
        clusters.append(merged)
    return clusters
