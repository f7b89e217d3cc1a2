"""Eval-set leakage: benchmark images from a folder or webdataset shards, PDQ, held-out
species; each checked against a brute-force oracle over the sample's real images."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from treeoflife.errors import TolError
from treeoflife.images.dedup import DedupOptions, dedup_workspace
from treeoflife.images.leakage import (
    hash_benchmarks,
    iter_benchmark_files,
    load_excluded_species,
    normalize_species_name,
)
from treeoflife.images.phash import hamming, pdq_hex, phash_hex
from treeoflife.images.transform import decode_image
from treeoflife.workspace import Workspace

try:
    from .dedup_fixtures import copy_workspace, fill_images
except ImportError:  # tests/images is not a package
    from dedup_fixtures import copy_workspace, fill_images

# One image of a 3-way exact group, one of a near pair, two singletons, one CMYK JPEG.
BENCH_RECORDS = (
    "inat21:1123190",
    "inat21:974577",
    "inat-open-data:57319149",
    "bioscan-1m:BIOUG35360-H12",
    "eol:3023774",
)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, pulled_workspace) -> tuple[Workspace, dict[str, bytes | None]]:
    """The pulled sample with `images` (and a pdq column) filled, and each record's bytes."""
    workspace = copy_workspace(pulled_workspace, tmp_path_factory.mktemp("leak") / "ws")
    return workspace, fill_images(workspace, with_pdq=True)


@pytest.fixture
def workspace(fetched, tmp_path) -> Workspace:
    return copy_workspace(fetched[0], tmp_path / "ws")


def jpeg(image: Image.Image, quality: int = 70) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def benchmark_copies(raw: dict[str, bytes | None], transform) -> dict[str, bytes]:
    """Benchmark files made from training images (as a test set that overlaps training)."""
    return {rec: jpeg(transform(decode_image(raw[rec]))) for rec in BENCH_RECORDS}


def oracle(workspace: Workspace, bench: list[bytes], threshold: int, pdq: int | None) -> set:
    """Brute force: training images within `threshold` phash bits (or `pdq` PDQ bits)."""
    hashes = [decode_image(b) for b in bench]
    bench_phash = [phash_hex(image) for image in hashes]
    bench_pdq = [pdq_hex(image)[0] for image in hashes]
    with workspace.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT record_id, phash, pdq FROM images WHERE status = 'ok'"
        ).fetchall()
    return {
        record_id
        for record_id, phash, pdq_value in rows
        if any(hamming(phash, b) <= threshold for b in bench_phash)
        or (pdq is not None and any(hamming(pdq_value, b) <= pdq for b in bench_pdq))
    }


def rows(workspace: Workspace, sql: str) -> list[tuple]:
    with workspace.connect(read_only=True) as con:
        return con.execute(sql).fetchall()


def test_exclude_images_folder_drops_every_image_near_a_benchmark(workspace, fetched, tmp_path):
    copies = benchmark_copies(fetched[1], lambda image: image)  # re-encoded at JPEG q70
    folder = tmp_path / "bench"
    (folder / "sub").mkdir(parents=True)
    for n, data in enumerate(copies.values()):
        (folder / ("sub" if n % 2 else "") / f"{n}.jpg").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "README.txt").write_text("ignored: not an image")
    stats = dedup_workspace(workspace, DedupOptions(exclude_images=(str(folder),), pdq=False))

    leaked = {r[0] for r in rows(workspace, "SELECT record_id FROM duplicates WHERE kind='leak'")}
    expected = oracle(workspace, list(copies.values()), 4, None)
    assert leaked == expected
    # the copied images, their exact twins and their near-duplicate partner all leak
    assert {"inat21:1123190", "inat-open-data:152916298", "eol:7600550"} <= leaked
    assert {"inat21:974577", "inat21:997640"} <= leaked
    assert stats.leak == len(leaked) and stats.leaks_by_benchmark == {"bench": len(leaked)}
    assert stats.benchmark_images == 6 and stats.benchmark_unreadable == 1
    # a leaked image is never kept for a cluster, and no record is listed twice
    all_rows = rows(workspace, "SELECT record_id, kept_record_id FROM duplicates")
    assert len({r[0] for r in all_rows}) == len(all_rows)
    assert not leaked & {r[1] for r in all_rows}
    stored = rows(workspace, "SELECT count(*), count(error) FROM benchmark_images")
    assert stored == [(6, 1)]
    detail = rows(workspace, "SELECT DISTINCT benchmark, hash FROM dedup_leaks")
    assert {b for b, _ in detail} == {"bench"} and {h for _, h in detail} <= {"phash", "sha256"}


def test_exclude_images_shards_match_folder(workspace, fetched, tmp_path):
    copies = benchmark_copies(fetched[1], lambda image: image)
    for shard_no, chunk in enumerate((list(copies.items())[:3], list(copies.items())[3:])):
        with tarfile.open(tmp_path / f"test-{shard_no:06d}.tar", "w") as tar:
            for rec, data in chunk:
                key = rec.replace(":", "_").replace("-", "_")
                for suffix, payload in ((".jpg", data), (".cls", b"3")):
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    spec = f"rare={tmp_path}/test-{{000000..000001}}.tar"
    stats = dedup_workspace(workspace, DedupOptions(exclude_images=(spec,)))
    leaked = {r[0] for r in rows(workspace, "SELECT record_id FROM duplicates WHERE kind='leak'")}
    assert leaked == oracle(workspace, list(copies.values()), 4, None)
    assert stats.leaks_by_benchmark == {"rare": len(leaked)} and stats.benchmark_images == 5
    paths = rows(workspace, "SELECT path FROM benchmark_images ORDER BY path")
    assert all(".tar:" in p for (p,) in paths)


def test_exact_bytes_leak_at_distance_zero(workspace, fetched, tmp_path):
    folder = tmp_path / "exact"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(fetched[1]["eol:3023774"])
    dedup_workspace(workspace, DedupOptions(exclude_images=(str(folder),)))
    leaks = rows(workspace, "SELECT record_id, hash, distance FROM dedup_leaks")
    assert leaks == [("eol:3023774", "sha256", 0)]


def test_pdq_catches_what_phash_misses(workspace, fetched, tmp_path):
    copies = benchmark_copies(fetched[1], lambda im: ImageEnhance.Contrast(im).enhance(1.6))
    folder = tmp_path / "contrast"
    folder.mkdir()
    for n, data in enumerate(copies.values()):
        (folder / f"{n}.jpg").write_bytes(data)
    options = DedupOptions(threshold=1, exclude_images=(str(folder),), pdq_threshold=10)
    stats = dedup_workspace(workspace, options)  # pdq on by default: images.pdq is filled
    leaked = {r[0] for r in rows(workspace, "SELECT record_id FROM duplicates WHERE kind='leak'")}
    assert leaked == oracle(workspace, list(copies.values()), 1, 10)
    assert stats.leaks_by_hash.get("pdq", 0) >= 1
    assert "leak pdq" in stats.plans
    without = dedup_workspace(workspace, DedupOptions(**{**options.__dict__, "pdq": False}))
    assert without.leak < stats.leak


def test_pdq_requested_without_column_is_an_error(workspace, fetched, tmp_path):
    with workspace.connect() as con:
        con.execute("ALTER TABLE images DROP COLUMN pdq")
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(fetched[1]["eol:3023774"])
    with pytest.raises(TolError, match="pdq"):
        dedup_workspace(workspace, DedupOptions(exclude_images=(str(folder),), pdq=True))


def species_records(workspace: Workspace, binomial: str) -> set[str]:
    """Oracle: records whose source species is `binomial`."""
    with workspace.connect(read_only=True) as con:
        sql = "SELECT record_id FROM records WHERE species = ?"
        return {r[0] for r in con.execute(sql, [binomial]).fetchall()}


def excluded(workspace: Workspace) -> set[str]:
    sql = "SELECT record_id FROM duplicates WHERE kind = 'excluded-species'"
    return {r[0] for r in rows(workspace, sql)}


def test_exclude_species_list_and_csv(workspace, tmp_path):
    names = tmp_path / "held-out.txt"
    names.write_text("# Rare species\nBufo bufo (Linnaeus, 1758)\n\nmorus_bassanus\n")
    stats = dedup_workspace(workspace, DedupOptions(exclude_species=names))
    expected = species_records(workspace, "Bufo bufo") | species_records(
        workspace, "Morus bassanus"
    )
    assert len(expected) == 4 + 11 and excluded(workspace) == expected
    assert stats.species_excluded == ["bufo bufo", "morus bassanus"]
    assert stats.excluded_species == len(expected)

    catalog = tmp_path / "rarespecies-catalog.csv"
    catalog.write_text("rarespecies_id,kingdom,genus,species,common\n1,Animalia,Bufo,bufo,toad\n")
    dedup_workspace(workspace, DedupOptions(exclude_species=catalog))
    assert excluded(workspace) == species_records(workspace, "Bufo bufo")


def test_exclude_species_prefers_resolved_names(workspace, tmp_path):
    parus = species_records(workspace, "Parus caeruleus")  # a synonym of Cyanistes caeruleus
    cyanistes = species_records(workspace, "Cyanistes caeruleus")
    assert parus and cyanistes
    moved = sorted(cyanistes)[0]  # resolved elsewhere: its source name no longer counts
    with workspace.connect() as con:
        con.executemany(
            "INSERT INTO taxa_resolved (record_id, genus, species, status) VALUES (?, ?, ?, ?)",
            [(r, "Cyanistes", "Cyanistes caeruleus", "synonym") for r in parus]
            + [(moved, "Parus", "Parus major", "accepted")],
        )
    names = tmp_path / "names.txt"
    names.write_text("Cyanistes caeruleus\n")
    dedup_workspace(workspace, DedupOptions(exclude_species=names))
    assert excluded(workspace) == (parus | cyanistes) - {moved}


def test_species_names_normalise():
    assert normalize_species_name("  Bufo   bufo (Linnaeus, 1758) ") == "bufo bufo"
    assert normalize_species_name("Emiliania_huxleyi") == "emiliania huxleyi"
    assert normalize_species_name("Quercus × rosacea extra") == "quercus × rosacea"
    assert normalize_species_name("Bufo") is None


def test_species_file_errors(tmp_path):
    with pytest.raises(TolError, match="no such file"):
        load_excluded_species(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(TolError, match="no 'Genus species' names"):
        load_excluded_species(empty)
    table = tmp_path / "bad.csv"
    table.write_text("id,family\n1,Bufonidae\n")
    with pytest.raises(TolError, match="no species column"):
        load_excluded_species(table)


def test_benchmark_spec_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TolError, match="no images"):
        list(iter_benchmark_files(str(tmp_path)))


def test_hash_benchmarks_on_a_process_pool_equals_inline(fetched, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for rec in BENCH_RECORDS:
        (folder / f"{rec.replace(':', '_')}.jpg").write_bytes(fetched[1][rec])
    inline = hash_benchmarks([str(folder)], with_pdq=True).to_pylist()
    pooled = hash_benchmarks([str(folder)], with_pdq=True, workers=2).to_pylist()
    assert inline == pooled and all(row["phash"] and row["pdq"] for row in inline)
    assert {row["sha256"] for row in inline} == set(rows_of_sha(fetched[0], BENCH_RECORDS))


def rows_of_sha(workspace: Workspace, records: tuple[str, ...]) -> list[str]:
    with workspace.connect(read_only=True) as con:
        return [
            r[0]
            for r in con.execute(
                "SELECT sha256 FROM images WHERE list_contains(?, record_id)", [list(records)]
            ).fetchall()
        ]


def test_benchmark_name_from_path(tmp_path: Path):
    (tmp_path / "NeWT").mkdir()
    (tmp_path / "NeWT" / "a.jpg").write_bytes(jpeg(Image.new("RGB", (40, 40), "red")))
    ((benchmark, path, _),) = list(iter_benchmark_files(str(tmp_path / "NeWT")))
    assert benchmark == "NeWT" and path.endswith("a.jpg")


def test_cli_exclude_images_and_species(workspace, fetched, tmp_path):
    from typer.testing import CliRunner

    from treeoflife.cli import app

    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(fetched[1]["eol:3023774"])
    names = tmp_path / "names.txt"
    names.write_text("Bufo bufo\n")
    args = ["dedup", "-w", str(workspace.root), "--exclude-images", f"mine={folder}"]
    args += ["--exclude-species", str(names), "--workers", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "leaks from mine: 1" in result.output
    stats = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert stats["leak"] == 1 and stats["excluded_species"] == 4
    missing = CliRunner().invoke(app, [*args[:3], "--exclude-images", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no images" in missing.output
