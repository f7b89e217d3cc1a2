"""The release catalog: which records are released, with which id, split and shard, and the
files users read it from (catalog.csv, catalog.parquet, licenses.csv, sizes.json, manifest).

All of it is set-based SQL over the workspace tables into `release_catalog` (one row per
split and image, `train_small` rows repeating `train` rows as TreeOfLife-10M does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from treeoflife.errors import TolError
from treeoflife.shards import licenses_policy, splits, text
from treeoflife.workspace import table_exists

# The source-id columns of the published catalog, in order; each sample's json repeats them.
SOURCE_ID_FIELDS = (
    "eol_content_id",
    "eol_page_id",
    "bioscan_part",
    "bioscan_filename",
    "inat21_filename",
    "inat21_cls_name",
    "inat21_cls_num",
)
# The published TreeOfLife-10M catalog.csv columns, in order (docs/release.md).
CATALOG_CSV_COLUMNS = ("split", "treeoflife_id", *SOURCE_ID_FIELDS, *text.RANKS, "common")
# catalog.parquet adds these after the published columns.
CATALOG_PARQUET_EXTRA = (
    "hosted",
    "shard",
    "record_id",
    "source",
    "source_id",
    "scientific_name",
    "species_name",
    "license",
    "license_raw",
    "rights_holder",
    "source_url",
    "sha256",
    "phash",
    "width",
    "height",
    "resolution_status",
    "resolution_method",
    "authority",
    "authority_taxon_id",
    "jpg_sha256",  # sha256 of the JPEG as written in the shard (what `tol verify` checks)
    "jpg_bytes",
)
LICENSES_CSV_COLUMNS = (
    "treeoflife_id",
    "record_id",
    "source",
    "source_id",
    "license",
    "license_raw",
    "rights_holder",
    "source_url",
    "sha256",
    "hosted",
)
# Tar bytes a sample adds beyond its image: 12 headers of 512, text padding, the JSON.
SAMPLE_OVERHEAD_BYTES = 12 * 512 + 11 * 256 + 1024
HOSTED_SPLITS = ("train", "val", "train_small")


@dataclass(frozen=True)
class PlanOptions:
    """What `plan_release` needs from the stage options."""

    val_fraction: float = 0.05
    train_small_fraction: float = 0.10
    seed: int = 0
    shard_bytes: int = 1_000_000_000
    shard_samples: int | None = None
    min_shards: int = 8


def _source_columns_sql(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """(select list, joins) for the TreeOfLife-10M source columns.

    EOL page ids and BIOSCAN parts come from the pull stage's raw tables when present,
    else from the record itself (source_taxon_id, the archive member path).
    """
    joins, page, part, bioscan_file = [], "r.source_taxon_id", "NULL", "NULL"
    if table_exists(con, "raw_eol__media_manifest"):
        joins.append(
            'LEFT JOIN (SELECT "EOL content ID"::VARCHAR AS content_id, '
            'any_value("EOL page ID")::VARCHAR AS page_id FROM raw_eol__media_manifest '
            "GROUP BY 1) eolm ON r.source = 'eol' AND eolm.content_id = r.source_id"
        )
        page = "coalesce(eolm.page_id, r.source_taxon_id)"
    if table_exists(con, "raw_bioscan_1m__metadata"):
        joins.append(
            "LEFT JOIN (SELECT sampleid, any_value(chunk_number) AS part, "
            "any_value(image_file) AS image_file FROM raw_bioscan_1m__metadata GROUP BY 1) "
            "bsm ON r.source = 'bioscan-1m' AND bsm.sampleid = r.source_id"
        )
        part, bioscan_file = "bsm.part::INTEGER", "bsm.image_file"
    member_dir = "split_part(r.member, '/', -2)"
    select = f"""
        CASE WHEN r.source = 'eol' THEN r.source_id END AS eol_content_id,
        CASE WHEN r.source = 'eol' THEN {page} END AS eol_page_id,
        CASE WHEN r.source = 'bioscan-1m' THEN coalesce({part},
            TRY_CAST(nullif(regexp_extract(r.member, 'part(\\d+)/', 1), '') AS INTEGER))
        END AS bioscan_part,
        CASE WHEN r.source = 'bioscan-1m' THEN coalesce({bioscan_file},
            regexp_extract(r.member, '[^/]+$')) END AS bioscan_filename,
        CASE WHEN r.source = 'inat21' THEN regexp_extract(r.member, '[^/]+$')
        END AS inat21_filename,
        CASE WHEN r.source = 'inat21' THEN regexp_replace({member_dir}, '^\\d+_', '')
        END AS inat21_cls_name,
        CASE WHEN r.source = 'inat21' THEN coalesce(
            TRY_CAST(nullif(regexp_extract({member_dir}, '^(\\d+)_', 1), '') AS INTEGER),
            TRY_CAST(r.source_taxon_id AS INTEGER)) END AS inat21_cls_num
    """
    return select, "\n".join(joins)


def check_inputs(con: duckdb.DuckDBPyConnection) -> None:
    """Refuse to shard before the stages it builds on have run."""
    for table, stage in (
        ("record_images", "tol pull"),
        ("taxa_resolved", "tol taxa resolve"),
        ("images", "tol images fetch"),
    ):
        if not con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
            raise TolError(f"table `{table}` is empty: run `{stage}` before `tol shard`")


def select_candidates(
    con: duckdb.DuckDBPyConnection,
    policy: licenses_policy.LicensePolicy,
    options: PlanOptions,
    ids_from: Path | None = None,
) -> dict[str, int]:
    """Temp table `release_candidates`: every record with why it is excluded (or not), its
    id, source columns, licence action and split flags. Returns excluded counts by reason."""
    check_inputs(con)
    pairs = con.execute(
        "SELECT DISTINCT source, coalesce(license, 'unknown') FROM record_images"
    ).fetchall()
    licenses_policy.register_policy(con, policy, pairs)
    source_select, source_joins = _source_columns_sql(con)
    rank_cols = ", ".join(f't."{rank}" AS "{rank}"' for rank in text.RANKS)
    any_rank = " OR ".join(f"nullif(trim(t.\"{rank}\"), '') IS NOT NULL" for rank in text.RANKS)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE release_candidates_base AS
        WITH img AS (
            SELECT * FROM images
            QUALIFY row_number() OVER (
                PARTITION BY record_id ORDER BY (status = 'ok') DESC, shard, member) = 1
        ), tax AS (
            SELECT * FROM taxa_resolved
            QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY status, method) = 1
        ), dup AS (
            SELECT record_id, min(kind) AS kind FROM duplicates GROUP BY 1
        )
        SELECT r.record_id, r.source, r.source_id, coalesce(r.group_id, r.record_id) AS group_key,
               r.url AS source_url, coalesce(r.license, 'unknown') AS license, r.license_raw,
               r.rights_holder, r.scientific_name AS source_scientific_name,
               r.common_name AS source_common_name,
               {rank_cols}, t.common AS common_raw,
               {text.common_sql("t.common", "t.")} AS common,
               t.method AS resolution_method, t.authority, t.authority_taxon_id,
               t.status AS resolution_status,
               i.sha256, i.phash, i.width, i.height, i.shard AS staging_shard,
               i.member AS staging_member, lp.action AS license_action,
               {source_select},
               CASE
                   WHEN i.record_id IS NULL THEN 'image-not-fetched'
                   WHEN i.status <> 'ok' THEN 'image-' || i.status
                   WHEN d.kind IS NOT NULL THEN 'dedup-' || d.kind
                   WHEN t.record_id IS NULL OR NOT ({any_rank}) THEN 'no-taxonomy'
                   WHEN lp.action = '{licenses_policy.EXCLUDE}' THEN 'license-' || lp.license
               END AS excluded_reason
        FROM records r
        LEFT JOIN img i USING (record_id)
        LEFT JOIN tax t USING (record_id)
        LEFT JOIN dup d USING (record_id)
        LEFT JOIN license_policy lp
               ON lp.source = r.source AND lp.license = coalesce(r.license, 'unknown')
        {source_joins}
        """
    )
    published = (
        "NULL::VARCHAR AS published_id, NULL::BOOLEAN AS pub_val, NULL::BOOLEAN AS pub_small"
    )
    published_join = ""
    if ids_from is not None:
        splits.load_published_ids(con, ids_from)
        published = (
            "p.treeoflife_id AS published_id, p.is_val AS pub_val, p.is_train_small AS pub_small"
        )
        published_join = f"LEFT JOIN published_ids p ON p.match_key = ({splits.PUBLISHED_KEY_SQL})"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE release_candidates AS
        SELECT b.*, coalesce(published_id, {splits.treeoflife_id_sql("b.record_id")})
                   AS treeoflife_id,
               coalesce(pub_val, {
            splits.is_val_sql("group_key", options.seed, options.val_fraction)
        })
                   AS is_val,
               coalesce(pub_small, {
            splits.is_train_small_sql("group_key", options.seed, options.train_small_fraction)
        }) AS is_train_small,
               published_id IS NOT NULL AS id_from_catalog
        FROM (SELECT b.*, {published} FROM release_candidates_base b {published_join}) b
        """
    )
    clash = con.execute(
        "SELECT treeoflife_id, count(*) FROM release_candidates WHERE excluded_reason IS NULL "
        "GROUP BY 1 HAVING count(*) > 1 LIMIT 1"
    ).fetchall()
    if clash:
        raise TolError(
            f"treeoflife_id {clash[0][0]} would name {clash[0][1]} released records; "
            "check --ids-from (one id per source image) and duplicate source ids"
        )
    rows = con.execute(
        "SELECT excluded_reason, count(*) FROM release_candidates "
        "WHERE excluded_reason IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return dict(rows)


def plan_release(con: duckdb.DuckDBPyConnection, options: PlanOptions) -> None:
    """Table `release_catalog`: one row per (split, released image) with its shard and
    position, shuffled deterministically; needs `release_candidates` and `staging_index`."""
    shard_samples = options.shard_samples or 0
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE release_rows AS
        WITH released AS (
            SELECT c.*, s.offset_data AS staging_offset, s.size AS staging_size
            FROM release_candidates c
            LEFT JOIN staging_index s
                   ON s.shard = c.staging_shard AND s.member = c.staging_member
            WHERE c.excluded_reason IS NULL
        )
        SELECT 'val' AS split, * FROM released WHERE is_val
        UNION ALL SELECT 'train' AS split, * FROM released WHERE NOT is_val
        UNION ALL SELECT 'train_small' AS split, * FROM released WHERE NOT is_val AND is_train_small
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE release_catalog AS
        WITH hosted AS (
            SELECT *, row_number() OVER (
                       PARTITION BY split
                       ORDER BY {splits.order_sql("treeoflife_id", options.seed)}, treeoflife_id
                   ) - 1 AS rank_in_split,
                   count(*) OVER (PARTITION BY split) AS n_split,
                   sum(staging_size + {SAMPLE_OVERHEAD_BYTES}) OVER (PARTITION BY split)
                       AS bytes_split
            FROM release_rows WHERE license_action = '{licenses_policy.HOST}'
        ), sized AS (
            SELECT *, greatest(
                       ceil(bytes_split / {int(options.shard_bytes)}),
                       CASE WHEN {shard_samples} > 0
                            THEN ceil(n_split / {shard_samples}) ELSE 1 END,
                       least({int(options.min_shards)}, n_split), 1)::BIGINT AS n_shards
            FROM hosted
        ), placed AS (
            SELECT *, (rank_in_split * n_shards // n_split)::INTEGER AS shard_index
            FROM sized
        )
        SELECT split, treeoflife_id, TRUE AS hosted, shard_index,
               split || '/shard-' || lpad(shard_index::VARCHAR, 6, '0') || '.tar' AS shard,
               (row_number() OVER (PARTITION BY split, shard_index ORDER BY rank_in_split) - 1)
                   ::INTEGER AS pos,
               * EXCLUDE (split, treeoflife_id, shard_index, rank_in_split, n_split,
                          bytes_split, n_shards)
        FROM placed
        UNION ALL BY NAME
        SELECT split, treeoflife_id, FALSE AS hosted, NULL::INTEGER AS shard_index,
               NULL::VARCHAR AS shard, NULL::INTEGER AS pos, * EXCLUDE (split, treeoflife_id)
        FROM release_rows WHERE license_action = '{licenses_policy.CATALOG_ONLY}'
        """
    )
    missing = con.execute(
        "SELECT record_id, staging_shard, staging_member FROM release_catalog "
        "WHERE hosted AND staging_offset IS NULL LIMIT 1"
    ).fetchall()
    if missing:
        record_id, shard, member = missing[0]
        raise TolError(
            f"record {record_id}: images says its bytes are {member!r} in {shard}, but that "
            "tar has no such member; re-run `tol images fetch` for it"
        )
    con.execute("DELETE FROM release")
    con.execute(
        "INSERT INTO release SELECT treeoflife_id, record_id, split, shard FROM release_catalog "
        "ORDER BY split, shard_index, pos, treeoflife_id"
    )


def unit_fingerprints_sql(columns: tuple[str, ...], writer_version: str) -> str:
    """SQL giving (split, shard_index, shard, samples, fingerprint) per planned shard."""
    packed = ", ".join(f'"{c}" := "{c}"' for c in columns)
    return f"""
        SELECT split, shard_index, shard, count(*) AS samples,
               md5('{writer_version}' || string_agg(to_json(struct_pack({packed}))::VARCHAR,
                   chr(10) ORDER BY pos)) AS fingerprint
        FROM release_catalog WHERE hosted GROUP BY ALL ORDER BY split, shard_index
    """


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _published_select() -> str:
    cols = []
    for column in CATALOG_CSV_COLUMNS:
        if column == "species":
            cols.append(f"{text.epithet_sql('c.species')} AS species")
        elif column in text.RANKS:
            cols.append(f'nullif(trim(c."{column}"), \'\') AS "{column}"')
        else:
            cols.append(f'c."{column}"')
    return ", ".join(cols)


CATALOG_ORDER = (
    "CASE c.split WHEN 'train' THEN 0 WHEN 'val' THEN 1 ELSE 2 END, "
    "c.hosted DESC, c.shard_index, c.pos, c.treeoflife_id"
)


def write_catalog_files(con: duckdb.DuckDBPyConnection, release_dir: Path) -> dict[str, dict]:
    """catalog.csv (published columns, in order), catalog.parquet (+ licence, URL, hashes),
    licenses.csv (one row per image); returns {file: {bytes, sha256}}."""
    extra = ", ".join(
        f'c."{column}"'
        if column not in ("scientific_name", "species_name")
        else f"{text.scientific_sql('c.genus', 'c.species')} AS scientific_name"
        if column == "scientific_name"
        else "nullif(trim(c.species), '') AS species_name"
        for column in CATALOG_PARQUET_EXTRA
        if column not in ("jpg_sha256", "jpg_bytes")
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE catalog_out AS
        SELECT {_published_select()}, {extra}, s.jpg_sha256, s.jpg_bytes
        FROM release_catalog c
        LEFT JOIN release_shard_samples s
               ON s.shard = c.shard AND s.treeoflife_id = c.treeoflife_id
        ORDER BY {CATALOG_ORDER}
        """
    )
    outputs = {
        "catalog.csv": (
            f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in CATALOG_CSV_COLUMNS)} "
            "FROM catalog_out",
            "(FORMAT csv, HEADER true)",
        ),
        "catalog.parquet": ("SELECT * FROM catalog_out", "(FORMAT parquet, COMPRESSION zstd)"),
        "licenses.csv": (
            f"SELECT DISTINCT ON (treeoflife_id) {', '.join(LICENSES_CSV_COLUMNS)} "
            "FROM catalog_out ORDER BY treeoflife_id",
            "(FORMAT csv, HEADER true)",
        ),
    }
    written = {}
    for name, (query, fmt) in outputs.items():
        target = release_dir / name
        partial = release_dir / f".{name}.partial"
        con.execute(f"COPY ({query}) TO {_sql_str(str(partial))} {fmt}")
        partial.replace(target)
        size, sha = file_digest(target)
        written[name] = {"bytes": size, "sha256": sha}
    return written


def write_sizes(con: duckdb.DuckDBPyConnection, release_dir: Path) -> dict[str, dict[str, int]]:
    """`<split>/sizes.json` ({shard file name: samples}, as open_clip reads) and
    `<split>/wids.json` (a wids shard-index spec) per hosted split."""
    rows = con.execute(
        "SELECT split, shard, samples FROM release_shards ORDER BY split, shard"
    ).fetchall()
    per_split: dict[str, dict[str, int]] = {}
    for split, shard, samples in rows:
        per_split.setdefault(split, {})[shard.split("/", 1)[1]] = samples
    for split, sizes in per_split.items():
        folder = release_dir / split
        _write_json(folder / "sizes.json", sizes)
        spec = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": f"treeoflife-{split}",
            "shardlist": [{"url": name, "nsamples": n} for name, n in sizes.items()],
        }
        _write_json(folder / "wids.json", spec)
    return per_split


def _write_json(path: Path, payload: object) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    partial.replace(path)


def write_manifest(
    con: duckdb.DuckDBPyConnection,
    release_dir: Path,
    files: dict[str, dict],
    counts: dict,
    options: dict,
) -> dict:
    """release/manifest.json: every shard (split, samples, bytes, sha256), the catalog files'
    digests, counts and the options used; no timestamps, so equal inputs give equal bytes."""
    shards = [
        {"path": path, "split": split, "samples": samples, "bytes": size, "sha256": sha}
        for path, split, samples, size, sha in con.execute(
            "SELECT shard, split, samples, bytes, sha256 FROM release_shards ORDER BY split, shard"
        ).fetchall()
    ]
    split_totals: dict[str, dict[str, int]] = {}
    for shard in shards:
        totals = split_totals.setdefault(shard["split"], {"shards": 0, "samples": 0, "bytes": 0})
        totals["shards"] += 1
        totals["samples"] += shard["samples"]
        totals["bytes"] += shard["bytes"]
    manifest = {
        "format": "treeoflife-release/1",
        "sample_members": list(text.SAMPLE_MEMBERS),
        "splits": split_totals,
        "counts": counts,
        "options": options,
        "files": files,
        "shards": shards,
    }
    _write_json(release_dir / "manifest.json", manifest)
    return manifest
