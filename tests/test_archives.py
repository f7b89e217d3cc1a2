import io
import tarfile
import zipfile

import pytest

from treeoflife.archives import extract_member, list_members, match_members, read_member
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
    assert match_members(archive, "media_manifest_*.csv") == [
        "dump/media_manifest_1.csv",
        "dump/media_manifest_2.csv",
        "dump/media_manifest_10.csv",
    ]
    with pytest.raises(TolError, match="no member matches"):
        match_members(archive, "nothing*")
    assert sorted(list_members(archive)) == sorted(names)


def test_extract_is_atomic_and_reused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"d/x.csv": b"hello"})
    out = extract_member(archive, "d/x.csv", tmp_path / "out")
    assert out.read_bytes() == b"hello"
    assert not list((tmp_path / "out").rglob("*.part"))
    out.write_bytes(b"kept")
    assert extract_member(archive, "d/x.csv", tmp_path / "out").read_bytes() == b"kept"
