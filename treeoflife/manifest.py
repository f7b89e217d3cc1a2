"""Typed views of the TOML files in `manifests/` (one per source version) and `pipelines/`.

A manifest pins what to download (URLs, sizes, checksums) and how the source is licensed;
a pipeline names the manifests and stage options of one dataset build.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from treeoflife.errors import TolError
from treeoflife.http import Checksum, mirror_url

PULL_STAGE = "pull"
IMAGES_STAGE = "images"


@dataclass(frozen=True)
class ManifestFile:
    """One file of a source, by the role its loader knows it as."""

    role: str
    url: str
    member: str | None = None
    size: int | None = None
    checksums: tuple[Checksum, ...] = ()
    stage: str = PULL_STAGE
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("?", 1)[0]


@dataclass(frozen=True)
class SourceManifest:
    """One version of one source: where its files are and what it may be used for."""

    name: str
    version: str
    title: str
    base_url: str
    files: dict[str, ManifestFile]
    license: str = ""
    license_notes: str = ""
    homepage: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def pull_files(self) -> list[ManifestFile]:
        return [f for f in self.files.values() if f.stage == PULL_STAGE]

    def file(self, role: str) -> ManifestFile:
        try:
            return self.files[role]
        except KeyError:
            raise TolError(
                f"manifest {self.path or self.name} has no [files.{role}] entry, "
                f"which the {self.name} loader needs"
            ) from None

    def download_url(self, role: str, mirror: str | None) -> str:
        return mirror_url(self.file(role).url, mirror)


@dataclass(frozen=True)
class Pipeline:
    """A dataset build: which source manifests, which stages, which options."""

    name: str
    sources: dict[str, SourceManifest]
    stages: dict[str, dict[str, Any]]
    description: str = ""
    path: Path | None = None


def repo_dir(name: str) -> Path:
    """`manifests/` or `pipelines/`: the checkout's copy, else the installed package's."""
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("treeoflife") / name))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise TolError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise TolError(f"{path}: invalid TOML: {exc}") from None


def _require(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table or table[key] in ("", None):
        raise TolError(f"{where}: missing required field `{key}`")
    return table[key]


def load_manifest(path: Path) -> SourceManifest:
    """Parse and check one manifest file."""
    doc = _read_toml(path)
    source = doc.get("source")
    if not isinstance(source, dict):
        raise TolError(f"{path}: missing [source] table")
    base_url = _require(source, "base_url", f"{path} [source]")
    files: dict[str, ManifestFile] = {}
    for role, spec in (doc.get("files") or {}).items():
        where = f"{path} [files.{role}]"
        rel = _require(spec, "path", where)
        checksums = tuple(
            Checksum(algorithm, spec[algorithm])
            for algorithm in ("sha256", "md5")
            if spec.get(algorithm)
        )
        stage = spec.get("stage", PULL_STAGE)
        if stage not in (PULL_STAGE, IMAGES_STAGE):
            raise TolError(f"{where}: stage must be 'pull' or 'images', not {stage!r}")
        known = {"path", "member", "size", "sha256", "md5", "stage"}
        files[role] = ManifestFile(
            role=role,
            url=urljoin(base_url, rel),
            member=spec.get("member"),
            size=spec.get("size"),
            checksums=checksums,
            stage=stage,
            extra={k: v for k, v in spec.items() if k not in known},
        )
    return SourceManifest(
        name=_require(source, "name", f"{path} [source]"),
        version=str(_require(source, "version", f"{path} [source]")),
        title=source.get("title", ""),
        base_url=base_url,
        files=files,
        license=source.get("license", ""),
        license_notes=source.get("license_notes", ""),
        homepage=source.get("homepage", ""),
        options=doc.get("options", {}),
        path=path,
    )


def resolve_pipeline_path(name_or_path: str | Path) -> Path:
    """A pipeline given as a path, or by name (`sample`) from `pipelines/`."""
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = repo_dir("pipelines") / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    raise TolError(f"pipeline {name_or_path}: no such file, and no pipelines/{name_or_path}.toml")


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    """Parse a pipeline file and the manifests it names (relative to `manifests/`)."""
    path = resolve_pipeline_path(name_or_path)
    doc = _read_toml(path)
    meta = doc.get("pipeline", {})
    manifests_dir = repo_dir("manifests")
    sources: dict[str, SourceManifest] = {}
    for name, rel in (doc.get("sources") or {}).items():
        manifest_path = Path(rel) if Path(rel).is_absolute() else manifests_dir / rel
        manifest = load_manifest(manifest_path)
        if manifest.name != name:
            raise TolError(
                f"{path} [sources]: {name} points at {manifest_path}, "
                f"whose source is {manifest.name}"
            )
        sources[name] = manifest
    if not sources:
        raise TolError(f"{path}: the [sources] table names no manifests")
    return Pipeline(
        name=meta.get("name", path.stem),
        description=meta.get("description", ""),
        sources=sources,
        stages=doc.get("stages", {}),
        path=path,
    )


def find_manifest(source: str) -> SourceManifest:
    """The one pinned manifest in `manifests/` (not its sample/ folder) for a source name."""
    found = [
        manifest
        for path in sorted(repo_dir("manifests").glob("*.toml"))
        if (manifest := load_manifest(path)).name == source
    ]
    if len(found) != 1:
        where = ", ".join(str(m.path) for m in found) or "none"
        raise TolError(
            f"{len(found)} manifests in manifests/ pin source {source!r} ({where}); "
            "name one with --manifest or list it in the pipeline"
        )
    return found[0]
