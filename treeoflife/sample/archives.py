"""Deterministic bytes for the sample dumps: gzip, tar.gz and zip with fixed timestamps,
unquoted TSV and minimally quoted CSV, so that a re-run writes identical files."""

from __future__ import annotations

import csv
import gzip
import io
import random
import tarfile
import uuid
import zipfile
from pathlib import Path

TAR_MTIME = 1_700_000_000  # 2023-11-14, every tar member
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # every zip member


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def unique_int(rng: random.Random, low: int, high: int, used: set[int]) -> int:
    value = rng.randrange(low, high)
    while value in used:
        value = rng.randrange(low, high)
    used.add(value)
    return value


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def _with_folders(names: list[str]) -> list[str]:
    """The names plus every parent folder (`a/`, `a/b/`), sorted: folders precede contents."""
    folders = {n.rsplit("/", i)[0] + "/" for n in names for i in range(1, n.count("/") + 1)}
    return sorted(folders | set(names))


def tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    """A gzipped tar of name → bytes, with entries for the parent folders; fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in _with_folders(list(members)):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uname, info.gname = TAR_MTIME, "", ""
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(members[name]), 0o644
                tar.addfile(info, io.BytesIO(members[name]))
    return gzip_bytes(buf.getvalue())


def zip_bytes(members: dict[str, bytes], *, folders: bool = True) -> bytes:
    """A deflated zip of name → bytes, with folder entries unless `folders` is False."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in _with_folders(list(members)) if folders else sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, members[name], compresslevel=6)
    return buf.getvalue()


def tsv_bytes(rows: list[list[str]]) -> bytes:
    """Tab-separated with no quoting at all (the iNat, BIOSCAN-1M, GBIF, COL, DH dialect)."""
    assert not any("\t" in value or "\n" in value for row in rows for value in row)
    return "".join("\t".join(row) + "\n" for row in rows).encode()


def csv_bytes(rows: list[list[str]]) -> bytes:
    """Comma CSV quoted only where needed (RFC 4180, as Ruby's CSV and pandas write it)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
