"""The `tol pull` stage: download a source's metadata files and ingest them into the catalog.

A pull of one source is one unit: downloads are resumable and verified; ingest runs in a
single DuckDB transaction that replaces the source's raw tables, quarantine rows and
records, so a killed run leaves the previous state and a re-run adds nothing twice. A
source whose inputs have not changed since its last pull is skipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from treeoflife.errors import TolError
from treeoflife.http import HttpClient, file_digest
from treeoflife.manifest import ManifestFile, SourceManifest
from treeoflife.sources import LOADER_VERSION, LOADERS
from treeoflife.sources.loading import PullContext
from treeoflife.workspace import Workspace

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int | None], Callable[[int, int | None], None]]


@dataclass(frozen=True)
class PullResult:
    source: str
    version: str
    records: int
    quarantined: int
    skipped: bool


def download_dir(workspace: Workspace, manifest: SourceManifest) -> Path:
    return workspace.downloads / manifest.name / manifest.version


def download_source_files(
    workspace: Workspace,
    manifest: SourceManifest,
    client: HttpClient,
    *,
    mirror: str | None = None,
    roles: list[str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Path]:
    """Download (or reuse, when already verified) the files a pull needs, by role."""
    folder = download_dir(workspace, manifest)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [manifest.file(role) for role in roles] if roles else manifest.pull_files()
    paths: dict[str, Path] = {}
    for spec in wanted:
        url = manifest.download_url(spec.role, mirror)
        dest = folder / spec.filename
        callback = progress(f"{manifest.name}: {spec.filename}", spec.size) if progress else None
        paths[spec.role] = client.download(
            url, dest, size=spec.size, checksums=spec.checksums, progress=callback
        )
    return paths


def _file_digests(
    workspace: Workspace, manifest: SourceManifest, files: dict[str, Path]
) -> dict[str, str]:
    """sha256 per role: pinned in the manifest, remembered from an earlier pull, or computed."""
    with workspace.connect() as con:
        known = {
            path: (size, sha)
            for path, size, sha in con.execute(
                "SELECT path, size, sha256 FROM downloads WHERE source = ?", [manifest.name]
            ).fetchall()
        }
    digests = {}
    for role, path in files.items():
        spec: ManifestFile = manifest.file(role)
        pinned = next((c.hexdigest for c in spec.checksums if c.algorithm == "sha256"), None)
        size, sha = known.get(str(path), (None, None))
        if not pinned and size != path.stat().st_size:
            sha = None
        digests[role] = pinned or sha or file_digest(path, "sha256")
    return digests


def _fingerprint(manifest: SourceManifest, digests: dict[str, str]) -> str:
    """What the ingest depends on: loader version, manifest version and options, the files."""
    digest = hashlib.sha256(f"{LOADER_VERSION}|{manifest.version}|{manifest.options}".encode())
    for role in sorted(digests):
        digest.update(f"|{role}:{digests[role]}".encode())
    return digest.hexdigest()


def _record_downloads(
    con, manifest: SourceManifest, files: dict[str, Path], digests: dict[str, str], mirror
) -> None:
    for role, path in files.items():
        con.execute(
            "INSERT OR REPLACE INTO downloads VALUES (?, ?, ?, ?, ?, ?, now())",
            [
                manifest.name,
                role,
                manifest.download_url(role, mirror),
                str(path),
                path.stat().st_size,
                digests[role],
            ],
        )


def pull_source(
    workspace: Workspace,
    manifest: SourceManifest,
    client: HttpClient,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> PullResult:
    """Download and ingest one source; skip it when its inputs are unchanged (unless force)."""
    loader = LOADERS.get(manifest.name)
    if loader is None:
        raise TolError(
            f"{manifest.path}: source {manifest.name!r} has no loader; "
            f"known sources: {', '.join(sorted(LOADERS))}"
        )
    files = download_source_files(workspace, manifest, client, mirror=mirror, progress=progress)
    digests = _file_digests(workspace, manifest, files)
    fingerprint = _fingerprint(manifest, digests)
    with workspace.connect() as con:
        previous = con.execute(
            "SELECT fingerprint, records, quarantined FROM pulls WHERE source = ?", [manifest.name]
        ).fetchone()
        if previous and previous[0] == fingerprint and not force:
            log.info("%s: inputs unchanged since the last pull; nothing to do", manifest.name)
            return PullResult(manifest.name, manifest.version, previous[1], previous[2], True)
        context = PullContext(
            con=con,
            manifest=manifest,
            files=files,
            extract_dir=download_dir(workspace, manifest) / "extracted",
        )
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM record_images WHERE source = ?", [manifest.name])
            con.execute("DELETE FROM source_taxa WHERE source = ?", [manifest.name])
            con.execute("DELETE FROM quarantine WHERE source = ?", [manifest.name])
            con.execute("DROP TABLE IF EXISTS _rejected_lines")
            loader(context)
            records = con.execute(
                "SELECT count(*) FROM record_images WHERE source = ?", [manifest.name]
            ).fetchone()[0]
            quarantined = con.execute(
                "SELECT count(*) FROM quarantine WHERE source = ?", [manifest.name]
            ).fetchone()[0]
            _record_downloads(con, manifest, files, digests, mirror)
            con.execute(
                "INSERT OR REPLACE INTO pulls VALUES (?, ?, ?, ?, ?, now())",
                [manifest.name, manifest.version, fingerprint, records, quarantined],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return PullResult(manifest.name, manifest.version, records, quarantined, False)
