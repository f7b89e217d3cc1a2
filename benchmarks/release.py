"""Release benchmark: `tol shard` writing and `tol verify` reading, against plain `tar` and
Python's tarfile reading the same shards (the ceiling for any shard reader).

Builds a synthetic workspace (EOL-shaped records, 224x224 JPEGs of realistic size in
staging tars), times `shard_release` and `verify_release` with 1 and 2 workers, then
`tar -tvf`, `tar -xOf` and a tarfile read of the shards. Prints a table and saves JSON.

    .venv/bin/python benchmarks/release.py [--records 20000] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageFilter

from treeoflife.shards import ShardOptions, shard_release
from treeoflife.shards.verify import verify_release
from treeoflife.workspace import Workspace

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "release.json"
STAGING_UNIT = 2_000
JPEG_POOL = 64
RANK_NAMES = ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica")


def jpeg_pool(count: int) -> list[bytes]:
    """Distinct 224x224 JPEGs of photo-like size (~15-25 KB): smoothed noise."""
    rng = random.Random(0)
    pool = []
    for n in range(count):
        noise = Image.frombytes("RGB", (224, 224), rng.randbytes(224 * 224 * 3))
        image = noise.filter(ImageFilter.GaussianBlur(1.2 + (n % 4) * 0.3))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        pool.append(out.getvalue())
    return pool


def build_workspace(root: Path, records: int) -> Workspace:
    """A workspace as pull + taxa + images + dedup would leave it, set-based."""
    workspace = Workspace(root).init()
    pool = jpeg_pool(JPEG_POOL)
    staging = root / "staging"
    image_rows = []
    for start in range(0, records, STAGING_UNIT):
        shard = f"staging/unit-{start // STAGING_UNIT:06d}.tar"
        with tarfile.open(root / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for n in range(start, min(start + STAGING_UNIT, records)):
                data = pool[n % JPEG_POOL]
                info = tarfile.TarInfo(f"{n:012x}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                image_rows.append((n, shard, f"{n:012x}.jpg"))
    del staging
    with workspace.connect() as con:
        con.execute(
            f"""INSERT INTO record_rows (source, source_id, group_id, url, license,
                                         rights_holder, taxon_key)
                SELECT 'eol', (1000000 + i)::VARCHAR, 'eol:' || (1000000 + i)::VARCHAR,
                       'https://content.eol.org/data/media/' || i || '.jpg',
                       CASE WHEN i % 10 = 0 THEN 'cc-by-nc-4.0' ELSE 'cc-by-4.0' END,
                       'photographer ' || (i % 997), (i % 5000)::VARCHAR
                FROM range({records}) t(i)"""
        )
        con.execute(
            f"""INSERT INTO taxa_resolved
                SELECT 'eol:' || (1000000 + i)::VARCHAR, '{RANK_NAMES[0]}', '{RANK_NAMES[1]}',
                       '{RANK_NAMES[2]}', 'Order' || (i % 40), 'Family' || (i % 400),
                       'Genus' || (i % 2000), 'Genus' || (i % 2000) || ' epithet' || (i % 5000),
                       CASE WHEN i % 3 = 0 THEN 'common name ' || (i % 5000) END,
                       'exact', 'gbif', (i % 5000)::VARCHAR, 'resolved'
                FROM range({records}) t(i)"""
        )
        con.execute("CREATE TEMP TABLE staged (n BIGINT, shard VARCHAR, member VARCHAR)")
        con.executemany("INSERT INTO staged VALUES (?, ?, ?)", image_rows)
        con.execute(
            """INSERT INTO images (record_id, status, sha256, phash, width, height, shard, member)
               SELECT 'eol:' || (1000000 + n)::VARCHAR, 'ok', sha256(n::VARCHAR),
                      substr(md5(n::VARCHAR), 1, 16), 224, 224, shard, member FROM staged"""
        )
    return workspace


def drop_caches_note() -> str:
    return "page cache warm (shards just written); figures are CPU-bound, not disk-bound"


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def tar_read_all(paths: list[Path]) -> int:
    """Python tarfile: read every member's bytes (what any Python shard reader must do)."""
    total = 0
    for path in paths:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                handle = tar.extractfile(info)
                if handle is not None:
                    total += len(handle.read())
    return total


def run(records: int, keep: Path | None) -> dict:
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="tol-release-bench-"))
    if root.exists():
        shutil.rmtree(root)
    try:
        workspace, build_s = timed(lambda: build_workspace(root, records))
        load_before = os.getloadavg()[0]
        rows = []
        release = root / "release"
        shard_stats = {}
        for workers in (1, 2):
            shutil.rmtree(release, ignore_errors=True)
            with workspace.connect() as con:
                con.execute("DROP TABLE IF EXISTS release_shards")
                con.execute("DROP TABLE IF EXISTS release_shard_samples")
            options = ShardOptions(shard_bytes=25_000_000, min_shards=8, workers=workers, seed=0)
            stats, seconds = timed(lambda options=options: shard_release(workspace, options))
            samples = sum(t["samples"] for t in stats.splits.values())
            size = sum(t["bytes"] for t in stats.splits.values())
            shard_stats = {
                "samples": samples,
                "bytes": size,
                "shards": sum(t["shards"] for t in stats.splits.values()),
            }
            rows.append(("tol shard (whole stage)", workers, seconds, samples, size))
        manifest = json.loads((release / "manifest.json").read_text())
        paths = [release / s["path"] for s in manifest["shards"]]
        samples, size = shard_stats["samples"], shard_stats["bytes"]
        for workers in (1, 2):
            report, seconds = timed(lambda w=workers: verify_release(release, workers=w))
            assert report.ok, report.problems[:3]
            rows.append(("tol verify", workers, seconds, samples, size))
        _, seconds = timed(
            lambda: [
                subprocess.run(["tar", "-tvf", str(p)], check=True, capture_output=True)
                for p in paths
            ]
        )
        rows.append(("tar -tvf (list only)", 1, seconds, samples, size))
        _, seconds = timed(
            lambda: [
                subprocess.run(["tar", "-xOf", str(p)], check=True, stdout=subprocess.DEVNULL)
                for p in paths
            ]
        )
        rows.append(("tar -xOf (read all)", 1, seconds, samples, size))
        _, seconds = timed(lambda: tar_read_all(paths))
        rows.append(("python tarfile (read all)", 1, seconds, samples, size))
        results = {
            "benchmark": "release",
            "records": records,
            "shards": shard_stats["shards"],
            "samples": samples,
            "megabytes": round(size / 1e6, 1),
            "workspace_build_s": round(build_s, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "note": drop_caches_note(),
            "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "rows": [
                {
                    "what": what,
                    "workers": workers,
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(size / 1e6 / seconds, 1),
                    "samples_per_s": round(samples / seconds, 0),
                }
                for what, workers, seconds, samples, size in rows
            ],
        }
        return results
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def print_table(results: dict) -> None:
    print(
        f"release benchmark: {results['records']} records -> {results['samples']} samples "
        f"({results['megabytes']} MB, {results['shards']} shards); {results['note']}; "
        f"load average before/after {results['load_average_1min']}"
    )
    print(f"{'what':<28} {'workers':>7} {'seconds':>8} {'MB/s':>8} {'samples/s':>10}")
    for row in results["rows"]:
        print(
            f"{row['what']:<28} {row['workers']:>7} {row['seconds']:>8.2f} "
            f"{row['mb_per_s']:>8.1f} {row['samples_per_s']:>10.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="Source records to shard.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1,000 records, no JSON.")
    parser.add_argument("--keep", type=Path, help="Build the workspace here and keep it.")
    args = parser.parse_args()
    records = 1_000 if args.quick else args.records
    results = run(records, args.keep)
    print_table(results)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
