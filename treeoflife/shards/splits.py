"""Stable split assignment and stable `treeoflife_id`s, as SQL with Python twins.

A record's split is a pure function of its group (observation/specimen) id and the seed,
so re-runs and added records never move it; ids are UUIDv5 of `<source>:<source_id>`, or
the ids a published `catalog.csv` already gave (`--ids-from`).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import duckdb

from treeoflife.errors import TolError

# uuid5(NAMESPACE_URL, "treeoflife:treeoflife_id"): fixed forever, or every id changes.
ID_NAMESPACE = uuid.UUID("732982e7-9ba6-5d85-860c-e8f340953ace")
HASH_HEX_DIGITS = 15  # 60-bit bucket values: exact integers in both SQL and Python
HASH_SPACE = 16**HASH_HEX_DIGITS
SPLITS = ("train", "val", "train_small")


def treeoflife_id(source: str, source_id: str) -> str:
    """The UUIDv5 treeoflife_id of one source record."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{source}:{source_id}"))


def treeoflife_id_sql(name_expr: str) -> str:
    """SQL computing `uuid5(ID_NAMESPACE, name)` for a VARCHAR expression `name_expr`.

    RFC 4122 §4.3: SHA-1 of namespace bytes + name, version nibble 5, variant bits 10.
    """
    digest = f"sha1(unhex('{ID_NAMESPACE.hex}') || encode({name_expr}))"
    return (
        f"(SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-5' || substr(h, 14, 3) || '-'"
        f" || substr('89ab', (('0x' || substr(h, 17, 1))::INTEGER & 3) + 1, 1)"
        f" || substr(h, 18, 3) || '-' || substr(h, 21, 12) FROM (SELECT {digest} AS h))"
    )


def bucket(key: str, seed: int, salt: str) -> int:
    """A 60-bit integer, uniform over keys, fixed for (key, seed, salt)."""
    digest = hashlib.md5(f"{seed}:{salt}:{key}".encode()).hexdigest()
    return int(digest[:HASH_HEX_DIGITS], 16)


def bucket_sql(key_expr: str, seed: int, salt: str) -> str:
    """SQL twin of `bucket()`."""
    return (
        f"('0x' || substr(md5('{int(seed)}:{salt}:' || {key_expr}), 1, {HASH_HEX_DIGITS}))::UBIGINT"
    )


def threshold(fraction: float) -> int:
    """Bucket values below this fall in a split of `fraction` of the groups."""
    if not 0.0 <= fraction <= 1.0:
        raise TolError(f"[stages.shard] fraction {fraction} must lie between 0 and 1")
    return int(round(fraction * HASH_SPACE))


def assign_split(group_key: str, seed: int, val_fraction: float, small_fraction: float):
    """(split, in_train_small) for one group; `split_sql` is the set-based twin."""
    if bucket(group_key, seed, "val") < threshold(val_fraction):
        return "val", False
    return "train", bucket(group_key, seed, "train_small") < threshold(small_fraction)


def is_val_sql(key_expr: str, seed: int, val_fraction: float) -> str:
    return f"({bucket_sql(key_expr, seed, 'val')} < {threshold(val_fraction)}::UBIGINT)"


def is_train_small_sql(key_expr: str, seed: int, small_fraction: float) -> str:
    return f"({bucket_sql(key_expr, seed, 'train_small')} < {threshold(small_fraction)}::UBIGINT)"


def order_sql(id_expr: str, seed: int) -> str:
    """Deterministic shuffle key: sort samples of a split by this."""
    return bucket_sql(id_expr, seed, "order")


PUBLISHED_KEY_SQL = """
CASE
    WHEN nullif(eol_content_id, '') IS NOT NULL THEN 'eol:' || eol_content_id
    WHEN nullif(inat21_filename, '') IS NOT NULL THEN 'inat21:' || inat21_filename
    WHEN nullif(bioscan_filename, '') IS NOT NULL THEN 'bioscan:' || bioscan_filename
END
"""


def load_published_ids(con: duckdb.DuckDBPyConnection, catalog_csv: Path) -> int:
    """Read a published TreeOfLife `catalog.csv` into temp table `published_ids`.

    Columns: match_key (how our records find it: EOL content id, iNat21 file name or
    BIOSCAN file name), treeoflife_id, is_val, is_train_small. Returns the row count.
    """
    if not catalog_csv.is_file():
        raise TolError(f"--ids-from {catalog_csv}: no such file (a published catalog.csv)")
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE published_ids AS
            SELECT {PUBLISHED_KEY_SQL} AS match_key, treeoflife_id,
                   bool_or(split = 'val') AS is_val,
                   bool_or(split = 'train_small') AS is_train_small
            FROM read_csv(?, header = true, all_varchar = true)
            GROUP BY ALL
            """,
            [str(catalog_csv)],
        )
    except duckdb.Error as exc:
        raise TolError(
            f"--ids-from {catalog_csv}: cannot read it as a TreeOfLife catalog.csv "
            f"(needs split, treeoflife_id, eol_content_id, inat21_filename, bioscan_filename "
            f"columns): {exc}"
        ) from None
    clashes = con.execute(
        "SELECT match_key, count(DISTINCT treeoflife_id) FROM published_ids "
        "WHERE match_key IS NOT NULL GROUP BY 1 HAVING count(DISTINCT treeoflife_id) > 1 LIMIT 1"
    ).fetchall()
    if clashes:
        raise TolError(
            f"--ids-from {catalog_csv}: {clashes[0][0]} has {clashes[0][1]} treeoflife_ids; "
            "a catalog must give one id per source image"
        )
    return con.execute("SELECT count(*) FROM published_ids").fetchall()[0][0]
