"""catalog.csv has exactly the published TreeOfLife-10M columns; the parquet twin and
licenses.csv carry licence, source URL and hashes; excluded records are absent."""

from __future__ import annotations

import csv
import json

import duckdb

from treeoflife.shards.catalog import CATALOG_CSV_COLUMNS, CATALOG_PARQUET_EXTRA

PUBLISHED = (
    "split,treeoflife_id,eol_content_id,eol_page_id,bioscan_part,bioscan_filename,"
    "inat21_filename,inat21_cls_name,inat21_cls_num,kingdom,phylum,class,order,family,genus,"
    "species,common"
)


def _rows(release):
    with (release / "catalog.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_catalog_csv_has_exactly_the_published_columns(released_workspace):
    release = released_workspace.root / "release"
    header = (release / "catalog.csv").read_text().splitlines()[0]
    assert header == PUBLISHED
    assert ",".join(CATALOG_CSV_COLUMNS) == PUBLISHED
    rows = _rows(release)
    assert all(row["common"] for row in rows)
    assert all(row["species"] == row["species"].lower() for row in rows)
    assert all(" " not in row["species"] or "×" in row["species"] for row in rows)
    assert {row["split"] for row in rows} == {"train", "val", "train_small"}


def test_catalog_rows_match_release_and_exclusions(released_workspace):
    release = released_workspace.root / "release"
    rows = _rows(release)
    manifest = json.loads((release / "manifest.json").read_text())
    by_split: dict[str, int] = {}
    for row in rows:
        by_split[row["split"]] = by_split.get(row["split"], 0) + 1
    with released_workspace.connect(read_only=True) as con:
        released = con.execute("SELECT count(*) FROM release").fetchall()[0][0]
        leaked = con.execute(
            """SELECT count(*) FROM release WHERE record_id IN (SELECT record_id FROM duplicates)
               OR record_id IN (SELECT record_id FROM images WHERE status <> 'ok')"""
        ).fetchall()[0][0]
    assert len(rows) == released and leaked == 0
    train_ids = {r["treeoflife_id"] for r in rows if r["split"] == "train"}
    small_ids = {r["treeoflife_id"] for r in rows if r["split"] == "train_small"}
    assert small_ids and small_ids <= train_ids
    hosted = manifest["counts"]["hosted"]
    shard_samples = sum(t["samples"] for s, t in manifest["splits"].items() if s != "train_small")
    assert shard_samples == hosted
    assert manifest["counts"]["excluded"]["dedup-exact"] > 0
    assert manifest["counts"]["excluded"]["image-failed"] > 0


def test_source_columns_come_from_the_source_tables(released_workspace):
    release = released_workspace.root / "release"
    con = duckdb.connect(str(released_workspace.catalog_path), read_only=True)
    try:
        con.execute(
            f"CREATE TEMP VIEW cat AS SELECT * FROM read_parquet('{release / 'catalog.parquet'}')"
        )
        eol = con.execute(
            """SELECT count(*), count(*) FILTER (WHERE c.eol_page_id = m."EOL page ID"::VARCHAR)
               FROM cat c JOIN raw_eol__media_manifest m
                 ON m."EOL content ID"::VARCHAR = c.eol_content_id"""
        ).fetchall()[0]
        bioscan = con.execute(
            """SELECT count(*), count(*) FILTER (WHERE c.bioscan_part = m.chunk_number
                                                  AND c.bioscan_filename = m.image_file)
               FROM cat c JOIN raw_bioscan_1m__metadata m ON m.sampleid = c.source_id
               WHERE c.source = 'bioscan-1m'"""
        ).fetchall()[0]
        inat = con.execute(
            """SELECT count(*), count(*) FILTER (
                   WHERE c.inat21_cls_num = a.category_id
                     AND c.inat21_cls_name = regexp_replace(k.image_dir_name, '^\\d+_', '')
                     AND i.file_name LIKE '%/' || c.inat21_filename)
               FROM cat c JOIN raw_inat21__images i ON i.id::VARCHAR = c.source_id
               JOIN raw_inat21__annotations a ON a.image_id = i.id
               JOIN raw_inat21__categories k ON k.id = a.category_id
               WHERE c.source = 'inat21'"""
        ).fetchall()[0]
        others = con.execute(
            """SELECT count(*) FROM cat WHERE source IN ('inat-open-data', 'bioscan-5m')
               AND coalesce(eol_content_id, bioscan_filename, inat21_filename) IS NOT NULL"""
        ).fetchall()[0][0]
        columns = [r[0] for r in con.execute("DESCRIBE cat").fetchall()]
    finally:
        con.close()
    for total, matching in (eol, bioscan, inat):
        assert total > 0 and total == matching
    assert others == 0
    assert columns == list(CATALOG_CSV_COLUMNS) + list(CATALOG_PARQUET_EXTRA)


def test_licenses_csv_one_row_per_image_with_rights(released_workspace):
    release = released_workspace.root / "release"
    with (release / "licenses.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [row["treeoflife_id"] for row in rows]
    assert len(ids) == len(set(ids))
    catalog_ids = {row["treeoflife_id"] for row in _rows(release)}
    assert set(ids) == catalog_ids
    assert all(row["license"] and row["sha256"] for row in rows)
    assert {row["hosted"] for row in rows} == {"true", "false"}
