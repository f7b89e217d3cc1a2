"""`tol dedup`: exact (sha256) and near (phash Hamming) duplicates, eval-set leakage and
held-out species, written to the core `duplicates` table (plus `dedup_leaks`,
`benchmark_images`) in one transaction.

Near duplicates are found by multi-index hashing in DuckDB: the hash is cut into k blocks;
two hashes within `t` bits agree exactly on at least k - t blocks (pigeonhole), so equal
masked values (`h & mask`) on every (k - t)-subset of blocks give the candidate pairs, and
`bit_count(xor)` verifies them. Clusters are the connected components of the verified pairs;
each cluster keeps one image by `KeepPolicy`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from treeoflife.errors import TolError
from treeoflife.images.leakage import BENCHMARK_SCHEMA, hash_benchmarks, load_excluded_species
from treeoflife.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 4
DEFAULT_PDQ_THRESHOLD = 10  # TreeOfLife-200M's leakage rule (PDQ, 256 bits)
# Research datasets first (their ids are what the published catalog cites), EOL last (its
# content ids are unstable); sources not listed rank after these, by name.
SOURCE_PRIORITY = ("inat21", "bioscan-1m", "bioscan-5m", "inat-open-data", "eol")
# Licence families (treeoflife.licenses ids without the version), most permissive first.
LICENSE_PRIORITY = (
    "cc0", "pdm", "no-known-restrictions", "cc-by", "cc-by-sa", "cc-by-nd", "cc-by-nc",
    "cc-by-nc-sa", "cc-by-nc-nd", "arr", "unknown",
)  # fmt: skip
KEEP_KEYS = ("source", "resolution", "license")
KINDS = ("exact", "near", "leak", "excluded-species")
# Cost model of one masked join, in "input rows scanned" (fitted on DuckDB 2.0 here: a
# 10M-hash self-join scans both sides in ~0.7 s, ~36 ns a row; each candidate pair it emits
# and verifies costs ~110 ns, about 3 rows).
COMBO_OVERHEAD_ROWS = 50_000
CANDIDATE_COST = 3.0
MAX_COMBOS = 512

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS dedup_leaks (
    record_id VARCHAR NOT NULL, benchmark VARCHAR, benchmark_path VARCHAR,
    hash VARCHAR,                 -- sha256 | phash | pdq: which hash matched
    distance INTEGER
);
CREATE TABLE IF NOT EXISTS dedup_runs (  -- one row per finished run: the stage's "done" mark
    finished_at TIMESTAMP, threshold INTEGER, options VARCHAR, stats VARCHAR  -- JSON
);
CREATE TABLE IF NOT EXISTS benchmark_images (
    benchmark VARCHAR, path VARCHAR, sha256 VARCHAR, phash VARCHAR, pdq VARCHAR,
    pdq_quality INTEGER, error VARCHAR
);
"""


@dataclass(frozen=True)
class KeepPolicy:
    """Which image of a duplicate cluster stays: compare by `order` (any of source,
    resolution, license), then by record_id so the choice is deterministic."""

    order: tuple[str, ...] = KEEP_KEYS
    source_priority: tuple[str, ...] = SOURCE_PRIORITY
    license_priority: tuple[str, ...] = LICENSE_PRIORITY

    def __post_init__(self) -> None:
        unknown = [key for key in self.order if key not in KEEP_KEYS]
        if unknown:
            raise TolError(
                f"keep policy: unknown key(s) {', '.join(unknown)}; use any of "
                f"{', '.join(KEEP_KEYS)} (record_id always breaks ties last)"
            )

    def describe(self) -> str:
        parts = {
            "source": "source " + " > ".join(self.source_priority),
            "resolution": "larger resolution",
            "license": "more permissive licence",
        }
        return ", then ".join([parts[key] for key in self.order] + ["record_id"])

    def order_sql(self, alias: str = "p") -> str:
        """ORDER BY terms over `alias` (columns source, pixels, license_family, record_id)."""
        terms = {
            "source": f"coalesce(list_position({_sql_list(self.source_priority)}, "
            f"{alias}.source), 1000000), {alias}.source",
            "resolution": f"{alias}.pixels DESC NULLS LAST",
            "license": f"coalesce(list_position({_sql_list(self.license_priority)}, "
            f"{alias}.license_family), 1000000)",
        }
        return ", ".join([terms[key] for key in self.order] + [f"{alias}.record_id"])


@dataclass(frozen=True)
class DedupOptions:
    """Everything `tol dedup` can be told; defaults are the documented ones."""

    threshold: int = DEFAULT_THRESHOLD
    policy: KeepPolicy = field(default_factory=KeepPolicy)
    exclude_images: tuple[str, ...] = ()
    exclude_species: Path | None = None
    pdq: bool | None = None  # None: use PDQ when `images` has a filled `pdq` column
    pdq_threshold: int = DEFAULT_PDQ_THRESHOLD
    workers: int = 1  # processes hashing benchmark images

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 32:
            raise TolError(f"--threshold {self.threshold}: give 0..32 bits of the 64-bit phash")
        if not 0 <= self.pdq_threshold <= 128:
            raise TolError(f"--pdq-threshold {self.pdq_threshold}: give 0..128 of 256 bits")

    @classmethod
    def from_stage(cls, stage: dict[str, Any]) -> DedupOptions:
        """Options from a pipeline's `[stages.dedup]` table (phash_threshold, ...)."""
        policy = KeepPolicy(
            order=tuple(stage.get("keep_order", KEEP_KEYS)),
            source_priority=tuple(stage.get("source_priority", SOURCE_PRIORITY)),
        )
        return cls(
            threshold=int(stage.get("phash_threshold", DEFAULT_THRESHOLD)),
            policy=policy,
            exclude_images=tuple(stage.get("exclude_images", ())),
            exclude_species=Path(stage["exclude_species"]) if "exclude_species" in stage else None,
            pdq_threshold=int(stage.get("pdq_threshold", DEFAULT_PDQ_THRESHOLD)),
        )


@dataclass
class DedupStats:
    """What one dedup run found; `summary_line()` is the one-line report."""

    images: int = 0  # fetched images (status ok) considered
    exact: int = 0
    near: int = 0
    leak: int = 0
    excluded_species: int = 0
    kept: int = 0  # images left for the release
    clusters: int = 0  # duplicate clusters (2+ images)
    chained: int = 0  # near rows farther than the threshold from their kept image
    bad_phash: int = 0  # status ok rows whose phash is not 16 hex digits
    hashes: int = 0  # distinct phash values searched
    pairs: int = 0  # verified near pairs among distinct hashes
    threshold: int = DEFAULT_THRESHOLD
    plans: dict[str, str] = field(default_factory=dict)  # MIH plan of each search
    policy: str = ""
    benchmark_images: int = 0
    benchmark_unreadable: int = 0
    leaks_by_benchmark: dict[str, int] = field(default_factory=dict)
    leaks_by_hash: dict[str, int] = field(default_factory=dict)
    species_excluded: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str:
        line = (
            f"dedup: {self.images} images -> {self.kept} kept; dropped {self.exact} exact, "
            f"{self.near} near (phash <= {self.threshold} bits, {self.clusters} clusters)"
        )
        if self.leak or self.benchmark_images:
            line += f", {self.leak} leaking into {self.benchmark_images} benchmark images"
        if self.excluded_species or self.species_excluded:
            line += (
                f", {self.excluded_species} records of "
                f"{len(self.species_excluded)} held-out species"
            )
        return line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Multi-index hashing


@dataclass(frozen=True)
class MihPlan:
    """Blocks (word, mask) of a `words`×64-bit hash, and the block subsets to join on."""

    words: int
    threshold: int
    blocks: tuple[tuple[int, int], ...]
    combos: tuple[tuple[int, ...], ...]
    expected_candidates: float

    def describe(self) -> str:
        widths = "/".join(str(bin(mask).count("1")) for _, mask in self.blocks)
        exact = len(self.combos[0]) if self.combos else 0
        return (
            f"{len(self.blocks)} blocks ({widths} bits), {len(self.combos)} joins on "
            f"{exact} equal block(s), ~{self.expected_candidates:,.0f} candidate pairs"
        )


def _blocks(words: int, count: int) -> tuple[tuple[int, int], ...]:
    """Cut `words` 64-bit words into `count` blocks as even as possible, none spanning words."""
    per_word = [count // words + (1 if w < count % words else 0) for w in range(words)]
    blocks = []
    for word, pieces in enumerate(per_word):
        shift = 0
        for piece in range(pieces):
            width = 64 // pieces + (1 if piece < 64 % pieces else 0)
            blocks.append((word, ((1 << width) - 1) << shift))
            shift += width
    return tuple(blocks)


def plan_mih(
    n_left: int, n_right: int | None, threshold: int, words: int = 1, blocks: int | None = None
) -> MihPlan:
    """Choose the block count k (and k - t blocks that must match) with the least cost.

    Pigeonhole: two hashes within t bits agree on at least k - t of k blocks. k = t + 1
    (one equal block) is the textbook plan; on millions of hashes its short blocks match
    too often, so more blocks with 2-3 equal ones (longer keys) win. Cost per join = rows
    scanned + expected candidate pairs (uniform hashes) + a fixed overhead. `n_right` None
    means a self-join (pairs counted once).
    """
    pairs = n_left * (n_left - 1) / 2 if n_right is None else n_left * n_right
    scanned = n_left + (n_left if n_right is None else n_right)
    best: MihPlan | None = None
    best_cost = math.inf
    choices = [blocks] if blocks else range(threshold + 1, min(threshold + 8, 64 * words) + 1)
    for count in choices:
        exact = count - threshold
        if exact < 1 or count > 64 * words or count < words:
            continue
        if math.comb(count, exact) > MAX_COMBOS and blocks is None:
            continue
        cut = _blocks(words, count)
        combos = tuple(itertools.combinations(range(count), exact))
        bits = [sum(bin(cut[b][1]).count("1") for b in combo) for combo in combos]
        candidates = sum(pairs / 2.0**b for b in bits)
        cost = len(combos) * (scanned + COMBO_OVERHEAD_ROWS) + CANDIDATE_COST * candidates
        if cost < best_cost:
            best_cost = cost
            best = MihPlan(words, threshold, cut, combos, candidates)
    if best is None:
        raise TolError(f"no multi-index plan for threshold {threshold} on {64 * words} bits")
    return best


def hamming_pairs(
    con: duckdb.DuckDBPyConnection,
    left: str,
    right: str | None,
    plan: MihPlan,
    out: str,
    on_join: Callable[[], None] | None = None,
) -> int:
    """Fill temp table `out(a, b, distance)` with every pair within `plan.threshold` bits.

    `left`/`right` are tables (node BIGINT, w0 UBIGINT[, w1 ...]); `right` None joins
    `left` with itself (a < b). One set-based join per block subset; pairs found by several
    subsets are kept once. Returns the number of pairs.
    """
    words = range(plan.words)
    distance = " + ".join(f"bit_count(xor(a.w{w}, b.w{w}))" for w in words)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {out}_all (a BIGINT, b BIGINT, distance INTEGER)")
    for combo in plan.combos:
        masks = [0] * plan.words
        for block in combo:
            word, mask = plan.blocks[block]
            masks[word] |= mask
        keys = [
            f"(a.w{w} & {mask}::UBIGINT) = (b.w{w} & {mask}::UBIGINT)"
            for w, mask in enumerate(masks)
            if mask
        ]
        if right is None:
            keys.append("a.node < b.node")
        con.execute(
            f"INSERT INTO {out}_all SELECT a.node, b.node, {distance} "
            f"FROM {left} a JOIN {right or left} b ON {' AND '.join(keys)} "
            f"WHERE {distance} <= {plan.threshold}"
        )
        if on_join:
            on_join()
    con.execute(f"CREATE OR REPLACE TEMP TABLE {out} AS SELECT DISTINCT * FROM {out}_all")
    con.execute(f"DROP TABLE {out}_all")
    return con.execute(f"SELECT count(*) FROM {out}").fetchall()[0][0]


def connected_components(con: duckdb.DuckDBPyConnection, edges: str, out: str) -> int:
    """Temp table `out(node, root)`: each node of an edge and its component's smallest node.

    The edges are few (verified duplicate pairs), so scipy's C union over them is the
    fastest exact way; the result goes back to DuckDB as Arrow. Returns the component count.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    pairs = con.execute(f"SELECT a, b FROM {edges}").fetchnumpy()
    a, b = np.asarray(pairs["a"], dtype=np.int64), np.asarray(pairs["b"], dtype=np.int64)
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    graph = coo_matrix(
        (np.ones(len(a), dtype=np.int8), (inverse[: len(a)], inverse[len(a) :])),
        shape=(len(nodes), len(nodes)),
    )
    count, labels = components(graph, directed=False) if len(nodes) else (0, np.array([]))
    roots = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(roots, labels.astype(np.int64), nodes)
    table = pa.table({"node": nodes, "root": roots[labels.astype(np.int64)]})
    con.register("_dd_components_arrow", table)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {out} AS SELECT * FROM _dd_components_arrow")
    con.unregister("_dd_components_arrow")
    return int(count)


# ---------------------------------------------------------------------------------------
# The stage


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _hex_words(column: str, words: int) -> list[str]:
    """SQL turning a hex string column into `words` UBIGINTs (NULL unless well formed)."""
    return [
        f"CASE WHEN length({column}) = {16 * words} "
        f"THEN TRY_CAST('0x' || substr({column}, {16 * w + 1}, 16) AS UBIGINT) END"
        for w in range(words)
    ]


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = ? "
            "AND column_name = ?",
            [table, column],
        ).fetchall()[0][0]
    )


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


class _Steps:
    """Times named steps into `stats.seconds`; mirrors them as rich progress tasks."""

    def __init__(self, stats: DedupStats, progress: Any | None) -> None:
        self.stats, self.progress = stats, progress
        self.name, self.t0, self.task, self.completed = "", 0.0, None, 0

    def start(self, name: str, total: int | None = None) -> None:
        self.name, self.t0, self.completed = name, time.perf_counter(), 0
        if self.progress is not None:
            self.task = self.progress.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def done(self) -> None:
        self.stats.seconds[self.name] = round(time.perf_counter() - self.t0, 3)
        if self.progress is not None and self.task is not None:
            finished = max(self.completed, 1)
            self.progress.update(self.task, total=finished, completed=finished)


def _node_of(h: str) -> str:
    """A 64-bit hash as a BIGINT node id (order-preserving bijection): no numbering, so
    images find their node without a join."""
    return f"(CAST({h} AS HUGEINT) - 9223372036854775808)::BIGINT"


def _load_images(con: duckdb.DuckDBPyConnection) -> None:
    """_dd_images: each fetched image's record_id, sha256, phash as UBIGINT, and node.

    `images` holds one row per record (fetch replaces a unit's rows); no DISTINCT here,
    which would cost a sort of every id: the few rows ranked later are made distinct.
    """
    (h,) = _hex_words("lower(phash)", 1)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _dd_images AS
        SELECT record_id, sha256, h, {_node_of("h")} AS node
        FROM (SELECT record_id, sha256, {h} AS h FROM images WHERE status = 'ok')
        """
    )


def _excluded_species(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    """_dd_excluded(record_id): records whose species is held out.

    The species is the resolved one (taxa_resolved) when the record was resolved, else the
    source's; both are compared as lower-case 'genus epithet'.
    """
    if not names:  # nothing held out: skip the scan of every record
        con.execute("CREATE OR REPLACE TEMP TABLE _dd_excluded (record_id VARCHAR)")
        return
    con.execute("CREATE OR REPLACE TEMP TABLE _dd_species_names (name VARCHAR)")
    con.executemany("INSERT INTO _dd_species_names VALUES (?)", [(n,) for n in names])
    binomial = (
        "CASE WHEN {s} LIKE '% %' THEN {s} WHEN {g} IS NOT NULL AND {s} IS NOT NULL "
        "THEN {g} || ' ' || {s} END"
    )
    resolved = binomial.format(s="t.species", g="t.genus")
    source = binomial.format(s="r.species", g="r.genus")
    normal = "lower(regexp_replace(trim({}), '\\s+', ' ', 'g'))"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _dd_excluded AS
        SELECT DISTINCT t.record_id FROM taxa_resolved t
        WHERE {normal.format(resolved)} IN (SELECT name FROM _dd_species_names)
        UNION
        SELECT r.record_id FROM records r
        WHERE {normal.format(source)} IN (SELECT name FROM _dd_species_names)
          AND r.record_id NOT IN (SELECT record_id FROM taxa_resolved)
        """
    )


def _distinct_hashes(
    con: duckdb.DuckDBPyConnection, out: str, from_sql: str, word_exprs: list[str]
) -> int:
    """Temp table `out(node, w0, ...)`: the distinct well-formed hashes of `from_sql`.

    Searching distinct values, not images, makes identical hashes free (a thousand copies
    of one picture are one node) and keeps the joins linear in the distinct count.
    """
    cols = ", ".join(f"{e} AS w{w}" for w, e in enumerate(word_exprs))
    names = ", ".join(f"w{w}" for w in range(len(word_exprs)))
    not_null = " AND ".join(f"w{w} IS NOT NULL" for w in range(len(word_exprs)))
    node = _node_of("w0") if len(word_exprs) == 1 else "row_number() OVER ()"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {out} AS
        SELECT {node} AS node, {names}
        FROM (SELECT DISTINCT {cols} FROM {from_sql}) WHERE {not_null}
        """
    )
    return _count(con, f"SELECT count(*) FROM {out}")


_NOT_EXCLUDED = "p.record_id NOT IN (SELECT record_id FROM _dd_excluded)"


def _load_benchmarks(con: duckdb.DuckDBPyConnection, bench: pa.Table) -> None:
    con.register("_dd_bench_arrow", bench)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dd_bench AS "
        "SELECT *, row_number() OVER (ORDER BY benchmark, path) AS bench_id FROM _dd_bench_arrow"
    )
    con.unregister("_dd_bench_arrow")


def _find_leaks(
    con: duckdb.DuckDBPyConnection, options: DedupOptions, use_pdq: bool, stats: DedupStats
) -> None:
    """_dd_leaks(record_id, benchmark, benchmark_path, hash, distance): training images equal
    (sha256) or within the threshold (phash; PDQ when enabled) of a benchmark image."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dd_leak_all "
        "(record_id VARCHAR, bench_id BIGINT, hash VARCHAR, distance INTEGER)"
    )
    benchmarks = _count(con, "SELECT count(*) FROM _dd_bench")
    if benchmarks:
        con.execute(
            "INSERT INTO _dd_leak_all SELECT p.record_id, b.bench_id, 'sha256', 0 "
            f"FROM _dd_images p JOIN _dd_bench b ON b.sha256 = p.sha256 WHERE {_NOT_EXCLUDED}"
        )
    # (hash, training table, its hash column, benchmark column, 64-bit words, threshold)
    searches = [("phash", "_dd_images", "p.h", "lower(b.phash)", 1, options.threshold)]
    if not benchmarks:
        searches = []
    elif use_pdq:
        searches.append(("pdq", "_dd_pdq", "p.pdq", "lower(b.pdq)", 4, options.pdq_threshold))
    for kind, table, train_col, bench_col, words, threshold in searches:
        train_words = [train_col] if words == 1 else _hex_words(train_col, words)
        bench_words = _hex_words(bench_col, words)
        n_train = _distinct_hashes(
            con, f"_dd_train_{kind}", f"{table} p WHERE {_NOT_EXCLUDED}", train_words
        )
        n_bench = _distinct_hashes(con, f"_dd_bench_{kind}", "_dd_bench b", bench_words)
        if not n_train or not n_bench:
            continue
        plan = plan_mih(n_train, n_bench, threshold, words)
        stats.plans[f"leak {kind}"] = plan.describe()
        hamming_pairs(con, f"_dd_train_{kind}", f"_dd_bench_{kind}", plan, f"_dd_lp_{kind}")
        train_key = " AND ".join(f"tn.w{w} = {e}" for w, e in enumerate(train_words))
        bench_key = " AND ".join(f"bn.w{w} = {e}" for w, e in enumerate(bench_words))
        con.execute(
            f"""
            INSERT INTO _dd_leak_all
            SELECT p.record_id, b.bench_id, '{kind}', lp.distance
            FROM _dd_lp_{kind} lp
            JOIN _dd_train_{kind} tn ON tn.node = lp.a
            JOIN _dd_bench_{kind} bn ON bn.node = lp.b
            JOIN {table} p ON {train_key}
            JOIN _dd_bench b ON {bench_key}
            WHERE {_NOT_EXCLUDED}
            """
        )
    # One row per record: by hash sha256 > phash > pdq, then the closest benchmark image.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _dd_leaks AS
        SELECT l.record_id, b.benchmark, b.path AS benchmark_path, l.hash, l.distance
        FROM _dd_leak_all l JOIN _dd_bench b USING (bench_id)
        QUALIFY row_number() OVER (
            PARTITION BY l.record_id
            ORDER BY list_position(['sha256', 'phash', 'pdq'], l.hash), l.distance, b.path
        ) = 1
        """
    )


def _pdq_table(con: duckdb.DuckDBPyConnection) -> int:
    """_dd_pdq(record_id, pdq): training PDQ hashes from the `images.pdq` column."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dd_pdq AS SELECT DISTINCT ON (record_id) record_id, "
        "lower(pdq) AS pdq FROM images WHERE status = 'ok' AND pdq IS NOT NULL "
        "ORDER BY record_id"
    )
    return _count(con, "SELECT count(*) FROM _dd_pdq")


def _pool_hashes(con: duckdb.DuckDBPyConnection) -> int:
    """_dd_pool: images left after leakage and species removal; _dd_nodes: their hashes."""
    removed = _count(con, "SELECT (SELECT count(*) FROM _dd_excluded) + count(*) FROM _dd_leaks")
    where = f"WHERE {_NOT_EXCLUDED} AND p.record_id NOT IN (SELECT record_id FROM _dd_leaks)"
    con.execute(
        "CREATE OR REPLACE TEMP VIEW _dd_pool AS "
        f"SELECT * FROM _dd_images p {where if removed else ''}"
    )
    return _distinct_hashes(con, "_dd_nodes", "_dd_pool p", ["p.h"])


def _clusters(con: duckdb.DuckDBPyConnection, policy: KeepPolicy) -> int:
    """_dd_drop(record_id, kept_record_id, kind, distance) from the verified pairs in
    _dd_edges; returns the number of duplicate clusters.

    Only images that can have a twin (in a verified pair, sharing a hash, or sharing a
    sha256) are ranked, and only they are joined to their source, licence and size: the
    window functions then touch thousands of rows, not every image.
    """
    # sha256 groups, found by a 64-bit hash of the digest (an integer group-by is several
    # times cheaper than one on 64-character strings; equality is re-checked below).
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _dd_sha_multi AS
        SELECT hash(sha256) AS sha_key,
               count(node) < count(*) OR min(node) <> max(node) AS spans_nodes
        FROM _dd_pool WHERE sha256 IS NOT NULL
        GROUP BY sha_key HAVING count(*) > 1
        """
    )
    # Byte-identical files are duplicates even where their stored phash differs (hashes
    # written by two versions): tie their hash nodes together too.
    con.execute(
        """
        INSERT INTO _dd_edges
        SELECT DISTINCT first_node, node, NULL FROM (
            SELECT node, min(node) OVER (PARTITION BY sha256) AS first_node
            FROM _dd_pool
            WHERE hash(sha256) IN (SELECT sha_key FROM _dd_sha_multi WHERE spans_nodes)
        ) WHERE node <> first_node
        """
    )
    connected_components(con, "_dd_edges", "_dd_components")
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _dd_twins AS
        SELECT DISTINCT ON (p.record_id) p.*, c.root
        FROM _dd_pool p LEFT JOIN _dd_components c USING (node)
        WHERE c.node IS NOT NULL
           OR p.node IN (SELECT node FROM _dd_pool WHERE node IS NOT NULL
                         GROUP BY node HAVING count(*) > 1)
           OR hash(p.sha256) IN (SELECT sha_key FROM _dd_sha_multi)
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _dd_candidates AS
        SELECT t.*, r.source,
               regexp_replace(coalesce(r.license, 'unknown'), '-[0-9][0-9.]*$', '')
                   AS license_family,
               CAST(coalesce(i.width, r.width) AS BIGINT)
                   * CAST(coalesce(i.height, r.height) AS BIGINT) AS pixels
        FROM _dd_twins t
        LEFT JOIN (SELECT DISTINCT ON (record_id) record_id, width, height FROM images
                   WHERE status = 'ok' AND record_id IN (SELECT record_id FROM _dd_twins)) i
               USING (record_id)
        LEFT JOIN record_images r ON r.record_id = t.record_id
        """
    )
    # Cluster id: the component's smallest node, else the image's own hash node; an image
    # without a usable phash joins its sha256 twins' cluster, or clusters by sha256 alone.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _dd_ranked AS
        WITH hashed AS (
            SELECT *, coalesce(root, node) AS hash_cluster FROM _dd_candidates
        ), clustered AS (
            SELECT * EXCLUDE (hash_cluster),
                   coalesce(hash_cluster, CASE WHEN sha256 IS NOT NULL
                       THEN min(hash_cluster) OVER (PARTITION BY sha256) END) AS by_hash,
                   CASE WHEN by_hash IS NULL THEN coalesce(sha256, record_id) END AS by_sha
            FROM hashed
        ), multi AS (
            SELECT * FROM clustered QUALIFY count(*) OVER (PARTITION BY by_hash, by_sha) > 1
        )
        SELECT *, row_number() OVER (
                      PARTITION BY by_hash, by_sha ORDER BY {policy.order_sql()}) AS rank
        FROM multi p
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _dd_drop AS
        SELECT d.record_id, k.record_id AS kept_record_id,
               CASE WHEN d.sha256 = k.sha256 THEN 'exact' ELSE 'near' END AS kind,
               CASE WHEN d.sha256 = k.sha256 THEN 0
                    ELSE bit_count(xor(d.h, k.h)) END AS distance
        FROM _dd_ranked d JOIN _dd_ranked k
          ON k.by_hash IS NOT DISTINCT FROM d.by_hash AND k.by_sha IS NOT DISTINCT FROM d.by_sha
         AND k.rank = 1
        WHERE d.rank > 1
        """
    )
    return _count(con, "SELECT count(DISTINCT (by_hash, by_sha)) FROM _dd_ranked")


def _write(con: duckdb.DuckDBPyConnection, options: DedupOptions, stats: DedupStats) -> None:
    """Replace `duplicates`, `dedup_leaks` and `benchmark_images`, and log the run in
    `dedup_runs`, in one transaction: a crash leaves the previous result whole."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "INSERT INTO dedup_runs VALUES (now(), ?, ?, ?)",
            [options.threshold, json.dumps(_options_json(options)), json.dumps(stats.to_json())],
        )
        con.execute("DELETE FROM duplicates")
        con.execute(
            """
            INSERT INTO duplicates (record_id, kept_record_id, kind, distance)
            SELECT record_id, NULL, 'excluded-species', NULL FROM _dd_excluded
            UNION ALL
            SELECT record_id, NULL, 'leak', distance FROM _dd_leaks
            UNION ALL
            SELECT record_id, kept_record_id, kind, distance FROM _dd_drop
            """
        )
        con.execute("DELETE FROM dedup_leaks")
        con.execute(
            "INSERT INTO dedup_leaks SELECT record_id, benchmark, benchmark_path, hash, "
            "distance FROM _dd_leaks"
        )
        con.execute("DELETE FROM benchmark_images")
        con.execute(
            "INSERT INTO benchmark_images SELECT benchmark, path, sha256, phash, pdq, "
            "pdq_quality, error FROM _dd_bench"
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _use_pdq(con: duckdb.DuckDBPyConnection, options: DedupOptions) -> bool:
    """PDQ joins the leakage search when asked, or by default when `images.pdq` is filled."""
    if not options.exclude_images or options.pdq is False:
        return False
    if not _has_column(con, "images", "pdq"):
        if options.pdq:
            raise TolError(
                "--pdq: the images table has no pdq column; fetch with PDQ hashes "
                "(`tol images fetch --pdq`) or leave --pdq out to compare phash only"
            )
        return False
    filled = _pdq_table(con)
    if options.pdq and not filled:
        raise TolError("--pdq: images.pdq is empty; re-fetch with PDQ hashes or drop --pdq")
    return filled > 0


def run_dedup(
    con: duckdb.DuckDBPyConnection,
    options: DedupOptions = DedupOptions(),
    progress: Any | None = None,
) -> DedupStats:
    """Run the whole stage on an open catalog; re-running replaces the previous result.

    `progress` is an optional rich Progress; each step adds a task to it.
    """
    stats = DedupStats(threshold=options.threshold, policy=options.policy.describe())
    steps = _Steps(stats, progress)
    con.execute(TABLES_SQL)
    species = load_excluded_species(options.exclude_species) if options.exclude_species else []
    stats.species_excluded = species

    steps.start("load images")
    _load_images(con)
    stats.images = _count(con, "SELECT count(*) FROM _dd_images")
    stats.bad_phash = _count(con, "SELECT count(*) FROM _dd_images WHERE h IS NULL")
    if stats.bad_phash:
        log.warning("%d fetched images lack a 16-hex phash; only sha256 dedups them",
                    stats.bad_phash)  # fmt: skip
    _excluded_species(con, species)
    use_pdq = _use_pdq(con, options)
    steps.done()

    bench = BENCHMARK_SCHEMA.empty_table()
    if options.exclude_images:
        steps.start("hash benchmark images")
        bench = hash_benchmarks(
            options.exclude_images, with_pdq=use_pdq, workers=options.workers,
            on_image=steps.advance,
        )  # fmt: skip
        steps.done()
    stats.benchmark_images = bench.num_rows
    stats.benchmark_unreadable = sum(1 for e in bench.column("error").to_pylist() if e)
    if stats.benchmark_unreadable:
        log.warning("%d benchmark images could not be decoded (see benchmark_images.error)",
                    stats.benchmark_unreadable)  # fmt: skip
    _load_benchmarks(con, bench)
    steps.start("leakage search")
    _find_leaks(con, options, use_pdq, stats)
    steps.done()

    steps.start("distinct hashes")
    stats.hashes = _pool_hashes(con)
    plan = plan_mih(stats.hashes, None, options.threshold)
    stats.plans["near"] = plan.describe()
    steps.done()
    steps.start("near-duplicate joins", total=len(plan.combos))
    stats.pairs = hamming_pairs(con, "_dd_nodes", None, plan, "_dd_edges", steps.advance)
    steps.done()
    steps.start("clusters and keep policy")
    stats.clusters = _clusters(con, options.policy)
    steps.done()

    _fill_counts(con, stats, options)
    steps.start("write duplicates")
    _write(con, options, stats)
    steps.done()
    _drop_temporaries(con)
    return stats


def _drop_temporaries(con: duckdb.DuckDBPyConnection) -> None:
    for (view,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE temporary AND starts_with(view_name, '_dd_')"
    ).fetchall():
        con.execute(f"DROP VIEW IF EXISTS {view}")
    for (table,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary AND starts_with(table_name, '_dd_')"
    ).fetchall():
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _fill_counts(con: duckdb.DuckDBPyConnection, stats: DedupStats, options: DedupOptions) -> None:
    """Counts from the run's temp tables (before they are written)."""
    kinds = dict(con.execute("SELECT kind, count(*) FROM _dd_drop GROUP BY kind").fetchall())
    stats.exact, stats.near = kinds.get("exact", 0), kinds.get("near", 0)
    stats.leak = _count(con, "SELECT count(*) FROM _dd_leaks")
    stats.excluded_species = _count(con, "SELECT count(*) FROM _dd_excluded")
    stats.kept = _count(
        con,
        "SELECT count(*) FROM _dd_images p WHERE p.record_id NOT IN (SELECT record_id FROM "
        "_dd_excluded UNION ALL SELECT record_id FROM _dd_leaks UNION ALL SELECT record_id "
        "FROM _dd_drop)",
    )
    stats.chained = _count(
        con, f"SELECT count(*) FROM _dd_drop WHERE kind = 'near' AND distance > {options.threshold}"
    )
    stats.leaks_by_benchmark = dict(
        con.execute("SELECT benchmark, count(*) FROM _dd_leaks GROUP BY 1 ORDER BY 1").fetchall()
    )
    stats.leaks_by_hash = dict(
        con.execute("SELECT hash, count(*) FROM _dd_leaks GROUP BY 1 ORDER BY 1").fetchall()
    )


def dedup_workspace(
    workspace: Workspace | Path, options: DedupOptions = DedupOptions(), progress: Any = None
) -> DedupStats:
    """Dedup a workspace's fetched images and write `reports/dedup.json` beside the tables."""
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    with workspace.connect() as con:
        if not _count(con, "SELECT count(*) FROM images WHERE status = 'ok'"):
            raise TolError(
                f"{workspace.catalog_path}: no fetched images (images.status = 'ok'); "
                "run `tol images fetch` first"
            )
        stats = run_dedup(con, options, progress)
    workspace.reports.mkdir(parents=True, exist_ok=True)
    report = {"options": _options_json(options), "stats": stats.to_json()}
    (workspace.reports / "dedup.json").write_text(json.dumps(report, indent=2) + "\n")
    return stats


def _options_json(options: DedupOptions) -> dict[str, Any]:
    data = asdict(options)
    data["exclude_species"] = str(options.exclude_species) if options.exclude_species else None
    return data
