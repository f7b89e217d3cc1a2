"""The `tol pull` stage: download a source's metadata files and ingest them into the catalog.

A pull of one source is one unit: downloads are resumable and verified; ingest runs in a
single DuckDB transaction that replaces the source's raw tables, quarantine rows and
records, so a killed run leaves the previous state and a re-run adds nothing twice. A
source whose inputs have not changed since its last pull is skipped. Sources with several
big files (`STAGERS`) read them side by side into staging tables first; the transaction
renames those into place, so it stays all-or-nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb

from treeoflife.errors import TolError
from treeoflife.http import HttpClient, file_digest
from treeoflife.manifest import ManifestFile, SourceManifest
from treeoflife.sources import LOADER_VERSION, LOADERS, inat
from treeoflife.sources.loading import PullContext, drop_staged, timed_step
from treeoflife.workspace import Workspace

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int | None], Callable[[int, int | None], None]]

# Sources whose big files are read side by side before the transaction (`stage_tables`).
STAGERS: dict[str, Callable[[PullContext], None]] = {"inat-open-data": inat.stage_open_data}


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


def _known_digests(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, tuple[int, str]]:
    """(size, sha256) by path of the files an earlier pull of `source` ingested."""
    return {
        path: (size, sha)
        for path, size, sha in con.execute(
            "SELECT path, size, sha256 FROM downloads WHERE source = ?", [source]
        ).fetchall()
    }


def _file_digests(
    known: dict[str, tuple[int, str]], manifest: SourceManifest, files: dict[str, Path]
) -> dict[str, str]:
    """sha256 per role: pinned in the manifest, remembered from an earlier pull, or computed."""
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


def _ingest(
    context: PullContext,
    digests: dict[str, str],
    fingerprint: str,
    mirror: str | None,
    loader: Callable[[PullContext], None],
) -> tuple[int, int]:
    """The one transaction of a pull: replace the source's rows, run the loader, commit.

    Returns the source's record and quarantine counts.
    """
    con, manifest, files = context.con, context.manifest, context.files
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM record_rows WHERE source = ?", [manifest.name])
        con.execute("DELETE FROM rights_holders WHERE source = ?", [manifest.name])
        con.execute("DELETE FROM source_taxa WHERE source = ?", [manifest.name])
        con.execute("DELETE FROM quarantine WHERE source = ?", [manifest.name])
        con.execute("DROP TABLE IF EXISTS _rejected_lines")
        loader(context)
        records = con.execute(
            "SELECT count(*) FROM record_rows WHERE source = ?", [manifest.name]
        ).fetchone()[0]
        quarantined = con.execute(
            "SELECT count(*) FROM quarantine WHERE source = ?", [manifest.name]
        ).fetchone()[0]
        _record_downloads(con, manifest, files, digests, mirror)
        con.execute(
            "INSERT OR REPLACE INTO pulls VALUES (?, ?, ?, ?, ?, now())",
            [manifest.name, manifest.version, fingerprint, records, quarantined],
        )
        with timed_step(manifest.name, "commit"):
            con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return records, quarantined


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
    with workspace.connect() as con, ThreadPoolExecutor(max_workers=1) as hasher:
        previous = con.execute(
            "SELECT fingerprint, records, quarantined FROM pulls WHERE source = ?", [manifest.name]
        ).fetchone()
        # The digests go into the fingerprint. With no earlier pull to compare with (or
        # --force), they are hashed while the files are read instead of before.
        digesting = hasher.submit(
            _file_digests, _known_digests(con, manifest.name), manifest, files
        )
        if previous and not force:
            with timed_step(manifest.name, "sha256"):
                fingerprint = _fingerprint(manifest, digesting.result())
            if previous[0] == fingerprint:
                log.info("%s: inputs unchanged since the last pull; nothing to do", manifest.name)
                return PullResult(manifest.name, manifest.version, previous[1], previous[2], True)
        context = PullContext(
            con=con,
            manifest=manifest,
            files=files,
            extract_dir=download_dir(workspace, manifest) / "extracted",
        )
        stager = STAGERS.get(manifest.name)
        try:
            if stager is not None:
                with timed_step(manifest.name, "read files"):
                    stager(context)  # committed staging tables, renamed into place by the loader
            with timed_step(manifest.name, "sha256"):
                digests = digesting.result()
            fingerprint = _fingerprint(manifest, digests)
            records, quarantined = _ingest(context, digests, fingerprint, mirror, loader)
        finally:
            drop_staged(context)
    return PullResult(manifest.name, manifest.version, records, quarantined, False)
