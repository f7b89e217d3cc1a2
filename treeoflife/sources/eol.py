"""Encyclopedia of Life loader: the media manifest, Dynamic Hierarchy taxa and vernaculars.

The manifest's first CSV has a header and the later ones do not (EOL's exporter writes it
once), so each file is sniffed. A page's 7 ranks come from walking `parentNameUsageID` in
DH `taxon.tab`; names as EOL gives them (kingdom `Metazoa` stays `Metazoa` here: the
taxonomy stage harmonises).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from treeoflife.licenses import register_license_map
from treeoflife.sources.loading import (
    Check,
    PullContext,
    duplicate_check,
    insert_records,
    load_delimited,
    load_tables,
    quarantine_failures,
    sql_str,
)
from treeoflife.workspace import RANKS

MANIFEST_COLUMNS = (
    "EOL content ID",
    "EOL page ID",
    "Medium Source URL",
    "EOL Full-Size Copy URL",
    "License Name",
    "Copyright Owner",
)


MANIFEST_TYPES = {"EOL content ID": "BIGINT", "EOL page ID": "BIGINT"}
PAGE_ID = {"page_id": "BIGINT"}


def _has_header(path: Path) -> bool:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.readline().startswith(MANIFEST_COLUMNS[0])


def load_eol(ctx: PullContext) -> None:
    con = ctx.con
    media = ctx.raw_table("media_manifest")
    headed: set[str] = set()
    labels: list[str] = []
    for i, (label, path) in enumerate(ctx.inputs("media_manifest")):
        labels.append(label)
        header = _has_header(path)
        if header:
            headed.add(label)
        load_delimited(
            ctx,
            media,
            path,
            label=label,
            delim=",",
            quoted=True,
            header=header,
            names=MANIFEST_COLUMNS,
            types=MANIFEST_TYPES,
            replace=i == 0,
        )
    taxa = load_tables(ctx, "taxon", delim="\t", quoted=False, types={"eolID": "BIGINT"})
    vernaculars = (
        load_tables(ctx, "vernacular_names", delim=",", quoted=True, types=PAGE_ID)
        if "vernacular_names" in ctx.files
        else None
    )
    providers = (
        load_tables(ctx, "provider_ids", delim=",", quoted=True, types=PAGE_ID)
        if "provider_ids" in ctx.files
        else None
    )
    content, page = 't."EOL content ID"', 't."EOL page ID"'
    checks = [
        Check(f"{content} IS NULL", "'EOL content ID is empty'"),
        Check(f"{page} IS NULL", "'EOL page ID is empty'"),
        Check(
            't."EOL Full-Size Copy URL" IS NULL AND t."Medium Source URL" IS NULL',
            "'no image URL (both EOL Full-Size Copy URL and Medium Source URL are empty)'",
        ),
        duplicate_check(ctx, media, '"EOL content ID"', "EOL content ID"),
    ]
    passed = quarantine_failures(
        ctx, media, checks, header_lines={label: int(label in headed) for label in labels}
    )

    rank_pivot = ",\n".join(
        f"max(a.canonicalName) FILTER (WHERE lower(a.taxonRank) = '{rank}') AS \"{rank}\""
        for rank in RANKS
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _page_ranks AS
        WITH RECURSIVE chain(page_id, taxon_id, depth) AS (
            SELECT eolID, taxonID, 0 FROM {taxa}
            WHERE eolID IS NOT NULL
              AND eolID IN (SELECT DISTINCT "EOL page ID" FROM {media})
            UNION ALL
            SELECT c.page_id, p.parentNameUsageID, c.depth + 1
            FROM chain c JOIN {taxa} p ON p.taxonID = c.taxon_id
            WHERE p.parentNameUsageID IS NOT NULL AND c.depth < 200
        )
        SELECT c.page_id, {rank_pivot},
               max(a.canonicalName) FILTER (WHERE c.depth = 0) AS name,
               max(lower(a.taxonRank)) FILTER (WHERE c.depth = 0) AS rank
        FROM chain c JOIN {taxa} a ON a.taxonID = c.taxon_id
        GROUP BY c.page_id
        """
    )
    common = "NULL"
    if vernaculars:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _page_common AS
            SELECT page_id, arg_min(vernacular_string, (
                       is_preferred_by_eol IS DISTINCT FROM 'preferred',
                       is_preferred_by_resource IS DISTINCT FROM 'preferred',
                       vernacular_string)) AS common,
                   any_value(regexp_replace(canonical_form, '<[^>]*>', '', 'g')) AS canonical
            FROM {vernaculars} WHERE language_code IN ('en', 'eng') GROUP BY page_id
            """
        )
        common = '(SELECT v.common FROM _page_common v WHERE v.page_id = t."EOL page ID")'
    fallback_name = (
        f"(SELECT any_value(p.preferred_canonical_for_page) FROM {providers} p "
        f'WHERE p.page_id = t."EOL page ID")'
        if providers
        else "NULL"
    )
    register_license_map(con, media, '"License Name"', "3.0", "_licenses")
    insert_records(
        ctx,
        f"""
        SELECT {sql_str(ctx.source)} AS source, {content}::VARCHAR AS source_id,
               {sql_str(ctx.manifest.version)} AS source_version,
               {sql_str(ctx.source + ":")} || {content} AS group_id,
               coalesce(t."EOL Full-Size Copy URL", t."Medium Source URL") AS url,
               l.license, t."License Name" AS license_raw, t."Copyright Owner" AS rights_holder,
               coalesce(r.name, {fallback_name}) AS scientific_name, {common} AS common_name,
               r.rank AS taxon_rank, {page}::VARCHAR AS source_taxon_id,
               {page}::VARCHAR AS taxon_key,
               {", ".join(f'r."{rank}"' for rank in RANKS)}, t._file AS source_file
        FROM {media} t
        LEFT JOIN _page_ranks r ON r.page_id = {page}
        LEFT JOIN _licenses l ON l.raw IS NOT DISTINCT FROM t."License Name"
        WHERE {passed}
        """,
    )
