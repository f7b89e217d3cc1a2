"""The bundled sample: the generator is deterministic, the manifests pin the files, and the
planted rows and images are as `expected.json` says."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import tarfile
import tomllib
import zipfile
from functools import cache
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from treeoflife.sample import SAMPLE_EXPECTED, SAMPLE_FILES
from treeoflife.sample.generate import REPO_MANIFESTS, generate_sample, mirror_path

INAT = "inaturalist-open-data.s3.amazonaws.com"
UNQUOTED_TSVS = [  # (file under files/, member inside it or None)
    *[(f"{INAT}/{name}.csv.gz", None) for name in ("photos", "observations", "taxa", "observers")],
    *[(f"{INAT}/metadata/inaturalist-open-data-20241127.tar.gz",
       f"inaturalist-open-data-20241127/{name}.csv") for name in ("photos", "taxa", "observers")],
    ("zenodo.org/records/8030065/files/BIOSCAN_Insect_Dataset_metadata.tsv", None),
    ("hosted-datasets.gbif.org/datasets/backbone/2023-08-28/backbone.zip", "Taxon.tsv"),
    ("download.checklistbank.org/col/annual/2024_coldp.zip", "NameUsage.tsv"),
    ("editors.eol.org/uploaded_resources/00a/db4/dh21.zip", "taxon.tab"),
]  # fmt: skip
EOL_MANIFEST = "eol.org/data/media_manifest.tgz"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out / "files", out / "expected.json", out / "manifests")
    return out


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(SAMPLE_EXPECTED.read_text())


def digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@cache
def archive_members(path: Path) -> dict[str, bytes]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def file_bytes(path: str, member: str | None = None) -> bytes:
    """A file under the committed sample, a member inside it, gunzipped if it is `.gz`."""
    if member:
        return archive_members(SAMPLE_FILES / path)[member]
    data = (SAMPLE_FILES / path).read_bytes()
    return gzip.decompress(data) if path.endswith(".gz") and not path.endswith(".tar.gz") else data


def image_bytes(image: dict[str, str]) -> bytes:
    return file_bytes(image["file"], image.get("member"))


def by_ref(expected: dict) -> dict[tuple[str, str], dict]:
    return {(s, r["source_id"]): r for s, rs in expected["records"].items() for r in rs}


def phash(data: bytes) -> imagehash.ImageHash:
    with Image.open(io.BytesIO(data)) as image:
        return imagehash.phash(image)


def test_generator_is_deterministic(generated: Path, tmp_path: Path) -> None:
    generate_sample(tmp_path / "files", tmp_path / "expected.json", tmp_path / "manifests")
    assert digests(tmp_path) == digests(generated)


@pytest.mark.parametrize("where", ["generated", "committed"])
def test_manifests_pin_the_files(where: str, generated: Path) -> None:
    files, manifests = (
        (generated / "files", generated / "manifests")
        if where == "generated"
        else (SAMPLE_FILES, REPO_MANIFESTS)
    )
    names = sorted(p.stem for p in manifests.glob("*.toml"))
    assert names == sorted(
        ["inat21", "inat-open-data", "bioscan-1m", "bioscan-5m", "eol", "gbif-backbone", "col"]
    )
    for path in manifests.glob("*.toml"):
        manifest = tomllib.loads(path.read_text())
        assert manifest["source"]["name"] == path.stem
        assert manifest["source"]["base_url"].startswith("https://")
        for role, spec in manifest["files"].items():
            base_url = manifest["source"]["base_url"]
            url = spec["path"] if "://" in spec["path"] else base_url + spec["path"]
            data = mirror_path(files, url).read_bytes()
            assert len(data) == spec["size"], role
            assert hashlib.sha256(data).hexdigest() == spec["sha256"], role
            assert spec["stage"] in ("pull", "images")


def test_committed_sample_is_up_to_date(generated: Path, expected: dict) -> None:
    """The committed expected.json is what the generator writes now (image-codec details aside:
    record paths hold image md5s, near pairs name the edit that worked)."""

    def codec_free(document: dict) -> dict:
        pairs = [(p["a"], p["b"]) for p in document["near_duplicate_pairs"]]
        kept = {k: v for k, v in document.items() if k not in ("records", "near_duplicate_pairs")}
        return {**kept, "near_duplicate_pairs": pairs}

    fresh = json.loads((generated / "expected.json").read_text())
    assert codec_free(fresh) == codec_free(expected)


def test_exact_duplicates_share_bytes(expected: dict) -> None:
    records = by_ref(expected)
    assert len(expected["exact_duplicate_groups"]) >= 6
    sources_spanned = set()
    for group in expected["exact_duplicate_groups"]:
        blobs = {image_bytes(records[(r["source"], r["source_id"])]["image"]) for r in group}
        assert len(blobs) == 1, group
        sources_spanned |= {frozenset(r["source"] for r in group)}
    assert any(len(sources) > 1 for sources in sources_spanned)


def test_near_duplicates_are_close_but_not_equal(expected: dict) -> None:
    records = by_ref(expected)
    assert len(expected["near_duplicate_pairs"]) >= 6
    for pair in expected["near_duplicate_pairs"]:
        a, b = (
            image_bytes(records[(r["source"], r["source_id"])]["image"])
            for r in (pair["a"], pair["b"])
        )
        assert a != b
        assert 0 < phash(a) - phash(b) <= 4, pair


def test_distinct_images_are_far_apart(expected: dict) -> None:
    originals = [r for rs in expected["records"].values() for r in rs if r["role"] == "original"]
    assert len(originals) > 300
    bits = np.array([phash(image_bytes(r["image"])).hash.ravel() for r in originals])
    distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, 64)
    closest = np.unravel_index(distances.argmin(), distances.shape)
    pair = [originals[i]["image"] for i in closest]
    assert distances.min() > 10, pair


def test_corrupt_images_do_not_decode(expected: dict) -> None:
    records = by_ref(expected)
    kinds = set()
    for corrupt in expected["corrupt_images"]:
        data = image_bytes(records[(corrupt["source"], corrupt["source_id"])]["image"])
        with pytest.raises(OSError):
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        kinds.add(corrupt["kind"])
    assert kinds == {"truncated-jpeg", "random-bytes", "empty", "html-error-page"}


def test_every_other_image_decodes_and_missing_ones_are_absent(expected: dict) -> None:
    for record in itertools.chain.from_iterable(expected["records"].values()):
        if record["role"] == "missing":
            assert not (SAMPLE_FILES / record["image"]["file"]).exists()
        elif record["role"] != "corrupt":
            with Image.open(io.BytesIO(image_bytes(record["image"]))) as image:
                image.load()


def test_special_images(expected: dict) -> None:
    records = by_ref(expected)
    special = {
        s["kind"]: records[(s["source"], s["source_id"])]["image"]
        for s in expected["special_images"]
    }
    with Image.open(io.BytesIO(image_bytes(special["cmyk-jpeg"]))) as image:
        assert (image.format, image.mode) == ("JPEG", "CMYK")
    with Image.open(io.BytesIO(image_bytes(special["exif-orientation-6"]))) as image:
        assert image.getexif()[0x0112] == 6
    png = special["palette-png-transparent"]
    assert png["file"].endswith("/medium.png")
    with Image.open(io.BytesIO(image_bytes(png))) as image:
        assert (image.format, image.mode) == ("PNG", "P") and "transparency" in image.info


@pytest.mark.parametrize(("path", "member"), UNQUOTED_TSVS)
def test_tsvs_are_never_quoted(path: str, member: str | None) -> None:
    lines = file_bytes(path, member).decode().splitlines()
    width = len(lines[0].split("\t"))
    assert width > 1
    for line in lines:
        assert not any(
            f.startswith('"') and f.endswith('"') and len(f) > 1 for f in line.split("\t")
        )


def test_tsv_values_keep_their_quotes_raw() -> None:
    observers = file_bytes(f"{INAT}/observers.csv.gz").decode()
    assert '\tJo "Beetle" Ng\n' in observers and "\tSiobhán O'Brien\n" in observers
    assert "\tNone\n" in observers and "\t\n" in observers  # the literal None, an empty name


def test_eol_manifest_header_only_in_the_first_file() -> None:
    first = file_bytes(EOL_MANIFEST, "media_manifest_1.csv").decode().splitlines()
    second = file_bytes(EOL_MANIFEST, "media_manifest_2.csv").decode().splitlines()
    header = "EOL content ID,EOL page ID,Medium Source URL,EOL Full-Size Copy URL,License Name"
    assert first[0] == header + ",Copyright Owner"
    assert second[0].split(",")[0].isdigit()
    assert not any(line.startswith("EOL content ID") for line in second)
    assert any('"Smith, Jane"' in line for line in first + second)  # quoted where needed


BAD_ROW_FILES = {  # file named in expected.json -> (path under files/, member, delimiter)
    "photos.csv": (f"{INAT}/photos.csv.gz", None, "\t"),
    "observations.csv": (f"{INAT}/observations.csv.gz", None, "\t"),
    "BIOSCAN_Insect_Dataset_metadata.tsv": (
        "zenodo.org/records/8030065/files/BIOSCAN_Insect_Dataset_metadata.tsv",
        None,
        "\t",
    ),
    "BIOSCAN_5M_Insect_Dataset_metadata.csv": (
        "zenodo.org/records/11973457/files/BIOSCAN_5M_Insect_Dataset_metadata_MultiTypes.zip",
        "bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv",
        ",",
    ),
    "media_manifest_2.csv": (EOL_MANIFEST, "media_manifest_2.csv", ","),
}


def test_bad_rows_are_where_expected_says(expected: dict) -> None:
    checked = 0
    for source in expected["sources"].values():
        for bad in (b for b in source["bad_rows"] if b["line"] is not None):
            path, member, delimiter = BAD_ROW_FILES[bad["file"]]
            lines = file_bytes(path, member).decode().splitlines()
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            row = next(csv.reader([lines[bad["line"] - 1]], delimiter=delimiter, quoting=quoting))
            width = 6 if bad["file"] == "media_manifest_2.csv" else len(lines[0].split(delimiter))
            if bad["reason"].startswith("too few columns"):
                assert len(row) < width, bad
            elif "not an integer" in bad["reason"]:
                assert not row[1].isdigit(), bad
            else:
                assert len(row) == width, bad
            checked += 1
    assert checked >= 6
