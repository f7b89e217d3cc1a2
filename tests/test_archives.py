import io
import tarfile
import zipfile

import pytest

from treeoflife.archives import (
    extract_matching,
    extract_member,
    list_members,
    read_member,
)
from treeoflife.errors import TolError, UnsafeArchiveMember


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("make", [_tar, _zip])
@pytest.mark.parametrize("evil", ["../escape.csv", "/etc/passwd", "a/../../b.csv", "C:/x.csv"])
def test_escaping_member_names_are_refused(tmp_path, make, evil):
    archive = make(tmp_path / "a.arc", {"ok/file.csv": b"x", evil: b"evil"})
    with pytest.raises(UnsafeArchiveMember, match="outside the extraction folder"):
        extract_member(archive, evil, tmp_path / "out")
    with pytest.raises(UnsafeArchiveMember):
        read_member(archive, evil)
    assert not (tmp_path / "escape.csv").exists()
    assert extract_member(archive, "ok/file.csv", tmp_path / "out").read_bytes() == b"x"


def test_members_match_in_natural_order(tmp_path):
    names = {f"dump/media_manifest_{i}.csv": b"x" for i in (10, 2, 1)}
    archive = _tar(tmp_path / "m.tgz", names)
    found = extract_matching(archive, {"m": "media_manifest_*.csv"}, {"m": tmp_path / "m"})
    assert [name for name, _ in found["m"]] == [
        "dump/media_manifest_1.csv",
        "dump/media_manifest_2.csv",
        "dump/media_manifest_10.csv",
    ]
    assert sorted(list_members(archive)) == sorted(names)


def test_extract_is_atomic_and_reused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"d/x.csv": b"hello"})
    out = extract_member(archive, "d/x.csv", tmp_path / "out")
    assert out.read_bytes() == b"hello"
    assert not list((tmp_path / "out").rglob("*.part"))
    out.write_bytes(b"kept")
    assert extract_member(archive, "d/x.csv", tmp_path / "out").read_bytes() == b"kept"


def test_extract_matching_reads_a_tar_once_for_every_pattern(tmp_path):
    members = {f"snap/{n}.csv": n.encode() for n in ("photos", "taxa", "observers")}
    archive = _tar(tmp_path / "snap.tar.gz", members)
    found = extract_matching(
        archive,
        {"photos": "*/photos.csv", "taxa": "*/taxa.csv"},
        {"photos": tmp_path / "p", "taxa": tmp_path / "t"},
    )
    assert [name for name, _ in found["photos"]] == ["snap/photos.csv"]
    assert found["taxa"][0][1].read_bytes() == b"taxa"
    evil = _tar(tmp_path / "evil.tar.gz", {"../escape.csv": b"x", "ok.csv": b"y"})
    with pytest.raises(UnsafeArchiveMember):
        extract_matching(evil, {"all": "*.csv"}, {"all": tmp_path / "e"})
    assert not (tmp_path / "escape.csv").exists()
    with pytest.raises(TolError, match="no member matches"):
        extract_matching(archive, {"x": "nothing*"}, {"x": tmp_path / "x"})
