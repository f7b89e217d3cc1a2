"""`tol audit`: coverage figures of a workspace's catalog, computed as SQL in DuckDB.

Owns the figures (a dict that is `reports/audit.json`) and the console coverage summary;
`audit_compare` adds the comparison with another catalog, `audit_html` renders the dict.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

from treeoflife.workspace import RANKS, Workspace, table_exists

log = logging.getLogger(__name__)

STATUSES = ("resolved", "partial", "ambiguous", "unresolved", "not-run")
TREE_RANKS = RANKS[:5]  # kingdom .. family: the sunburst's rings
TOP = 100  # longest list of names the JSON keeps per figure (counts cover everything)
TREE_MAX_LINEAGES = 3000  # a sunburst with more leaves stops being readable or fast

DEFINITIONS = {
    "basis": "resolved: ranks from taxa_resolved (tol taxa resolve); source: taxa_resolved "
    "is empty, so the ranks are audited exactly as the sources gave them",
    "records": "one record = one source image (the records view)",
    "ranks.<rank>.records": "records whose rank is known (not null or blank)",
    "ranks.<rank>.distinct_names": "distinct names at the rank",
    "ranks.<rank>.distinct_lineages": "distinct (kingdom, ..., rank) paths: homonyms count twice",
    "resolved_to_species": "resolved basis: status 'resolved' and species known; source basis: "
    "species given by the source (nothing was checked against an authority)",
    "status": "resolution status per record; 'not-run': the record has no taxa_resolved row",
    "lineage_holes": "records with a missing rank between known ranks (e.g. no class but an "
    "order); kept, never dropped",
    "misspelling_suspects": "pairs of distinct species names in use that are near-identical: "
    "same genus and epithets within Damerau-Levenshtein 1 (epithets up to 6 letters) or 2 "
    "and Jaro-Winkler >= 0.85; or same family and epithet and genera as close. Candidates "
    "are blocked on the first two or last three letters of the differing word; "
    "likely_correct is the name on more images; in_authority (when authorities are loaded) "
    "says which names an authority accepts",
    "kingdoms": "kingdom names in use: as the sources gave them and after resolution",
    "compare": "species keyed by lower-case binomial; relabelled: same species, different "
    "most common kingdom..genus path (case-insensitive)",
}


@dataclass(frozen=True)
class AuditReport:
    """The audit figures (the JSON) and where they were written."""

    figures: dict
    json_path: Path | None = None
    html_path: Path | None = None


def sql_ident(name: str) -> str:
    return f'"{name}"'


def sql_clean(expr: str) -> str:
    """Blank and whitespace-only names count as unknown."""
    return f"nullif(trim({expr}), '')"


def _columns(con: duckdb.DuckDBPyConnection, db: str, table: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? "
        "AND table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [db, table],
    ).fetchall()
    return [row[0] for row in rows]


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    return con.execute(sql, params or []).fetchall()[0][0]


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def images(condition: str | None = None) -> str:
    """SQL: images in the grouped audit table, all or those matching `condition`."""
    if condition is None:
        return "coalesce(sum(n), 0)"
    return f"coalesce(sum(n) FILTER (WHERE {condition}), 0)"


def build_audit_records(con: duckdb.DuckDBPyConnection, db: str, table: str) -> str:
    """Materialise the records of catalog `db` with their audited ranks in temp `table`,
    grouped: one row per distinct (source, taxon, names, ranks, status, method) with `n`
    images, so a 10M-record catalog becomes about as many rows as it has source taxa and
    every figure after this one scan is a query over that small table.

    The audited ranks are taxa_resolved's when it has rows, else the source's ranks.
    Returns the basis ('resolved' or 'source'). A record without a taxa_resolved row keeps
    null ranks and status 'not-run', so a stale resolution shows instead of hiding.
    """
    has_resolved = table_exists(con, "taxa_resolved", db) and (
        _scalar(con, f"SELECT count(*) FROM {db}.taxa_resolved") > 0
    )
    # The name a person would search for: the source's name, else its deepest rank.
    name_chain = ["s.scientific_name", *(f"s.{sql_ident(rank)}" for rank in reversed(RANKS))]
    source_cols = (
        f"coalesce({', '.join(sql_clean(c) for c in name_chain)}) AS source_name, "
        f"{sql_clean('s.kingdom')} AS source_kingdom"
    )
    rank_list = ", ".join(f"g.{sql_ident(rank)}" for rank in RANKS)
    # Group the records first, then add the source's names once per group: the big join
    # (images to their resolution, by record_id) carries as little as it can.
    if has_resolved:
        basis = "resolved"
        ranks = ", ".join(
            f"{sql_clean('t.' + sql_ident(rank))} AS {sql_ident(rank)}" for rank in RANKS
        )
        grouped = f"""
            SELECT i.source, i.taxon_key, {ranks},
                   coalesce(t.status, 'not-run') AS status, t.method, count(*) AS n
            FROM {db}.record_images i LEFT JOIN {{resolved}} t ON t.record_id = i.record_id
            GROUP BY ALL"""
        final = f"SELECT g.source, g.taxon_key, {source_cols}, {rank_list}, g.status, g.method, g.n"
    else:
        basis = "source"
        grouped = f"SELECT source, taxon_key, count(*) AS n FROM {db}.record_images GROUP BY ALL"
        ranks = ", ".join(
            f"{sql_clean('s.' + sql_ident(rank))} AS {sql_ident(rank)}" for rank in RANKS
        )
        final = (
            f"SELECT g.source, g.taxon_key, {source_cols}, {ranks}, 'not-run' AS status, "
            "NULL::VARCHAR AS method, g.n"
        )
    build = f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH g AS ({grouped})
        {final} FROM g
        LEFT JOIN {db}.source_taxa s ON s.source = g.source AND s.taxon_key = g.taxon_key
    """
    resolved = f"{db}.taxa_resolved"
    con.execute(build.replace("{resolved}", resolved))
    if has_resolved:
        rows = _scalar(con, f"SELECT {images()} FROM {table}")
        if rows > _scalar(con, f"SELECT count(*) FROM {db}.record_images"):
            # taxa_resolved holds a record twice (a resolve bug); audit one row per record.
            log.warning("taxa_resolved has more than one row for some records; using one")
            deduped = (
                f"(SELECT * FROM {resolved} QUALIFY row_number() "
                "OVER (PARTITION BY record_id ORDER BY status, method) = 1)"
            )
            con.execute(build.replace("{resolved}", deduped))
    return basis


def _hole_condition(rank_index: int) -> str:
    """SQL: the rank at `rank_index` is unknown while some lower rank is known."""
    rank = RANKS[rank_index]
    lower = ", ".join(sql_ident(r) for r in RANKS[rank_index + 1 :])
    return f"({sql_ident(rank)} IS NULL AND coalesce({lower}) IS NOT NULL)"


def _rank_figures(con: duckdb.DuckDBPyConnection, table: str) -> dict:
    selects = []
    for i, rank in enumerate(RANKS):
        path = ", ".join(sql_ident(r) for r in RANKS[: i + 1])
        selects.append(
            f"{images(sql_ident(rank) + ' IS NOT NULL')}, count(DISTINCT {sql_ident(rank)}), "
            f"count(DISTINCT CASE WHEN {sql_ident(rank)} IS NOT NULL THEN ({path}) END)"
        )
    row = con.execute(f"SELECT {', '.join(selects)} FROM {table}").fetchall()[0]
    return {
        rank: {
            "records": row[3 * i],
            "distinct_names": row[3 * i + 1],
            "distinct_lineages": row[3 * i + 2],
        }
        for i, rank in enumerate(RANKS)
    }


def _resolved_to_species(basis: str) -> str:
    if basis == "resolved":
        return "(status = 'resolved' AND species IS NOT NULL)"
    return "(species IS NOT NULL)"


def _group_figures(con: duckdb.DuckDBPyConnection, table: str, key: str, basis: str) -> dict:
    """Records, rank coverage, status counts and the resolved-to-species share per `key`."""
    rank_counts = ", ".join(
        f"{images(sql_ident(rank) + ' IS NOT NULL')} AS {sql_ident(rank)}" for rank in RANKS
    )
    status_counts = ", ".join(f"{images(f'status = {s!r}')} AS {sql_ident(s)}" for s in STATUSES)
    rows = fetch_dicts(
        con,
        f"""
        SELECT coalesce({key}, '(unknown)') AS key, {images()} AS records,
               {images(_resolved_to_species(basis))} AS resolved_to_species,
               count(DISTINCT species) AS distinct_species, {rank_counts}, {status_counts}
        FROM {table} GROUP BY ALL ORDER BY records DESC, key
        """,
    )
    out = {}
    for row in rows:
        records = row["records"]
        out[row["key"]] = {
            "records": records,
            "resolved_to_species": row["resolved_to_species"],
            "share_resolved_to_species": round(row["resolved_to_species"] / records, 6),
            "distinct_species": row["distinct_species"],
            "ranks": {rank: row[rank] for rank in RANKS},
            "status": {s: row[s] for s in STATUSES},
        }
    return out


def _details_sql(con: duckdb.DuckDBPyConnection, db: str) -> str | None:
    """(source, taxon_key, details JSON): resolve's explanation per source taxon, if kept."""
    if "details" in _columns(con, db, "taxa_source_resolved"):
        return (
            f"SELECT source, taxon_key, details::VARCHAR AS details FROM {db}.taxa_source_resolved"
        )
    return None


EXPLANATION_KEYS = ("query", "candidates")  # what helps a person fix an ambiguous name


def _name_list(
    con: duckdb.DuckDBPyConnection, table: str, status: str, details_sql: str | None
) -> dict:
    """Names with a given status, most records first (what to fix next), with resolve's
    normalised query and candidates when it recorded them."""
    name = "coalesce(source_name, '(no name)')"
    where = f"status = '{status}'"
    totals = con.execute(
        f"SELECT {images()}, count(DISTINCT {name}) FROM {table} WHERE {where}"
    ).fetchall()[0]
    detail = ", any_value(d.details) AS explanation" if details_sql else ""
    join = f"LEFT JOIN ({details_sql}) d USING (source, taxon_key)" if details_sql else ""
    names = fetch_dicts(
        con,
        f"""
        SELECT {name} AS name, {images()} AS records,
               list(DISTINCT source ORDER BY source) AS sources {detail}
        FROM {table} a {join} WHERE {where}
        GROUP BY ALL ORDER BY records DESC, name LIMIT {TOP}
        """,
    )
    for entry in names:
        if "explanation" in entry:
            parsed = json.loads(entry.pop("explanation") or "{}")
            entry.update({k: parsed[k] for k in EXPLANATION_KEYS if parsed.get(k) is not None})
    return {"records": totals[0], "names_total": totals[1], "names": names}


def _flags(con: duckdb.DuckDBPyConnection, db: str, basis: str) -> dict:
    """Records per resolve flag (lineage-hole, hybrid, homonym, ...), when resolve wrote them."""
    if basis != "resolved" or "flags" not in _columns(con, db, "taxa_resolved"):
        return {}
    return {
        flag: n
        for flag, n in con.execute(
            f"SELECT flag, count(*) FROM (SELECT unnest(flags) AS flag FROM {db}.taxa_resolved) "
            "GROUP BY ALL ORDER BY 2 DESC, 1"
        ).fetchall()
    }


def _conflicts(con: duckdb.DuckDBPyConnection, db: str) -> dict:
    """Source-versus-authority rank conflicts from `taxa_conflicts`, if resolve wrote it.

    A row is one conflicting rank of one source taxon (or record); its `records` column,
    when present, says how many images it touches."""
    if not table_exists(con, "taxa_conflicts", db):
        return {"available": False, "rows": 0, "records": 0}
    columns = _columns(con, db, "taxa_conflicts")
    touched = "sum(records)" if "records" in columns else "count(*)"
    [(rows, records)] = con.execute(
        f"SELECT count(*), coalesce({touched}, 0) FROM {db}.taxa_conflicts"
    ).fetchall()
    out: dict = {"available": True, "rows": rows, "records": records, "columns": columns}
    source_value = next((c for c in columns if c.startswith("source") and "value" in c), None)
    authority_value = next((c for c in columns if c.startswith("authority") and "value" in c), None)
    for key in ("rank", "kind"):
        if key in columns:
            out[f"by_{key}"] = fetch_dicts(
                con,
                f"SELECT {sql_ident(key)} AS {key}, count(*) AS rows, {touched} AS records "
                f"FROM {db}.taxa_conflicts GROUP BY ALL ORDER BY records DESC, 1",
            )
    if "rank" in columns and source_value and authority_value:
        out["top"] = fetch_dicts(
            con,
            f"""
            SELECT rank, {sql_ident(source_value)} AS source_value,
                   {sql_ident(authority_value)} AS authority_value, count(*) AS rows,
                   {touched} AS records
            FROM {db}.taxa_conflicts GROUP BY ALL ORDER BY records DESC, rows DESC, 1, 2, 3
            LIMIT {TOP}
            """,
        )
    return out


# Candidate pairs are blocked so the distance functions see few pairs even in genera of
# thousands of species: same genus and the epithets share their first two or last three
# letters (arctos / arctus); or same family and epithet and the genera share their first
# two or last three letters (Ursus / Ursos). Two misspellings at both ends escape, and so
# do blocks of more than MAX_BLOCK names (counted in the JSON; real names never get there).
MAX_BLOCK = 1000
SPELLING_KEYS_SQL = """
CREATE OR REPLACE TEMP TABLE _audit_spelling_keys AS
WITH names AS (
    SELECT species, family, sum(n) AS records
    FROM {table} WHERE species IS NOT NULL GROUP BY species, family
),
by_name AS (
    SELECT species, lower(split_part(species, ' ', 1)) AS genus_part,
           lower(trim(substr(species, strpos(species, ' ') + 1))) AS epithet,
           coalesce(first(family ORDER BY records DESC, family), '') AS family_key,
           sum(records) AS records
    FROM names WHERE contains(species, ' ') GROUP BY species
),
heads AS (
    SELECT row_number() OVER (ORDER BY species) AS id, *,
           left(genus_part, 2) AS genus_head, right(genus_part, 3) AS genus_tail,
           left(epithet, 2) AS epithet_head, right(epithet, 3) AS epithet_tail
    FROM by_name WHERE length(genus_part) >= 3 AND length(epithet) >= 3
)
SELECT *,
       count(*) OVER (PARTITION BY genus_part, epithet_head) AS block_eh,
       count(*) OVER (PARTITION BY genus_part, epithet_tail) AS block_et,
       count(*) OVER (PARTITION BY family_key, epithet, genus_head) AS block_gh,
       count(*) OVER (PARTITION BY family_key, epithet, genus_tail) AS block_gt
FROM heads
"""

# One blocked self-join; only near-identical pairs leave it, so nothing big is materialised.
SPELLING_BRANCH_SQL = """
SELECT * FROM (
    SELECT a.id AS id_a, b.id AS id_b, '{differs}' AS differs,
           damerau_levenshtein(a.{part}, b.{part}) AS distance,
           jaro_winkler_similarity(a.{part}, b.{part}) AS similarity,
           least(length(a.{part}), length(b.{part})) AS part_length
    FROM _audit_spelling_keys a JOIN _audit_spelling_keys b
      ON {same} AND a.{key} = b.{key} AND a.id < b.id AND a.{block} <= {max_block}
     AND abs(length(a.{part}) - length(b.{part})) <= 2
)
WHERE distance >= 1 AND similarity >= 0.85
  AND distance <= CASE WHEN part_length <= 6 THEN 1 ELSE 2 END
"""

SPELLING_BRANCHES = (  # (differs, part compared, what else is equal, block key, block size)
    ("epithet", "epithet", "a.genus_part = b.genus_part", "epithet_head", "block_eh"),
    ("epithet", "epithet", "a.genus_part = b.genus_part", "epithet_tail", "block_et"),
    ("genus", "genus_part", "a.epithet = b.epithet AND a.family_key = b.family_key",
     "genus_head", "block_gh"),
    ("genus", "genus_part", "a.epithet = b.epithet AND a.family_key = b.family_key",
     "genus_tail", "block_gt"),
)  # fmt: skip

MISSPELLING_SQL = """
CREATE OR REPLACE TEMP TABLE _audit_misspellings AS
WITH matches AS (SELECT DISTINCT * FROM ({branches}))
SELECT a.species AS name_a, b.species AS name_b, m.differs, a.records AS records_a,
       b.records AS records_b, m.distance, round(m.similarity, 4) AS similarity,
       CASE WHEN a.records >= b.records THEN a.species ELSE b.species END AS likely_correct
FROM matches m
JOIN _audit_spelling_keys a ON a.id = m.id_a JOIN _audit_spelling_keys b ON b.id = m.id_b
ORDER BY least(a.records, b.records) DESC, a.records + b.records DESC, name_a, name_b
"""


def _misspellings(con: duckdb.DuckDBPyConnection, db: str, table: str) -> dict:
    """Near-identical species names in use, set-based over blocked candidate pairs."""
    con.execute(SPELLING_KEYS_SQL.format(table=table))
    branches = " UNION ALL ".join(
        SPELLING_BRANCH_SQL.format(
            differs=differs, part=part, same=same, key=key, block=block, max_block=MAX_BLOCK
        )
        for differs, part, same, key, block in SPELLING_BRANCHES
    )
    con.execute(MISSPELLING_SQL.format(branches=branches))
    unchecked = _scalar(
        con,
        "SELECT count(*) FROM _audit_spelling_keys WHERE greatest(block_eh, block_et, block_gh, "
        f"block_gt) > {MAX_BLOCK}",
    )
    pairs = fetch_dicts(con, f"SELECT * FROM _audit_misspellings LIMIT {TOP}")
    known = _authority_names(con, db)
    if known is not None:
        for pair in pairs:
            pair["in_authority"] = [pair["name_a"] in known, pair["name_b"] in known]
    total = _scalar(con, "SELECT count(*) FROM _audit_misspellings")
    return {"pairs_total": total, "pairs": pairs, "names_in_oversized_blocks": unchecked}


def _authority_names(con: duckdb.DuckDBPyConnection, db: str) -> set[str] | None:
    """Accepted canonical names of the suspects, when authorities are loaded (else None)."""
    if not table_exists(con, "authority_taxa", db):
        return None
    if _scalar(con, f"SELECT count(*) FROM {db}.authority_taxa") == 0:
        return None
    rows = con.execute(
        f"""
        SELECT DISTINCT a.canonical_name FROM {db}.authority_taxa a
        JOIN (SELECT name_a AS name FROM _audit_misspellings
              UNION SELECT name_b FROM _audit_misspellings) m ON a.canonical_name = m.name
        WHERE a.status = 'accepted'
        """
    ).fetchall()
    return {row[0] for row in rows}


def _kingdoms(con: duckdb.DuckDBPyConnection, table: str) -> dict:
    def counts(column: str) -> dict:
        return {
            k: n
            for k, n in con.execute(
                f"SELECT coalesce({column}, '(unknown)'), {images()} FROM {table} "
                "GROUP BY ALL ORDER BY 2 DESC, 1"
            ).fetchall()
        }

    source = counts("source_kingdom")
    resolved = counts("kingdom")
    mapping = fetch_dicts(
        con,
        f"""
        SELECT coalesce(source_kingdom, '(unknown)') AS source_kingdom,
               coalesce(kingdom, '(unknown)') AS kingdom, {images()} AS records
        FROM {table} GROUP BY ALL ORDER BY records DESC, 1, 2
        """,
    )
    by_source = {}
    for source_name, kingdom, n in con.execute(
        f"SELECT source, coalesce(source_kingdom, '(unknown)'), {images()} FROM {table} "
        "GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    ).fetchall():
        by_source.setdefault(source_name, {})[kingdom] = n
    return {
        "source_given": source,
        "source_given_names": len([k for k in source if k != "(unknown)"]),
        "source_given_by_source": by_source,
        "resolved": resolved,
        "resolved_names": len([k for k in resolved if k != "(unknown)"]),
        "mapping": mapping,
    }


def _holes(con: duckdb.DuckDBPyConnection, table: str) -> dict:
    per_rank = ", ".join(images(_hole_condition(i)) for i in range(len(RANKS) - 1))
    any_hole = " OR ".join(_hole_condition(i) for i in range(len(RANKS) - 1))
    row = con.execute(f"SELECT {images(any_hole)}, {per_rank} FROM {table}").fetchall()[0]
    return {"records": row[0], "missing_rank": dict(zip(RANKS[:-1], row[1:], strict=True))}


def _long_tail(con: duckdb.DuckDBPyConnection, table: str) -> dict:
    """Images per species: quantiles, log2 bins (the histogram) and the largest species."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _audit_species AS
        SELECT species, sum(n) AS images FROM {table} WHERE species IS NOT NULL GROUP BY 1
        """
    )
    row = con.execute(
        """
        SELECT count(*), coalesce(sum(images), 0), min(images), quantile_disc(images, 0.5),
               quantile_disc(images, 0.9), max(images), count(*) FILTER (WHERE images = 1)
        FROM _audit_species
        """
    ).fetchall()[0]
    bins = fetch_dicts(
        con,
        """
        SELECT (2 ** floor(log2(images)))::BIGINT AS images_from,
               (2 ** (floor(log2(images)) + 1))::BIGINT - 1 AS images_to,
               count(*) AS species, sum(images) AS images
        FROM _audit_species GROUP BY ALL ORDER BY 1
        """,
    )
    top = fetch_dicts(
        con, f"SELECT species, images FROM _audit_species ORDER BY images DESC, 1 LIMIT {TOP}"
    )
    return {
        "species": row[0],
        "images": row[1],
        "min": row[2],
        "median": row[3],
        "p90": row[4],
        "max": row[5],
        "singletons": row[6],
        "log2_bins": bins,
        "top": top,
    }


def _tree(con: duckdb.DuckDBPyConnection, table: str) -> dict:
    """Records per kingdom..family path, largest first, for the sunburst."""
    path = ", ".join(
        f"coalesce({sql_ident(rank)}, '(no {rank})') AS {sql_ident(rank)}" for rank in TREE_RANKS
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _audit_tree AS
        SELECT {path}, sum(n) AS records FROM {table} GROUP BY ALL
        """
    )
    total = con.execute("SELECT count(*), coalesce(sum(records), 0) FROM _audit_tree").fetchall()[0]
    rows = con.execute(
        f"SELECT * FROM _audit_tree ORDER BY records DESC, "
        f"{', '.join(sql_ident(r) for r in TREE_RANKS)} LIMIT {TREE_MAX_LINEAGES}"
    ).fetchall()
    kept = sum(row[-1] for row in rows)
    return {
        "ranks": list(TREE_RANKS),
        "lineages": [list(row) for row in rows],
        "lineages_total": total[0],
        "truncated_lineages": total[0] - len(rows),
        "truncated_records": total[1] - kept,
    }


def _counts(con: duckdb.DuckDBPyConnection, table: str, column: str) -> dict:
    return {
        k: n
        for k, n in con.execute(
            f"SELECT coalesce({column}, '(none)'), {images()} FROM {table} "
            "GROUP BY ALL ORDER BY 2 DESC, 1"
        ).fetchall()
    }


def audit_catalog(con: duckdb.DuckDBPyConnection, *, compare: Path | None = None) -> dict:
    """Every audit figure of the catalog open on `con` (its default database), as a dict.

    Writes temp tables only, so a read-only connection works. `compare` adds the
    `compare` section (see `compare_catalogs`).
    """
    db = _scalar(con, "SELECT current_database()")
    table = "_audit_records"
    basis = build_audit_records(con, db, table)
    compared = None
    if compare is not None:  # first, so a bad --compare fails before the long part
        from treeoflife.taxonomy.audit_compare import compare_catalogs

        compared = compare_catalogs(con, table, Path(compare))
    resolved_rows = (
        _scalar(con, f"SELECT count(*) FROM {db}.taxa_resolved")
        if (table_exists(con, "taxa_resolved", db))
        else 0
    )
    details_sql = _details_sql(con, db) if basis == "resolved" else None
    totals = con.execute(
        f"""
        SELECT {images()}, count(DISTINCT source), {images("status = 'not-run'")},
               {images(_resolved_to_species(basis))}, count(DISTINCT species)
        FROM {table}
        """
    ).fetchall()[0]
    records = totals[0]
    figures = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "basis": basis,
        "basis_note": (
            "ranks as resolved by `tol taxa resolve` (taxa_resolved)"
            if basis == "resolved"
            else "taxa_resolved is empty: ranks audited as the sources gave them; run "
            "`tol taxa resolve` for resolved figures"
        ),
        "definitions": DEFINITIONS,
        "totals": {
            "records": records,
            "sources": totals[1],
            "taxa_resolved_rows": resolved_rows,
            "records_not_resolved": totals[2] if basis == "resolved" else records,
            "resolved_to_species": totals[3],
            "share_resolved_to_species": round(totals[3] / records, 6) if records else 0.0,
            "distinct_species": totals[4],
        },
        "ranks": _rank_figures(con, table),
        "by_source": _group_figures(con, table, "source", basis),
        "by_kingdom": _group_figures(con, table, "kingdom", basis),
        "status": _counts(con, table, "status"),
        "methods": _counts(con, table, "method"),
        "unresolved": _name_list(con, table, "unresolved", details_sql),
        "ambiguous": _name_list(con, table, "ambiguous", details_sql),
        "flags": _flags(con, db, basis),
        "conflicts": _conflicts(con, db),
        "misspelling_suspects": _misspellings(con, db, table),
        "kingdoms": _kingdoms(con, table),
        "lineage_holes": _holes(con, table),
        "images_per_species": _long_tail(con, table),
        "taxonomy_tree": _tree(con, table),
    }
    if compared is not None:
        figures["compare"] = compared
    return figures


# ---------------------------------------------------------------- workspace entry points


def audit_workspace(
    workspace: Workspace,
    compare: Path | None = None,
    *,
    reports_dir: Path | None = None,
    write_html: bool = True,
) -> AuditReport:
    """Audit a workspace's catalog; write `reports/audit.json` and `reports/audit.html`."""
    from treeoflife.taxonomy.audit_html import render_audit_html

    with workspace.connect(read_only=True) as con:
        figures = audit_catalog(con, compare=compare)
    figures = {"workspace": str(workspace.root), **figures}
    out = reports_dir or workspace.reports
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "audit.json"
    _atomic_write(json_path, json.dumps(figures, indent=2, default=str) + "\n")
    html_path = None
    if write_html:
        html_path = out / "audit.html"
        _atomic_write(html_path, render_audit_html(figures))
    log.info("audit written to %s", out)
    return AuditReport(figures=figures, json_path=json_path, html_path=html_path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def coverage_table(figures: dict) -> Table:
    """The coverage summary: per source, records, rank coverage and resolution status."""
    basis = figures["basis"]
    what = "resolved" if basis == "resolved" else "source ranks, not resolved"
    table = Table(title=f"taxonomic coverage ({what})")
    for column in ("source", "images", "kingdom", "family", "species", "to species"):
        table.add_column(column, justify="left" if column == "source" else "right")
    statuses = [s for s in STATUSES if figures["status"].get(s)]
    for status in statuses:
        table.add_column(status, justify="right")

    def add(name: str, group: dict, **style) -> None:
        n = group["records"]
        table.add_row(
            name,
            f"{n:,}",
            _pct(group["ranks"]["kingdom"], n),
            _pct(group["ranks"]["family"], n),
            _pct(group["ranks"]["species"], n),
            _pct(group["resolved_to_species"], n),
            *(f"{group['status'][s]:,}" for s in statuses),
            **style,
        )

    for source, group in figures["by_source"].items():
        add(source, group)
    totals = figures["totals"]
    overall = {
        "records": totals["records"],
        "ranks": {rank: figures["ranks"][rank]["records"] for rank in RANKS},
        "resolved_to_species": totals["resolved_to_species"],
        "status": {s: figures["status"].get(s, 0) for s in STATUSES},
    }
    add("all", overall, style="bold")
    return table


def print_coverage_summary(figures: dict, console: Console) -> None:
    """Print the coverage table and one line each for kingdoms, problems and the comparison."""
    console.print(coverage_table(figures))
    kingdoms = figures["kingdoms"]
    console.print(
        f"kingdom names: {kingdoms['source_given_names']} as given "
        f"({', '.join(k for k in kingdoms['source_given'] if k != '(unknown)')}) -> "
        f"{kingdoms['resolved_names']} audited"
    )
    console.print(
        f"unresolved names: {figures['unresolved']['names_total']:,} "
        f"({figures['unresolved']['records']:,} images); ambiguous: "
        f"{figures['ambiguous']['names_total']:,}; conflicts: {figures['conflicts']['rows']:,}; "
        f"suspected misspellings: {figures['misspelling_suspects']['pairs_total']:,}; "
        f"images with lineage holes: {figures['lineage_holes']['records']:,}"
    )
    if "compare" in figures:
        species = figures["compare"]["ranks"]["species"]
        console.print(
            f"vs {figures['compare']['other']['path']}: species +{species['gained']:,} "
            f"-{species['lost']:,}, relabelled {figures['compare']['relabelled']['species']:,}"
        )


def summary_line(figures: dict) -> str:
    """One line for `tol demo`: coverage, kingdoms and problems."""
    totals = figures["totals"]
    kingdoms = figures["kingdoms"]
    return (
        f"audit ({figures['basis']}): {totals['share_resolved_to_species']:.1%} of "
        f"{totals['records']:,} images resolved to species, {totals['distinct_species']:,} "
        f"species; kingdom names {kingdoms['source_given_names']} as given -> "
        f"{kingdoms['resolved_names']}; {figures['unresolved']['records']:,} unresolved, "
        f"{figures['ambiguous']['records']:,} ambiguous, "
        f"{figures['misspelling_suspects']['pairs_total']:,} suspected misspellings"
    )
