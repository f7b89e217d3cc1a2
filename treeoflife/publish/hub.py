"""Upload a release to the Hugging Face Hub, resumably: list what the repo already holds,
upload only the files that are missing or differ, in batches that keep the Hub's limits.

Planning (`plan_upload`) is a pure function of the local and remote listings; the upload
itself is huggingface_hub 2.x `upload_folder` (streamed, multi-commit, Xet-backed). The
token comes from the standard HF environment/config and is never printed or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from treeoflife.errors import TolError
from treeoflife.publish.card import CARD_NAME, build_card

log = logging.getLogger(__name__)

MAX_FILES_PER_REPO = 100_000  # Hub: < 100k files per repo
MAX_ENTRIES_PER_FOLDER = 10_000  # Hub: < 10k entries per folder
MAX_FILE_BYTES = 50 * 10**9  # Hub: 50 GB per file at most (20 GB recommended)
BATCH_FILES = 500  # files per upload_folder call (each call commits as it goes)
BATCH_BYTES = 50 * 10**9  # bytes per call: the unit a re-run can skip as a whole
GIT_HASHED_BYTES = 10 * 10**6  # small files may be stored in git: compare blob sha1s too
COMMIT_GAP_S = 30.0  # between calls, keeping well under the Hub's 128 commits/hour
# Upload order: data first, the card last (the repo page then shows a complete dataset).
LAST_FILES = ("manifest.json", CARD_NAME)


@dataclass(frozen=True)
class LocalFile:
    path: str  # POSIX path relative to the release folder
    size: int
    sha256: str
    git_sha1: str | None = None  # git blob id, for files small enough to live in git


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # LFS/Xet files
    blob_id: str | None = None  # git blob id


@dataclass
class PublishPlan:
    """What `tol publish` would do (dry run) or did."""

    repo_id: str
    release_dir: Path
    files: list[LocalFile]
    upload: list[LocalFile]
    unchanged: list[str]
    batches: list[list[str]]
    card: str
    dry_run: bool = True
    remote_checked: bool = False
    uploaded_batches: int = 0
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.upload)

    def summary(self) -> str:
        verb = "would upload" if self.dry_run else "uploaded"
        remote = "" if self.remote_checked else " (remote not checked)"
        return (
            f"{self.repo_id}: {verb} {len(self.upload)} of {len(self.files)} files, "
            f"{self.upload_bytes / 1e6:.1f} MB in {len(self.batches)} batches; "
            f"{len(self.unchanged)} already there{remote}"
        )


def _digests(path: Path, size: int) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode()) if size <= GIT_HASHED_BYTES else None
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            if git is not None:
                git.update(chunk)
    return sha.hexdigest(), git.hexdigest() if git else None


def list_local(release_dir: Path) -> list[LocalFile]:
    """Every file of the release (hidden and partial files left out), with digests; shard
    digests come from manifest.json rather than a second read of every tar."""
    manifest_path = release_dir / "manifest.json"
    if not manifest_path.is_file():
        raise TolError(f"{manifest_path} is missing: run `tol shard` (and `tol verify`) first")
    known = {
        s["path"]: (s["bytes"], s["sha256"])
        for s in json.loads(manifest_path.read_text())["shards"]
    }
    files = []
    for path in sorted(release_dir.rglob("*")):
        rel = path.relative_to(release_dir).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        if ".partial" in path.name:
            continue
        size = path.stat().st_size
        if rel in known and known[rel][0] == size and size > GIT_HASHED_BYTES:
            files.append(LocalFile(rel, size, known[rel][1]))
            continue
        sha, git = _digests(path, size)
        files.append(LocalFile(rel, size, sha, git))
    return files


def check_hub_limits(files: Iterable[LocalFile]) -> None:
    """Refuse a layout the Hub would reject: too many files, crowded folders, huge files."""
    files = list(files)
    if len(files) >= MAX_FILES_PER_REPO:
        raise TolError(
            f"{len(files)} files: the Hub takes < {MAX_FILES_PER_REPO} per repo; "
            "raise --shard-size so fewer, larger shards are written"
        )
    children: dict[str, set[str]] = {}
    for f in files:
        parts = PurePosixPath(f.path).parts
        for depth in range(len(parts)):
            children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    for folder, names in children.items():
        if len(names) >= MAX_ENTRIES_PER_FOLDER:
            raise TolError(
                f"folder {folder or '/'} has {len(names)} entries: the Hub takes "
                f"< {MAX_ENTRIES_PER_FOLDER} per folder; raise --shard-size"
            )
    for f in files:
        if f.size > MAX_FILE_BYTES:
            raise TolError(
                f"{f.path} is {f.size / 1e9:.1f} GB: the Hub takes files up to "
                f"{MAX_FILE_BYTES // 10**9} GB; lower --shard-size"
            )


def same_file(local: LocalFile, remote: RemoteFile | None) -> bool:
    """Whether the remote copy already has these bytes (sha256 for LFS/Xet, blob id for git)."""
    if remote is None or remote.size != local.size:
        return False
    if remote.sha256:
        return remote.sha256 == local.sha256
    return bool(remote.blob_id) and remote.blob_id == local.git_sha1


def _upload_rank(path: str) -> tuple[int, str]:
    if path in LAST_FILES:
        return 2 + LAST_FILES.index(path), path
    return (0 if path.endswith(".tar") else 1), path


def plan_upload(
    local: list[LocalFile],
    remote: dict[str, RemoteFile],
    batch_files: int = BATCH_FILES,
    batch_bytes: int = BATCH_BYTES,
) -> tuple[list[LocalFile], list[str], list[list[str]]]:
    """(files to upload, paths already there, upload batches): pure, from two listings.

    Batches hold at most `batch_files` files and about `batch_bytes` bytes; shards go
    first, the catalog next, manifest.json and README.md last, each in its own batch.
    """
    upload = sorted(
        (f for f in local if not same_file(f, remote.get(f.path))),
        key=lambda f: _upload_rank(f.path),
    )
    unchanged = sorted(f.path for f in local if same_file(f, remote.get(f.path)))
    batches: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for f in upload:
        last = f.path in LAST_FILES
        full = len(current) >= batch_files or (current and current_bytes + f.size > batch_bytes)
        if current and (full or last):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(f.path)
        current_bytes += f.size
        if last:
            batches.append(current)
            current, current_bytes = [], 0
    if current:
        batches.append(current)
    return upload, unchanged, batches


def list_remote(api, repo_id: str) -> dict[str, RemoteFile]:
    """The repo's files with their digests; empty when the repo does not exist yet."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
        remote = {}
        for entry in entries:
            if isinstance(entry, RepoFile):
                lfs = getattr(entry, "lfs", None)
                remote[entry.path] = RemoteFile(
                    entry.path,
                    entry.size,
                    sha256=getattr(lfs, "sha256", None) if lfs else None,
                    blob_id=entry.blob_id,
                )
        return remote
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return {}  # no repo, or a repo without a commit yet: nothing is there


def hub_token() -> str | None:
    """The token from HF_TOKEN or `hf auth login`'s store (never printed)."""
    from huggingface_hub import get_token

    return get_token()


def publish_release(
    release_dir: Path,
    repo_id: str,
    dry_run: bool = True,
    private: bool = False,
    check_remote: bool = False,
    api=None,
    on_batch: Callable[[int, int, list[str]], None] | None = None,
    commit_gap_s: float = COMMIT_GAP_S,
) -> PublishPlan:
    """Plan (dry run) or perform the upload of `release_dir` to dataset repo `repo_id`.

    A dry run touches no network unless `check_remote`; a real run creates the repo if
    needed, lists it, and uploads only what is missing, batch by batch, so re-running
    after an interruption continues where it stopped.
    """
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise TolError(f"--repo-id {repo_id!r}: give it as ORG/NAME")
    card = str(build_card(release_dir))
    card_path = release_dir / CARD_NAME
    if not card_path.is_file() or card_path.read_text() != card:
        card_path.write_text(card)
    local = list_local(release_dir)
    check_hub_limits(local)
    remote: dict[str, RemoteFile] = {}
    token = None
    if not dry_run or check_remote:
        token = hub_token()
        if token is None and not dry_run:
            raise TolError(
                "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then re-run"
            )
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        if not dry_run:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        remote = list_remote(api, repo_id)
    upload, unchanged, batches = plan_upload(local, remote)
    plan = PublishPlan(
        repo_id=repo_id,
        release_dir=release_dir,
        files=local,
        upload=upload,
        unchanged=unchanged,
        batches=batches,
        card=card,
        dry_run=dry_run,
        remote_checked=bool(api is not None),
    )
    if dry_run:
        return plan
    for number, batch in enumerate(batches, start=1):
        if number > 1 and commit_gap_s:
            time.sleep(commit_gap_s)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=release_dir,
            allow_patterns=batch,
            commit_message=f"tol publish: {len(batch)} files (batch {number}/{len(batches)})",
        )
        plan.uploaded_batches = number
        if on_batch is not None:
            on_batch(number, len(batches), batch)
    plan.url = f"https://huggingface.co/datasets/{repo_id}"
    return plan
