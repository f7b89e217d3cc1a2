"""Safe access to members of the source archives (tar, tar.gz, tgz, zip).

Member names come from files we did not write: a name that is absolute or climbs out
with `..` is refused, never extracted (the tarfile/zipfile path-traversal class of bugs).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from treeoflife.errors import TolError, UnsafeArchiveMember


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def check_member_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveMember if it could escape the target folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise UnsafeArchiveMember(
            f"{archive}: member {name!r} would be written outside the extraction folder; "
            "the archive is refused (absolute paths and '..' are not allowed)"
        )
    return posix


def list_members(archive: Path) -> list[str]:
    """Names of the regular-file members, in archive order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return [info.filename for info in zf.infolist() if not info.is_dir()]
    with tarfile.open(archive) as tf:
        return [info.name for info in tf if info.isfile()]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def extract_member(archive: Path, name: str, dest_dir: Path) -> Path:
    """Extract one member under dest_dir (atomically: temp name, then rename); reuse if present."""
    relative = check_member_name(archive, name)
    target = dest_dir.joinpath(*relative.parts)
    if target.exists():
        return target
    with _open_member(archive, name) as source:
        _write_atomically(source, target)
    return target


def extract_matching(
    archive: Path, patterns: dict[str, str], dest_dirs: dict[str, Path]
) -> dict[str, list[tuple[str, Path]]]:
    """Extract the members matching each key's glob, in ONE pass over the archive.

    A multi-GB tar.gz (the iNat snapshot holds four dumps) is read once instead of once per
    member. Returns, per key, (member name, extracted path) in natural order. Names are
    checked before anything is written; a key whose glob matches nothing is an error.
    """
    found: dict[str, list[tuple[str, Path]]] = {key: [] for key in patterns}

    def wanted(name: str) -> list[str]:
        base = PurePosixPath(name).name
        return [
            key
            for key, glob in patterns.items()
            if fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(base, glob)
        ]

    def target(key: str, name: str) -> Path:
        return dest_dirs[key].joinpath(*check_member_name(archive, name).parts)

    if zipfile.is_zipfile(archive):
        for name in list_members(archive):
            for key in wanted(name):
                found[key].append((name, extract_member(archive, name, dest_dirs[key])))
    else:
        with tarfile.open(archive, mode="r|*") as stream:
            for info in stream:
                keys = wanted(info.name) if info.isfile() else []
                if not keys:
                    continue
                paths = [target(key, info.name) for key in keys]
                if not all(path.exists() for path in paths):
                    source = stream.extractfile(info)
                    data_path = paths[0]
                    _write_atomically(source, data_path)
                    for other in paths[1:]:
                        if not other.exists():
                            other.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(data_path, other)
                for key, path in zip(keys, paths, strict=True):
                    found[key].append((info.name, path))
    for key, members in found.items():
        if not members:
            raise TolError(
                f"{archive}: no member matches {patterns[key]!r}; is this the right file?"
            )
        members.sort(key=lambda item: _natural_key(item[0]))
    return found


def _write_atomically(source, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, 4 << 20)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, target)


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of one member (for images and other small members)."""
    check_member_name(archive, name)
    with _open_member(archive, name) as source:
        return source.read()


def _open_member(archive: Path, name: str):
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        try:
            return _ClosingReader(zf.open(name), zf)
        except KeyError:
            zf.close()
            raise TolError(f"{archive}: no member named {name!r}") from None
    tf = tarfile.open(archive)
    try:
        member = tf.getmember(name)
    except KeyError:
        tf.close()
        raise TolError(f"{archive}: no member named {name!r}") from None
    handle = tf.extractfile(member)
    if handle is None:
        tf.close()
        raise TolError(f"{archive}: member {name!r} is not a regular file")
    return _ClosingReader(handle, tf)


class _ClosingReader:
    """A member stream that also closes its archive."""

    def __init__(self, stream, archive) -> None:
        self._stream = stream
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stream.close()
        self._archive.close()
