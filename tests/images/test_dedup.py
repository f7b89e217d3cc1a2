"""`tol dedup`: planted duplicates of the sample, keep policy, idempotence, and the
multi-index Hamming search against brute force."""

from __future__ import annotations

import itertools
import json
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from treeoflife.cli import app
from treeoflife.errors import TolError
from treeoflife.images.dedup import (
    LICENSE_PRIORITY,
    DedupOptions,
    KeepPolicy,
    connected_components,
    dedup_workspace,
    hamming_pairs,
    plan_mih,
    run_dedup,
)
from treeoflife.workspace import Workspace

try:
    from .dedup_fixtures import copy_workspace, expected_clusters, fill_images, rid
except ImportError:  # tests/images is not a package
    from dedup_fixtures import copy_workspace, expected_clusters, fill_images, rid


@pytest.fixture(scope="module")
def fetched_workspace(tmp_path_factory, pulled_workspace) -> Workspace:
    """The pulled sample with `images` filled as fetch would; tests copy it before writing."""
    workspace = copy_workspace(pulled_workspace, tmp_path_factory.mktemp("dedup") / "ws")
    fill_images(workspace)
    return workspace


@pytest.fixture
def workspace(fetched_workspace, tmp_path) -> Workspace:
    return copy_workspace(fetched_workspace, tmp_path / "ws")


def duplicates(workspace: Workspace) -> list[tuple]:
    with workspace.connect(read_only=True) as con:
        return con.execute(
            "SELECT record_id, kept_record_id, kind, distance FROM duplicates ORDER BY ALL"
        ).fetchall()


def clusters_of(rows: list[tuple]) -> list[frozenset[str]]:
    by_kept: dict[str, set[str]] = {}
    for record_id, kept, kind, _ in rows:
        if kind in ("exact", "near"):
            by_kept.setdefault(kept, {kept}).add(record_id)
    return sorted((frozenset(c) for c in by_kept.values()), key=sorted)


def test_planted_duplicates_found_with_zero_false_merges(workspace, sample_expected):
    stats = dedup_workspace(workspace)
    rows = duplicates(workspace)
    expected = sorted((frozenset(c) for c in expected_clusters(sample_expected)), key=sorted)
    assert clusters_of(rows) == expected  # every planted cluster, and nothing else
    assert stats.clusters == len(expected)
    dropped = {row[0] for row in rows}
    assert len(dropped) == len(rows)  # one row per record
    assert not dropped & {row[1] for row in rows}  # a kept image is never dropped
    exact_members = {rid(ref) for g in sample_expected["exact_duplicate_groups"] for ref in g}
    for record_id, _, kind, distance in rows:
        if record_id in exact_members:
            assert (kind, distance) == ("exact", 0)
    for pair in sample_expected["near_duplicate_pairs"]:
        a, b = rid(pair["a"]), rid(pair["b"])
        (row,) = [r for r in rows if {r[0], r[1]} == {a, b}]
        assert row[2:] == ("near", pair["phash_distance"])
    with workspace.connect(read_only=True) as con:
        ok = con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchall()[0][0]
    assert stats.images == ok and stats.kept == ok - len(rows)
    assert stats.exact + stats.near == len(rows)
    report = json.loads((workspace.reports / "dedup.json").read_text())
    assert report["stats"]["kept"] == stats.kept and report["options"]["threshold"] == 4
    assert "kept" in stats.summary_line()


def test_threshold_zero_keeps_near_duplicates_apart(workspace, sample_expected):
    stats = dedup_workspace(workspace, DedupOptions(threshold=0))
    assert stats.near == 0
    assert stats.exact == sum(len(g) - 1 for g in sample_expected["exact_duplicate_groups"])


def test_keep_policy_source_priority(workspace):
    group = {"inat21:1123190", "inat-open-data:152916298", "eol:7600550"}

    def kept_of_group() -> set[str]:
        return {kept for rec, kept, _, _ in duplicates(workspace) if rec in group}

    dedup_workspace(workspace)
    assert kept_of_group() == {"inat21:1123190"}
    policy = KeepPolicy(source_priority=("eol", "inat21"))
    dedup_workspace(workspace, DedupOptions(policy=policy))
    assert kept_of_group() == {"eol:7600550"}


def test_keep_policy_resolution_then_license(workspace):
    with workspace.connect() as con:
        con.execute("UPDATE images SET width = 4000 WHERE record_id = 'eol:7600550'")
        licenses = dict(
            con.execute(
                "SELECT record_id, license FROM record_images WHERE record_id IN "
                "('inat21:1255927', 'inat21:2692156')"
            ).fetchall()
        )
    dedup_workspace(workspace, DedupOptions(policy=KeepPolicy(order=("resolution",))))
    kept = {rec: k for rec, k, _, _ in duplicates(workspace)}
    assert kept["inat21:1123190"] == "eol:7600550"

    def family_rank(record_id: str) -> tuple[int, str]:
        family = re.sub(r"-[0-9][0-9.]*$", "", licenses[record_id])  # cc-by-sa-4.0 -> cc-by-sa
        return (LICENSE_PRIORITY.index(family), record_id)

    dedup_workspace(workspace, DedupOptions(policy=KeepPolicy(order=("license",))))
    pair_kept = {k for rec, k, _, _ in duplicates(workspace) if rec.startswith("inat21:")}
    assert min(licenses, key=family_rank) in pair_kept


def test_rerun_replaces_results(workspace, tmp_path):
    species = tmp_path / "held-out.txt"
    species.write_text("Bufo bufo\n")
    dedup_workspace(workspace, DedupOptions(exclude_species=species))
    with_species = duplicates(workspace)
    assert any(kind == "excluded-species" for _, _, kind, _ in with_species)
    dedup_workspace(workspace)
    first = duplicates(workspace)
    dedup_workspace(workspace)
    assert duplicates(workspace) == first
    assert not any(kind == "excluded-species" for _, _, kind, _ in first)
    assert len(with_species) > len(first)


def test_bad_phash_dedups_by_sha256_only(workspace):
    with workspace.connect() as con:
        con.execute("UPDATE images SET phash = 'not-a-hash' WHERE record_id = 'inat21:2692156'")
    stats = dedup_workspace(workspace)
    assert stats.bad_phash == 1
    kept = {rec: (k, kind) for rec, k, kind, _ in duplicates(workspace)}
    assert kept["inat21:1255927"] == ("inat21:2692156", "exact") or kept["inat21:2692156"] == (
        "inat21:1255927",
        "exact",
    )


def test_no_fetched_images_is_an_error(fresh_workspace):
    with pytest.raises(TolError, match="tol images fetch"):
        dedup_workspace(fresh_workspace)


def test_cli_prints_summary_and_json(workspace):
    result = CliRunner().invoke(app, ["dedup", "--workspace", str(workspace.root), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert stats["exact"] == 9 and stats["near"] == 6
    bad = CliRunner().invoke(app, ["dedup", "-w", str(workspace.root), "--keep-order", "size"])
    assert bad.exit_code == 1 and "unknown key" in bad.output


def test_options_from_pipeline_stage():
    options = DedupOptions.from_stage({"phash_threshold": 6, "source_priority": ["eol"]})
    assert options.threshold == 6 and options.policy.source_priority == ("eol",)
    with pytest.raises(TolError, match="threshold"):
        DedupOptions(threshold=40)


# --- the search itself, against brute force ---------------------------------------------


def planted_hashes(n: int, words: int, seed: int) -> np.ndarray:
    """Random hashes plus near copies of some of them at 1..8 flipped bits."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    copies = base[rng.integers(0, n, size=n // 4)].copy()
    for row in copies:
        for bit in rng.choice(64 * words, size=rng.integers(1, 9), replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return np.unique(np.concatenate([base, copies]), axis=0)


def brute_force(left: np.ndarray, right: np.ndarray | None, threshold: int) -> set:
    other = left if right is None else right
    dist = sum(
        np.bitwise_count(left[:, w, None] ^ other[None, :, w]).astype(np.int64)
        for w in range(left.shape[1])
    )
    a, b = np.nonzero(dist <= threshold)
    keep = a < b if right is None else np.ones(len(a), bool)
    return {(int(i), int(j), int(dist[i, j])) for i, j in zip(a[keep], b[keep], strict=True)}


def load_nodes(con, name: str, hashes: np.ndarray) -> None:
    columns = {"node": np.arange(len(hashes), dtype=np.int64)}
    columns |= {f"w{w}": hashes[:, w] for w in range(hashes.shape[1])}
    con.register("arrow_nodes", pa.table(columns))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM arrow_nodes")
    con.unregister("arrow_nodes")


@pytest.mark.parametrize(
    ("words", "threshold", "blocks"),
    [(1, 0, None), (1, 2, None), (1, 4, None), (1, 4, 7), (1, 4, 6), (1, 8, None), (4, 10, None)],
)
def test_hamming_pairs_equal_brute_force(words, threshold, blocks):
    con = duckdb.connect()
    hashes = planted_hashes(1500, words, seed=threshold)
    load_nodes(con, "nodes", hashes)
    plan = plan_mih(len(hashes), None, threshold, words, blocks=blocks)
    hamming_pairs(con, "nodes", None, plan, "pairs")
    found = set(con.execute("SELECT a, b, distance FROM pairs").fetchall())
    assert found == brute_force(hashes, None, threshold)
    assert threshold == 0 or found  # the planted copies are there to be found

    queries = planted_hashes(300, words, seed=threshold + 100)
    queries[:100] = hashes[:100]  # some benchmark hashes equal or near training ones
    queries[100:150, 0] ^= np.uint64(5)
    load_nodes(con, "queries", queries)
    plan = plan_mih(len(hashes), len(queries), threshold, words, blocks=blocks)
    hamming_pairs(con, "nodes", "queries", plan, "cross_pairs")
    cross = set(con.execute("SELECT a, b, distance FROM cross_pairs").fetchall())
    assert cross == brute_force(hashes, queries, threshold)


def test_plan_blocks_cover_the_hash_and_follow_size():
    small = plan_mih(350, None, 4)
    assert len(small.blocks) == 5 and all(len(c) == 1 for c in small.combos)  # pigeonhole
    big = plan_mih(10_000_000, None, 4)
    assert len(big.combos[0]) >= 2  # longer keys once short blocks collide too often
    for plan in (small, big, plan_mih(1000, 1000, 10, words=4)):
        for word in range(plan.words):
            masks = [mask for w, mask in plan.blocks if w == word]
            assert sum(masks) == 2**64 - 1
            assert all(a & b == 0 for a, b in itertools.combinations(masks, 2))
        assert len(plan.blocks) - len(plan.combos[0]) == plan.threshold


def test_connected_components_roots_are_smallest_nodes():
    con = duckdb.connect()
    con.execute("CREATE TABLE edges AS SELECT * FROM (VALUES (5, 9), (9, 2), (7, 8)) t(a, b)")
    assert connected_components(con, "edges", "comp") == 2
    roots = dict(con.execute("SELECT node, root FROM comp").fetchall())
    assert roots == {2: 2, 5: 2, 9: 2, 7: 7, 8: 7}


def test_a_record_listed_twice_in_images_is_never_its_own_duplicate(workspace):
    with workspace.connect() as con:
        con.execute("INSERT INTO images SELECT * FROM images WHERE record_id = 'inat21:1255927'")
        con.execute("INSERT INTO images SELECT * FROM images WHERE record_id = 'eol:3023774'")
    dedup_workspace(workspace)
    rows = duplicates(workspace)
    assert all(record != kept for record, kept, _, _ in rows)
    assert len({row[0] for row in rows}) == len(rows)
    assert "eol:3023774" not in {row[0] for row in rows}


def test_runs_on_one_connection_are_logged(workspace, tmp_path):
    species = tmp_path / "held-out.txt"
    species.write_text("Bufo bufo\n")
    with workspace.connect() as con:
        first = run_dedup(con, DedupOptions(exclude_species=species))
        second = run_dedup(con)
        runs = con.execute(
            "SELECT threshold, stats FROM dedup_runs ORDER BY finished_at"
        ).fetchall()
        kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM duplicates").fetchall()}
    assert first.excluded_species == 4 and second.excluded_species == 0
    assert kinds == {"exact", "near"}
    assert [json.loads(stats)["kept"] for _, stats in runs] == [first.kept, second.kept]


@pytest.mark.slow
def test_real_fetch_then_dedup_finds_the_planted_clusters(
    pulled_workspace, sample_server, sample_expected, tmp_path
):
    """End to end: `tol images fetch` over loopback, then dedup: the planted clusters only."""
    from treeoflife.images.fetch import fetch_images

    workspace = copy_workspace(pulled_workspace, tmp_path / "e2e")
    fetch_images(workspace, mirror=sample_server.url, pipeline="sample", workers=1, threads=4)
    stats = dedup_workspace(workspace)
    expected = sorted((frozenset(c) for c in expected_clusters(sample_expected)), key=sorted)
    assert clusters_of(duplicates(workspace)) == expected
    assert stats.images == 340 and stats.kept == 325
