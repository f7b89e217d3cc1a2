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


def match_members(archive: Path, pattern: str) -> list[str]:
    """Members whose full name or basename match a glob, in natural order (file_2 < file_10)."""
    names = [
        name
        for name in list_members(archive)
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(PurePosixPath(name).name, pattern)
    ]
    if not names:
        raise TolError(f"{archive}: no member matches {pattern!r}; is this the right file?")
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def extract_member(archive: Path, name: str, dest_dir: Path) -> Path:
    """Extract one member under dest_dir (atomically: temp name, then rename); reuse if present."""
    relative = check_member_name(archive, name)
    target = dest_dir.joinpath(*relative.parts)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with _open_member(archive, name) as source, partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, 4 << 20)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, target)
    return target


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
