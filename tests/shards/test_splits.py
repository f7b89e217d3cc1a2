"""Splits are a pure function of the group and seed; ids are UUIDv5 or the published ones."""

from __future__ import annotations

import csv
import uuid

import duckdb

from tests.shards.conftest import SMALL_SHARDS, copy_workspace, tiny_jpeg
from treeoflife.shards import shard_release, splits


def test_uuid5_sql_matches_python_uuid5():
    con = duckdb.connect()
    for name in ["inat21:14584", "eol:1040008", "bioscan-1m:BIOUG35360-H12", "x:ü ÿ"]:
        source, source_id = name.split(":", 1)
        want = str(uuid.uuid5(splits.ID_NAMESPACE, name))
        assert splits.treeoflife_id(source, source_id) == want
        got = con.execute(f"SELECT {splits.treeoflife_id_sql('?')}", [name]).fetchall()[0][0]
        assert got == want
        assert uuid.UUID(got).version == 5 and "." not in got


def test_bucket_sql_matches_python_and_fractions_hold():
    con = duckdb.connect()
    keys = [f"obs-{n}" for n in range(20_000)]
    con.execute("CREATE TABLE k AS SELECT unnest(?::VARCHAR[]) AS key", [keys])
    sql_rows = con.execute(
        f"SELECT key, {splits.is_val_sql('key', 7, 0.05)}, "
        f"{splits.is_train_small_sql('key', 7, 0.10)} FROM k"
    ).fetchall()
    python = {key: splits.assign_split(key, 7, 0.05, 0.10) for key in keys}
    for key, is_val, is_small in sql_rows:
        split, small = python[key]
        assert (split == "val") == is_val
        if split == "train":
            assert small == is_small
    val_share = sum(s == "val" for s, _ in python.values()) / len(keys)
    small_share = sum(small for _, small in python.values()) / sum(
        s == "train" for s, _ in python.values()
    )
    assert 0.04 < val_share < 0.06
    assert 0.09 < small_share < 0.11
    # Another seed gives another split.
    assert python != {key: splits.assign_split(key, 8, 0.05, 0.10) for key in keys}


def _release_rows(workspace) -> dict[str, set[str]]:
    with workspace.connect(read_only=True) as con:
        rows = con.execute("SELECT record_id, split FROM release").fetchall()
    out: dict[str, set[str]] = {}
    for record_id, split in rows:
        out.setdefault(record_id, set()).add(split)
    return out


def test_groups_never_straddle_and_train_small_is_a_subset(released_workspace):
    with released_workspace.connect(read_only=True) as con:
        straddling = con.execute(
            """SELECT r.group_id, count(DISTINCT rl.split)
               FROM release rl JOIN records r USING (record_id)
               WHERE rl.split <> 'train_small' GROUP BY 1 HAVING count(DISTINCT rl.split) > 1"""
        ).fetchall()
        multi = con.execute(
            "SELECT count(*) FROM (SELECT group_id FROM records GROUP BY 1 HAVING count(*) > 1)"
        ).fetchall()[0][0]
    assert multi > 0, "the sample must hold observations with several photos"
    assert straddling == []
    rows = _release_rows(released_workspace)
    for record_id, record_splits in rows.items():
        assert record_splits in ({"train"}, {"val"}, {"train", "train_small"}), record_id


def test_splits_are_stable_when_records_are_added(released_workspace, tmp_path):
    before = _release_rows(released_workspace)
    workspace = copy_workspace(released_workspace, tmp_path / "ws")
    staged = workspace.root / "staging" / "unit-extra.tar"
    import io
    import tarfile

    with workspace.connect() as con, tarfile.open(staged, "w") as tar:
        for n in range(40):
            data = tiny_jpeg(1000 + n)
            info = tarfile.TarInfo(f"extra{n:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            con.execute(
                "INSERT INTO record_rows (source, source_id, group_id, license, taxon_key) "
                "VALUES ('eol', ?, ?, 'cc-by-4.0', NULL)",
                [f"9{n:06d}", f"eol:9{n:06d}"],
            )
            con.execute(
                "INSERT INTO taxa_resolved VALUES (?, 'Animalia', 'Chordata', 'Aves', "
                "'Passeriformes', 'Corvidae', 'Pica', 'Pica hudsonia', NULL, 'exact', 'gbif', "
                "'1', 'resolved')",
                [f"eol:9{n:06d}"],
            )
            con.execute(
                "INSERT INTO images (record_id, status, sha256, phash, width, height, shard, "
                "member) VALUES (?, 'ok', ?, ?, 24, 16, 'staging/unit-extra.tar', ?)",
                [f"eol:9{n:06d}", f"{n:064x}", f"{n:016x}", f"extra{n:04d}.jpg"],
            )
    stats = shard_release(workspace, SMALL_SHARDS)
    after = _release_rows(workspace)
    assert stats.released == len(before) + 40
    assert {k: v for k, v in after.items() if k in before} == before


def test_ids_from_published_catalog_reuses_ids_and_splits(staged_workspace, tmp_path):
    workspace = copy_workspace(staged_workspace, tmp_path / "ws")
    with workspace.connect(read_only=True) as con:
        eol, page = con.execute(
            "SELECT source_id, source_taxon_id FROM records r JOIN images i USING (record_id) "
            "WHERE source = 'eol' AND i.status = 'ok' AND license = 'cc-by-4.0' "
            "AND record_id NOT IN (SELECT record_id FROM duplicates) ORDER BY 1 LIMIT 1"
        ).fetchall()[0]
        inat_member = con.execute(
            "SELECT r.member FROM records r JOIN images i USING (record_id) WHERE source = "
            "'inat21' AND i.status = 'ok' AND license LIKE 'cc-by%' AND license NOT LIKE "
            "'%nd%' AND record_id NOT IN (SELECT record_id FROM duplicates) ORDER BY 1 LIMIT 1"
        ).fetchall()[0][0]
    published = tmp_path / "catalog.csv"
    ids = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
    header = [
        "split",
        "treeoflife_id",
        "eol_content_id",
        "eol_page_id",
        "bioscan_part",
        "bioscan_filename",
        "inat21_filename",
        "inat21_cls_name",
        "inat21_cls_num",
    ]
    with published.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["val", ids[0], eol, page, "", "", "", "", ""])
        name = inat_member.rsplit("/", 1)[1]
        writer.writerow(["train", ids[1], "", "", "", "", name, "x", "0"])
        writer.writerow(["train_small", ids[1], "", "", "", "", name, "x", "0"])
    from treeoflife.shards import ShardOptions

    options = ShardOptions(min_shards=2, shard_samples=100, ids_from=published)
    stats = shard_release(workspace, options)
    assert stats.ids_from_catalog == 2
    with workspace.connect(read_only=True) as con:
        rows = dict(
            con.execute(
                "SELECT treeoflife_id, list(split ORDER BY split) FROM release "
                "WHERE treeoflife_id IN (?, ?) GROUP BY 1",
                ids,
            ).fetchall()
        )
    assert rows == {ids[0]: ["val"], ids[1]: ["train", "train_small"]}
