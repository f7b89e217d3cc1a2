"""`tol audit --compare`: taxa gained, lost and relabelled against another catalog.

The other catalog is a workspace folder or a TreeOfLife-10M-style catalog.csv; both become
a temp table of audited ranks and the comparison is SQL over the two.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from treeoflife.errors import TolError
from treeoflife.shards.catalog import CATALOG_CSV_COLUMNS
from treeoflife.taxonomy.audit import (
    TOP,
    build_audit_records,
    fetch_dicts,
    sql_clean,
    sql_ident,
)
from treeoflife.workspace import RANKS, table_exists


def _load_other(con: duckdb.DuckDBPyConnection, other: Path, table: str) -> dict:
    """Materialise the other catalog's records in temp `table` (audited ranks; full binomial)."""
    if other.is_dir() or other.suffix == ".duckdb":
        catalog = other / "catalog.duckdb" if other.is_dir() else other
        if not catalog.exists():
            raise TolError(
                f"--compare {other}: no catalog.duckdb there; give a workspace folder, its "
                "catalog.duckdb or a TreeOfLife-10M-style catalog.csv"
            )
        con.execute("DETACH DATABASE IF EXISTS tol_compare")
        try:
            quoted = str(catalog).replace("'", "''")
            con.execute(f"ATTACH '{quoted}' AS tol_compare (READ_ONLY)")
        except duckdb.Error as exc:
            raise TolError(f"--compare {catalog}: cannot open it ({exc})") from exc
        try:
            if not table_exists(con, "record_images", "tol_compare"):
                raise TolError(f"--compare {catalog}: not a treeoflife catalog (no records)")
            basis = build_audit_records(con, "tol_compare", table)
        finally:
            con.execute("DETACH DATABASE tol_compare")
        return {"path": str(other), "kind": "workspace", "basis": basis}
    if not other.exists():
        raise TolError(f"--compare {other}: no such file or folder")
    reader = "read_parquet" if other.suffix == ".parquet" else "read_csv"
    options = "" if reader == "read_parquet" else ", header = true, all_varchar = true"
    try:
        columns = [
            d[0]
            for d in con.execute(
                f"SELECT * FROM {reader}(?{options}) LIMIT 0", [str(other)]
            ).description
        ]
    except duckdb.Error as exc:
        raise TolError(f"--compare {other}: cannot read it as a catalog ({exc})") from exc
    missing = [c for c in (*RANKS,) if c not in columns]
    if missing:
        raise TolError(
            f"--compare {other}: missing column(s) {', '.join(missing)}; a TreeOfLife-10M "
            f"catalog.csv has {', '.join(CATALOG_CSV_COLUMNS)}"
        )
    ranks = ", ".join(f"{sql_clean(sql_ident(r))} AS {sql_ident(r)}" for r in RANKS[:-1])
    # The published catalog's species is the epithet alone; a binomial is kept as is.
    binomial_given = "starts_with(lower(trim(species)), lower(trim(genus)) || ' ')"
    species = (
        f"CASE WHEN {sql_clean('species')} IS NULL THEN NULL "
        f"WHEN {sql_clean('genus')} IS NULL OR {binomial_given} THEN {sql_clean('species')} "
        "ELSE trim(genus) || ' ' || trim(species) END"
    )
    split_filter = "WHERE coalesce(split, '') <> 'train_small'" if "split" in columns else ""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT {ranks}, {species} AS species, count(*) AS n
        FROM {reader}(?{options}) {split_filter} GROUP BY ALL
        """,
        [str(other)],
    )
    return {
        "path": str(other),
        "kind": "catalog",
        "basis": "catalog",
        "note": "split train_small skipped (it repeats train rows)" if split_filter else "",
    }


def _side_table(con: duckdb.DuckDBPyConnection, source: str, side: str) -> None:
    ranks = ", ".join(sql_ident(r) for r in RANKS)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _cmp_{side} AS
        SELECT {ranks}, sum(n) AS records FROM {source} GROUP BY ALL
        """
    )


def _rank_changes(con: duckdb.DuckDBPyConnection) -> dict:
    out = {}
    for rank in RANKS:
        sql = f"""
            WITH a AS (SELECT lower({sql_ident(rank)}) AS key, min({sql_ident(rank)}) AS name,
                              sum(records) AS records
                       FROM _cmp_this WHERE {sql_ident(rank)} IS NOT NULL GROUP BY 1),
                 b AS (SELECT lower({sql_ident(rank)}) AS key, min({sql_ident(rank)}) AS name,
                              sum(records) AS records
                       FROM _cmp_other WHERE {sql_ident(rank)} IS NOT NULL GROUP BY 1)
            SELECT coalesce(a.name, b.name) AS name, a.records AS records,
                   b.records AS other_records
            FROM a FULL JOIN b USING (key)
        """
        con.execute(f"CREATE OR REPLACE TEMP TABLE _cmp_rank AS {sql}")
        row = con.execute(
            "SELECT count(*) FILTER (WHERE records IS NOT NULL), "
            "count(*) FILTER (WHERE other_records IS NOT NULL), "
            "count(*) FILTER (WHERE other_records IS NULL), "
            "count(*) FILTER (WHERE records IS NULL), "
            "count(*) FILTER (WHERE records IS NOT NULL AND other_records IS NOT NULL) "
            "FROM _cmp_rank"
        ).fetchall()[0]
        out[rank] = {
            "distinct": row[0],
            "other_distinct": row[1],
            "gained": row[2],
            "lost": row[3],
            "kept": row[4],
            "gained_names": fetch_dicts(
                con,
                "SELECT name, records FROM _cmp_rank WHERE other_records IS NULL "
                f"ORDER BY records DESC, name LIMIT {TOP}",
            ),
            "lost_names": fetch_dicts(
                con,
                "SELECT name, other_records AS records FROM _cmp_rank WHERE records IS NULL "
                f"ORDER BY other_records DESC, name LIMIT {TOP}",
            ),
        }
    return out


def _relabelled(con: duckdb.DuckDBPyConnection) -> dict:
    """Same species (binomial), different most common kingdom..genus path."""
    higher = ", ".join(sql_ident(r) for r in RANKS[:-1])
    modal = """
        SELECT lower(species) AS key, min(species) AS species,
               first([{higher}] ORDER BY records DESC, [{higher}]) AS lineage,
               sum(records) AS records
        FROM _cmp_{side} WHERE species IS NOT NULL GROUP BY 1
    """
    n = len(RANKS) - 1

    def differs(i: int, kind: str) -> str:
        a, b = f"lower(a.lineage[{i}])", f"lower(b.lineage[{i}])"
        if kind == "changed":
            return f"({a} <> {b})"
        if kind == "filled":
            return f"({a} IS NOT NULL AND {b} IS NULL)"
        return f"({a} IS NULL AND {b} IS NOT NULL)"

    changed_list = ", ".join(
        f"CASE WHEN {differs(i, 'changed')} THEN '{RANKS[i - 1]}' END" for i in range(1, n + 1)
    )
    changed_any = " OR ".join(differs(i, "changed") for i in range(1, n + 1))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _cmp_relabel AS
        SELECT a.species, a.lineage, b.lineage AS other_lineage, a.records,
               b.records AS other_records,
               [{changed_list}] AS changed_ranks,
               {changed_any} AS relabelled,
               {" OR ".join(differs(i, "filled") for i in range(1, n + 1))} AS filled,
               {" OR ".join(differs(i, "emptied") for i in range(1, n + 1))} AS emptied
        FROM ({modal.format(higher=higher, side="this")}) a
        JOIN ({modal.format(higher=higher, side="other")}) b USING (key)
        """
    )
    per_rank = ", ".join(
        f"count(*) FILTER (WHERE list_contains(changed_ranks, '{rank}'))" for rank in RANKS[:-1]
    )
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE relabelled),
               coalesce(sum(records) FILTER (WHERE relabelled), 0),
               count(*) FILTER (WHERE filled), count(*) FILTER (WHERE emptied), {per_rank}
        FROM _cmp_relabel
        """
    ).fetchall()[0]
    by_rank = row[4:]
    examples = fetch_dicts(
        con,
        f"""
        SELECT species, records, other_records, list_filter(changed_ranks, lambda x: x IS NOT NULL)
               AS changed_ranks, lineage, other_lineage
        FROM _cmp_relabel WHERE relabelled ORDER BY records DESC, species LIMIT {TOP}
        """,
    )
    return {
        "species": row[0],
        "records": row[1],
        "by_rank": dict(zip(RANKS[:-1], by_rank, strict=True)),
        "species_with_ranks_filled": row[2],
        "species_with_ranks_emptied": row[3],
        "examples": examples,
    }


def compare_catalogs(con: duckdb.DuckDBPyConnection, this_table: str, other: Path) -> dict:
    """Taxa gained, lost and relabelled between the audited records and `other`.

    `other` is a workspace folder (its resolved ranks, else its source ranks) or a
    TreeOfLife-10M-style catalog.csv (species = epithet, joined to genus for the binomial).
    """
    meta = _load_other(con, other, "_audit_other")
    _side_table(con, this_table, "this")
    _side_table(con, "_audit_other", "other")
    records = con.execute(
        "SELECT (SELECT coalesce(sum(records), 0) FROM _cmp_this), "
        "(SELECT coalesce(sum(records), 0) FROM _cmp_other)"
    ).fetchall()[0]
    return {
        "other": {**meta, "records": records[1]},
        "records": records[0],
        "ranks": _rank_changes(con),
        "relabelled": _relabelled(con),
    }
