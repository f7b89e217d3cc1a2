"""Inputs of eval-set leakage removal: hashes of benchmark images (a folder of images or
webdataset shards) and the list of held-out species names.

`tol dedup --exclude-images` drops training images near any image hashed here;
`--exclude-species` drops records of the species read here (BioCLIP's Rare Species rule).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import logging
import multiprocessing
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from treeoflife.errors import TolError
from treeoflife.images.phash import pdq_hex, phash_hex
from treeoflife.images.transform import ImageRejected, ResizeSpec, decode_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPECIES_COLUMNS = ("scientific_name", "sciname", "species_name", "binomial", "name", "species")
DECODE_SPEC = ResizeSpec(mode="none")  # decode only: full-size pixels, no draft mode
BATCH = 64

BENCHMARK_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("pdq", pa.string()),
        ("pdq_quality", pa.int32()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class BenchmarkImage:
    """One benchmark image's hashes; `error` says why it could not be hashed."""

    benchmark: str
    path: str
    sha256: str
    phash: str | None
    pdq: str | None = None
    pdq_quality: int | None = None
    error: str | None = None


def hash_image_bytes(item: tuple[str, str, bytes], with_pdq: bool = False) -> BenchmarkImage:
    """Hash one benchmark image: sha256 of the bytes, phash (and PDQ) of the decoded image.

    Decoding is the fetch stage's own (`transform.decode_image`: EXIF orientation, alpha on
    white, decompression-bomb guard), so a benchmark copy of a training image hashes alike.
    """
    benchmark, path, raw = item
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        image = decode_image(raw, DECODE_SPEC)
    except ImageRejected as exc:
        return BenchmarkImage(benchmark, path, sha256, None, error=f"{exc.reason}: {exc.detail}")
    pdq, quality = pdq_hex(image) if with_pdq else (None, None)
    return BenchmarkImage(benchmark, path, sha256, phash_hex(image), pdq, quality)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_shard(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


def _expand(pattern: str) -> list[Path]:
    """Shard lists as webdataset writes them (`shard-{000000..000009}.tar`) or shell globs."""
    from braceexpand import braceexpand

    paths: list[Path] = []
    for expanded in braceexpand(pattern):
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        paths.extend(Path(match) for match in matches if Path(match).exists())
    return paths


def parse_benchmark_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH` names a benchmark; a bare PATH is named after its folder."""
    name, sep, location = spec.partition("=")
    if sep and name and "/" not in name:
        return name, location
    path = Path(spec.rstrip("/"))
    if path.is_dir():
        return path.name, spec
    parent = Path(spec).parent
    return (parent.name or path.stem.split("-")[0] or "benchmark"), spec


def iter_benchmark_files(spec: str) -> Iterator[tuple[str, str, bytes]]:
    """Yield (benchmark, path, bytes) for every image a spec names.

    A spec is a folder (images found recursively, and any .tar shards in it), one shard,
    a brace or glob shard list, or any of these as `NAME=...`. Inside a webdataset shard
    every image member counts (`<key>.jpg`, `.png`, ...); paths read `shard.tar:member`.
    """
    benchmark, location = parse_benchmark_spec(spec)
    root = Path(location)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
        shards = [p for p in files if _is_shard(p.name)]
        images = [p for p in files if _is_image(p.name)]
    else:
        shards = [p for p in _expand(location) if _is_shard(p.name)]
        images = [p for p in _expand(location) if _is_image(p.name)]
    if not shards and not images:
        raise TolError(
            f"--exclude-images {spec}: no images (.jpg/.png/...) or webdataset shards (.tar) "
            "found there; give a folder of images, a shard, or a list like "
            "'shards/test-{000000..000003}.tar'"
        )
    for path in images:
        yield benchmark, str(path), path.read_bytes()
    for shard in shards:
        yield from _iter_shard(benchmark, shard)


def _iter_shard(benchmark: str, shard: Path) -> Iterator[tuple[str, str, bytes]]:
    try:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if member.isfile() and _is_image(member.name):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield benchmark, f"{shard}:{member.name}", handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TolError(
            f"{shard}: cannot read this webdataset shard ({exc}); re-download or drop it "
            "from --exclude-images"
        ) from exc


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def hash_benchmarks(
    specs: Iterable[str],
    *,
    with_pdq: bool = False,
    workers: int = 1,
    on_image: Callable[[int], None] | None = None,
) -> pa.Table:
    """Hash every benchmark image of every spec into an Arrow table (BENCHMARK_SCHEMA).

    Images stream in batches (a benchmark never sits in memory whole); `workers` > 1 hashes
    each batch on a process pool. Unreadable images come back with `error` set, not raised:
    one bad benchmark file must not stop a dedup run, and the caller reports them.
    """
    rows: list[BenchmarkImage] = []
    # spawn, not fork: the caller holds a DuckDB connection whose threads a fork would copy
    # mid-lock; the pool only needs PIL, numpy and pdqhash.
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else None
    try:
        for spec in specs:
            for batch in _batches(iter_benchmark_files(spec), BATCH * max(workers, 1)):
                if pool is None:
                    hashed = [hash_image_bytes(item, with_pdq) for item in batch]
                else:
                    flags = [with_pdq] * len(batch)
                    hashed = list(pool.map(hash_image_bytes, batch, flags, chunksize=8))
                rows.extend(hashed)
                if on_image:
                    on_image(len(batch))
    finally:
        if pool is not None:
            pool.shutdown()
    columns = {name: [getattr(row, name) for row in rows] for name in BENCHMARK_SCHEMA.names}
    return pa.table(columns, schema=BENCHMARK_SCHEMA)


_SPACES = re.compile(r"[\s_]+")


def normalize_species_name(text: str | None) -> str | None:
    """'Bufo  bufo (Linnaeus, 1758)' and 'bufo_bufo' -> 'bufo bufo': genus and epithet only,
    lower case (hybrids keep their '×'). None for a blank or a one-word name."""
    words = _SPACES.sub(" ", (text or "").strip()).split(" ")
    words = [w for w in words if w]
    if len(words) < 2:
        return None
    keep = 3 if words[1] in ("×", "x") and len(words) > 2 else 2
    return " ".join(words[:keep]).lower()


def load_excluded_species(path: Path) -> list[str]:
    """Read held-out species: one name per line (# starts a comment line), or a CSV/TSV
    with a species column.

    CSV columns tried in order: scientific_name, sciName, species_name, binomial, name,
    species; a `species` column holding bare epithets (as the TreeOfLife and Rare Species
    catalogs do) is joined with `genus`. Names are normalised by `normalize_species_name`.
    """
    if not path.is_file():
        raise TolError(f"--exclude-species {path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first else ","
    header = {cell.strip().lower() for cell in first.split(delimiter)}
    is_table = path.suffix.lower() in (".csv", ".tsv") or bool(header & set(SPECIES_COLUMNS))
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    names = _names_from_table(path, text, delimiter) if is_table else lines
    normalized = sorted({n for n in map(normalize_species_name, names) if n})
    if not normalized:
        raise TolError(
            f"--exclude-species {path}: no 'Genus species' names found; write one per line "
            "or give a CSV with a scientific_name or species column"
        )
    return normalized


def _names_from_table(path: Path, text: str, delimiter: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    rows = list(reader)
    for wanted in SPECIES_COLUMNS:
        column = fields.get(wanted)
        if column is None:
            continue
        values = [(row.get(column) or "").strip() for row in rows]
        if any(" " in v or "_" in v for v in values):
            return values
        genus = fields.get("genus")
        if wanted == "species" and genus:
            return [
                f"{(row.get(genus) or '').strip()} {v}" for row, v in zip(rows, values, strict=True)
            ]
    raise TolError(
        f"--exclude-species {path}: no species column found (looked for "
        f"{', '.join(SPECIES_COLUMNS)}; a bare-epithet `species` column needs `genus` beside it)"
    )
