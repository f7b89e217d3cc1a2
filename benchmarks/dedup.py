"""Near-duplicate search benchmark: `tol dedup`'s multi-index hashing in DuckDB on 10M
synthetic 64-bit hashes (goal < 2 min) and on 100k against imagededup's BK-tree (goal >= 20x),
with recall against brute force.

    .venv/bin/python benchmarks/dedup.py [--quick] [--n 10000000] [--bk-n 100000]

Hashes are uniform random 64-bit values plus planted near-duplicate clusters: 2% of the
rows are copies of a seed hash with 1..6 bits flipped (so pairs at distance <= 4 must be
found and pairs at 5..6 must not). imagededup 0.3.3 runs from its own virtualenv
(/work/bench-venvs/imagededup, created by --setup-imagededup); its package imports torch
for its CNN method at import time, which the hashing path never uses, so torch is stubbed
there (numpy, scipy, scikit-learn are real). Its BK-tree is built on all hashes; a random
sample of queries is timed and the full search projected (queries x per-query time / cores,
as its `parallelise` spreads queries over a process pool); `--bk-full N` validates the
projection with a complete `find_duplicates(search_method='bktree')` run on N hashes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treeoflife.images.dedup import (  # noqa: E402
    DedupOptions,
    connected_components,
    hamming_pairs,
    plan_mih,
    run_dedup,
)
from treeoflife.workspace import Workspace  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "dedup.json"
IMAGEDEDUP_VENV = Path("/work/bench-venvs/imagededup")
THRESHOLD = 4
PLANTED_FRACTION = 0.02

# Runs inside the imagededup virtualenv: build its BK-tree, time sampled queries, optionally
# a complete find_duplicates run; prints JSON.
BKTREE_SCRIPT = r"""
import json, sys, time
from unittest import mock
import numpy as np
import sklearn.metrics.pairwise  # noqa: F401  (import before the stubs: scipy probes torch)
STUBS = ("torch", "torch.nn", "torch.utils", "torch.utils.data", "torchvision",
         "torchvision.transforms", "torchvision.models", "torchvision.models.vision_transformer")
for name in STUBS:
    sys.modules[name] = mock.MagicMock()
from imagededup.methods.hashing import Hashing, PHash
from imagededup.handlers.search.bktree import BKTree
for name in STUBS:
    del sys.modules[name]

hashes = np.load(sys.argv[1])
queries = [int(q) for q in sys.argv[2].split(",")]
threshold, full_n = int(sys.argv[3]), int(sys.argv[4])
encodings = {f"img{i}": f"{int(h):016x}" for i, h in enumerate(hashes)}
t0, c0 = time.perf_counter(), time.process_time()
tree = BKTree(encodings, Hashing.hamming_distance)
build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
found = {}
t0, c0 = time.perf_counter(), time.process_time()
for q in queries:
    hits = tree.search(encodings[f"img{q}"], tol=threshold)
    found[q] = sorted(int(k[3:]) for k, _ in hits if k != f"img{q}")
query_s, query_cpu = time.perf_counter() - t0, time.process_time() - c0
out = {"build_s": build_s, "query_s": query_s, "build_cpu": build_cpu, "query_cpu": query_cpu,
       "queries": len(queries), "found": found}
if full_n:
    small = {k: encodings[k] for k in list(encodings)[:full_n]}
    t0 = time.perf_counter()
    result = PHash(verbose=False).find_duplicates(
        encoding_map=small, max_distance_threshold=threshold, search_method="bktree"
    )
    out["full"] = {"n": full_n, "seconds": time.perf_counter() - t0,
                   "pairs": sum(len(v) for v in result.values()) // 2}
print(json.dumps(out))
"""


def synthetic_hashes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n hashes (uint64) and the planted (seed index, copy index, distance) triples."""
    rng = np.random.default_rng(seed)
    copies = int(n * PLANTED_FRACTION)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    seeds = rng.choice(n - copies, size=copies)  # a seed may get several copies: clusters
    distance = rng.integers(1, 7, size=copies)
    positions = np.argsort(rng.random((copies, 64)), axis=1)[:, :6].astype(np.uint64)
    flips = np.zeros(copies, dtype=np.uint64)
    for k in range(6):
        flips |= np.where(k < distance, np.uint64(1) << positions[:, k], np.uint64(0))
    hashes[n - copies :] = hashes[seeds] ^ flips
    order = rng.permutation(n)  # copies live anywhere, not at the end
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    shuffled = hashes[order]
    planted = np.stack([where[seeds], where[np.arange(n - copies, n)], distance], axis=1)
    return shuffled, planted


def mih_search(hashes: np.ndarray, threshold: int, threads: int) -> dict:
    """tol dedup's search on bare hashes: load, distinct, plan, masked joins, components."""
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET memory_limit = '6GB'")
    timings = {}
    t0 = time.perf_counter()
    con.register("hashes_arrow", pa.table({"id": np.arange(len(hashes)), "h": hashes}))
    con.execute("CREATE TABLE images AS SELECT * FROM hashes_arrow")
    con.unregister("hashes_arrow")
    timings["load"] = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    con.execute(
        "CREATE TABLE nodes AS SELECT row_number() OVER (ORDER BY h) - 1 AS node, h AS w0 "
        "FROM (SELECT DISTINCT h FROM images)"
    )
    distinct = con.execute("SELECT count(*) FROM nodes").fetchall()[0][0]
    plan = plan_mih(distinct, None, threshold)
    pairs = hamming_pairs(con, "nodes", None, plan, "edges")
    clusters = connected_components(con, "edges", "components")
    timings["search"] = time.perf_counter() - t0
    timings["search_cpu"] = time.process_time() - c0  # all DuckDB threads of this process
    return {"con": con, "plan": plan.describe(), "pairs": pairs, "clusters": clusters,
            "distinct": distinct, **timings}  # fmt: skip


def planted_recall(con, hashes: np.ndarray, planted: np.ndarray, threshold: int) -> dict:
    """Share of planted pairs within the threshold that the search found (and none beyond)."""
    truth = pa.table({"a": hashes[planted[:, 0]], "b": hashes[planted[:, 1]], "d": planted[:, 2]})
    con.register("truth_arrow", truth)
    found, within, beyond = con.execute(
        """
        WITH t AS (
            SELECT least(na.node, nb.node) AS x, greatest(na.node, nb.node) AS y, d
            FROM truth_arrow JOIN nodes na ON na.w0 = a JOIN nodes nb ON nb.w0 = b
        )
        SELECT count(*) FILTER (WHERE e.a IS NOT NULL AND d <= $1),
               count(*) FILTER (WHERE d <= $1),
               count(*) FILTER (WHERE e.a IS NOT NULL AND d > $1)
        FROM t LEFT JOIN edges e ON e.a = t.x AND e.b = t.y
        """,
        [threshold],
    ).fetchall()[0]
    # Pairs joining two different planted clusters (or unplanted hashes): chance matches of
    # independent hashes, i.e. the false merges a threshold costs (binomial tail).
    labels = np.arange(len(hashes))
    labels[planted[:, 1]] = planted[:, 0]
    con.register("labels_arrow", pa.table({"h": hashes, "label": labels}))
    (unrelated,) = con.execute(
        """
        WITH l AS (SELECT h, min(label) AS label FROM labels_arrow GROUP BY h)
        SELECT count(*) FROM edges
        JOIN nodes na ON na.node = edges.a JOIN l la ON la.h = na.w0
        JOIN nodes nb ON nb.node = edges.b JOIN l lb ON lb.h = nb.w0
        WHERE la.label <> lb.label
        """
    ).fetchall()[0]
    con.unregister("truth_arrow")
    con.unregister("labels_arrow")
    return {"planted_within": within, "found": found, "recall": found / max(within, 1),
            "found_beyond_threshold": beyond, "unrelated_pairs": unrelated}  # fmt: skip


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    """Every pair of distinct hash values within the threshold (numpy popcount, chunked)."""
    values = np.unique(hashes)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(values), 2000):
        block = values[start : start + 2000]
        dist = np.bitwise_count(block[:, None] ^ values[None, :])
        i, j = np.nonzero(dist <= threshold)
        keep = start + i < j
        pairs |= {(int(block[a]), int(values[b])) for a, b in zip(i[keep], j[keep], strict=True)}
    return pairs


def mih_pairs_as_values(con) -> set[tuple[int, int]]:
    rows = con.execute(
        "SELECT least(na.w0, nb.w0), greatest(na.w0, nb.w0) FROM edges "
        "JOIN nodes na ON na.node = edges.a JOIN nodes nb ON nb.node = edges.b"
    ).fetchall()
    return {(int(a), int(b)) for a, b in rows}


def full_stage(hashes: np.ndarray, threshold: int) -> dict:
    """The whole `tol dedup` stage on a workspace whose `images` table holds the hashes."""
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        workspace = Workspace(Path(tmp) / "ws").init()
        with workspace.connect(memory_limit="4GB") as con:
            con.execute("SELECT 1").fetchall()  # finish migrate()'s open result first
            con.register("hashes_arrow", pa.table({"h": hashes}))
            con.execute(
                "INSERT INTO images (record_id, status, sha256, phash, width, height) "
                "SELECT 'bench:' || row_number() OVER (), 'ok', "
                "md5(h::VARCHAR) || md5(h::VARCHAR), printf('%016x', h), 640, 480 "
                "FROM hashes_arrow"
            )
            con.unregister("hashes_arrow")
            t0, c0 = time.perf_counter(), time.process_time()
            stats = run_dedup(con, DedupOptions(threshold=threshold))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu": cpu, "near": stats.near, "exact": stats.exact,
            "clusters": stats.clusters, "steps": stats.seconds}  # fmt: skip


def bktree_run(hashes: np.ndarray, queries: np.ndarray, threshold: int, full_n: int) -> dict:
    python = IMAGEDEDUP_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run with --setup-imagededup first")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hashes.npy"
        np.save(path, hashes)
        script = Path(tmp) / "bktree.py"
        script.write_text(BKTREE_SCRIPT)
        out = subprocess.run(
            [str(python), str(script), str(path), ",".join(map(str, queries)), str(threshold),
             str(full_n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def setup_imagededup() -> None:
    """imagededup and the parts of its dependencies its hashing path uses (no torch)."""
    subprocess.run([sys.executable, "-m", "venv", str(IMAGEDEDUP_VENV)], check=True)
    pip = [str(IMAGEDEDUP_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "--no-deps", "imagededup==0.3.3.post2"], check=True)
    deps = ["numpy", "scipy", "scikit-learn", "tqdm", "PyWavelets", "Pillow", "matplotlib"]
    subprocess.run([*pip, *deps], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes (a smoke run).")
    parser.add_argument("--n", type=int, default=10_000_000, help="Hashes for the big search.")
    parser.add_argument("--bk-n", type=int, default=100_000, help="Hashes vs the BK-tree.")
    parser.add_argument("--bk-queries", type=int, default=400, help="BK-tree queries timed.")
    parser.add_argument(
        "--bk-full", type=int, default=2000, help="Complete imagededup run on N (0: skip)."
    )
    parser.add_argument("--recall-n", type=int, default=20_000, help="Brute-force subsample.")
    parser.add_argument("--no-stage", action="store_true", help="Skip the full-stage run.")
    parser.add_argument("--setup-imagededup", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.setup_imagededup:
        setup_imagededup()
    if args.quick:
        args.n, args.bk_n, args.bk_queries, args.bk_full, args.recall_n = (
            200_000, 20_000, 50, 0, 5_000,
        )  # fmt: skip
    cores = args.threads
    rows: list[dict] = []

    # (a) the big search
    hashes, planted = synthetic_hashes(args.n, seed=1)
    big = mih_search(hashes, THRESHOLD, cores)
    recall = planted_recall(big["con"], hashes, planted, THRESHOLD)
    big["con"].close()
    rows.append({"task": f"search {args.n:,} hashes", "contender": "tol dedup MIH (DuckDB)",
                 "seconds": big["search"], "cpu": big["search_cpu"], "pairs": big["pairs"],
                 "recall": recall["recall"],
                 "note": f"+{big['load']:.1f} s load; {big['plan']}; "
                         f"{recall['unrelated_pairs']} chance pairs of unrelated hashes"},
    )  # fmt: skip
    if not args.no_stage:
        stage = full_stage(hashes, THRESHOLD)
        rows.append({"task": f"tol dedup stage, {args.n:,} images", "contender": "run_dedup",
                     "seconds": stage["seconds"], "cpu": stage["cpu"], "pairs": stage["near"],
                     "recall": None,
                     "note": f"{stage['clusters']:,} clusters; {stage['steps']}"})  # fmt: skip
    del hashes

    # (b) against imagededup's BK-tree
    small, small_planted = synthetic_hashes(args.bk_n, seed=2)
    ours = mih_search(small, THRESHOLD, cores)
    ours_recall = planted_recall(ours["con"], small, small_planted, THRESHOLD)
    rng = np.random.default_rng(3)
    # half the queries have a planted neighbour (so recall means something), half are random
    half = args.bk_queries // 2
    queries = np.unique(np.concatenate([
        rng.choice(small_planted[:, 1], size=half, replace=False),
        rng.choice(args.bk_n, size=args.bk_queries - half, replace=False),
    ]))  # fmt: skip
    bk = bktree_run(small, queries, THRESHOLD, args.bk_full)
    per_query = bk["query_s"] / bk["queries"]
    projected = bk["build_s"] + per_query * args.bk_n / cores
    projected_cpu = bk["build_cpu"] + bk["query_cpu"] / bk["queries"] * args.bk_n
    # BK-tree recall on its sampled queries, against brute force over all hashes
    truth_hits = {
        int(q): set(np.nonzero(np.bitwise_count(small ^ small[q]) <= THRESHOLD)[0].tolist())
        - {int(q)}
        for q in queries
    }
    bk_found = sum(len(truth_hits[int(q)] & set(bk["found"][str(q)])) for q in queries)
    bk_truth = sum(len(v) for v in truth_hits.values())
    rows.append({"task": f"search {args.bk_n:,} hashes", "contender": "tol dedup MIH (DuckDB)",
                 "seconds": ours["search"], "cpu": ours["search_cpu"], "pairs": ours["pairs"],
                 "recall": ours_recall["recall"], "note": ours["plan"]})  # fmt: skip
    rows.append({"task": f"search {args.bk_n:,} hashes", "contender": "imagededup BK-tree",
                 "seconds": projected, "cpu": projected_cpu, "pairs": None,
                 "recall": bk_found / max(bk_truth, 1),
                 "note": f"projected: build {bk['build_s']:.1f} s + {per_query * 1000:.0f} ms"
                         f"/query x {args.bk_n:,} / {cores} cores "
                         f"({bk['queries']} queries timed)"})  # fmt: skip
    if "full" in bk:
        full = bk["full"]
        n_full = full["n"]
        rows.append({"task": f"search {n_full:,} hashes", "contender": "imagededup BK-tree",
                     "seconds": full["seconds"], "cpu": None, "pairs": full["pairs"],
                     "recall": None,
                     "note": "complete find_duplicates(search_method='bktree') run"})  # fmt: skip
    ratio = projected / ours["search"]
    ratio_cpu = projected_cpu / ours["search_cpu"]
    ours["con"].close()

    # recall vs brute force on a subsample
    sub = small[: args.recall_n]
    sub_run = mih_search(sub, THRESHOLD, cores)
    mih = mih_pairs_as_values(sub_run["con"])
    sub_run["con"].close()
    brute = brute_force_pairs(sub, THRESHOLD)
    rows.append({"task": f"recall vs brute force, {args.recall_n:,} hashes",
                 "contender": "tol dedup MIH (DuckDB)", "seconds": sub_run["search"],
                 "cpu": sub_run["search_cpu"],
                 "pairs": len(mih), "recall": len(mih & brute) / max(len(brute), 1),
                 "note": f"brute force {len(brute)} pairs; {len(mih - brute)} extra"})  # fmt: skip

    print_table(rows, ratio, ratio_cpu, args.n, big["search"])
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores (shared), duckdb "
        f"{duckdb.__version__}, python {platform.python_version()}",
        "quick": args.quick, "threshold": THRESHOLD, "rows": rows,
        "ratio_bktree_over_mih": ratio, "ratio_bktree_over_mih_cpu": ratio_cpu,
        "planted_recall_big": recall,
    }  # fmt: skip
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"saved {RESULTS}")


def print_table(
    rows: list[dict], ratio: float, ratio_cpu: float, n: int, big_seconds: float
) -> None:
    print("\n| task | contender | wall s | CPU s | pairs | recall | note |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        recall = "" if row["recall"] is None else f"{row['recall']:.4f}"
        pairs = "" if row["pairs"] is None else f"{row['pairs']:,}"
        cpu = "" if row["cpu"] is None else f"{row['cpu']:.2f}"
        print(f"| {row['task']} | {row['contender']} | {row['seconds']:.2f} | {cpu} | {pairs} "
              f"| {recall} | {row['note']} |")  # fmt: skip
    print(f"\nBK-tree / MIH: {ratio:,.0f}x wall, {ratio_cpu:,.0f}x CPU time (goal >= 20x); "
          f"{n:,}-hash search {big_seconds:.1f} s wall (goal < 120 s)")  # fmt: skip


if __name__ == "__main__":
    main()
