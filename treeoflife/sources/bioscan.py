"""BIOSCAN loaders: the 1M metadata TSV and the 5M metadata CSV (inside its zip).

Images stay in the published zip archives; a record names its archive member
(`part<chunk>/<image_file>` for 1M, `<split>/[<chunk>/]<processid>.jpg` for 5M).
BIOSCAN gives phylum..species (insects), no kingdom; 1M writes `not_classified` for gaps.
"""

from __future__ import annotations

from treeoflife.licenses import register_license_map
from treeoflife.sources.loading import (
    Check,
    PullContext,
    duplicate_check,
    insert_records,
    load_tables,
    quarantine_failures,
    sql_str,
)

_RANKS_GIVEN = ("phylum", "class", "order", "family", "genus", "species")
SPLITS_5M = (
    "pretrain",
    "train",
    "val",
    "test",
    "key_unseen",
    "val_unseen",
    "test_unseen",
    "other_heldout",
)


def _ranks(missing: str | None) -> str:
    def cell(rank: str) -> str:
        value = f't."{rank}"'
        return f"nullif({value}, {sql_str(missing)})" if missing else f"nullif({value}, '')"

    return ", ".join(f'{cell(rank)} AS "{rank}"' for rank in _RANKS_GIVEN)


def _taxon_key(name: str, bin_id: str) -> str:
    """BIOSCAN has no taxon ids: a taxon is its name, ranks and BOLD BIN together."""
    parts = ", ".join([name, bin_id, *(f't."{rank}"' for rank in _RANKS_GIVEN)])
    return f"md5(concat_ws('|', {parts}))"


def load_bioscan_1m(ctx: PullContext) -> None:
    table = load_tables(
        ctx, "metadata", delim="\t", quoted=False, types={"chunk_number": "INTEGER"}
    )
    checks = [
        Check("t.sampleid IS NULL", "'sampleid is empty'"),
        Check("t.image_file IS NULL", "'image_file is empty'"),
        Check(
            "t.chunk_number IS NULL OR t.chunk_number < 1",
            "'chunk_number is not a positive integer: ' || coalesce(t.chunk_number, 0)",
        ),
        duplicate_check(ctx, table, "sampleid", "sampleid"),
    ]
    passed = quarantine_failures(ctx, table, checks)
    default_license = ctx.option("default_license", "cc-by-nc-sa-4.0")
    register_license_map(ctx.con, table, "copyright_license", "4.0", "_licenses")
    prefix = ctx.option("image_member_prefix", "bioscan/images/cropped_256/")
    insert_records(
        ctx,
        f"""
        SELECT {sql_str(ctx.source)} AS source, t.sampleid AS source_id,
               {sql_str(ctx.manifest.version)} AS source_version, t.sampleid AS group_id,
               'images' AS archive,
               {sql_str(prefix)} || 'part' || t.chunk_number || '/' || t.image_file AS member,
               CASE WHEN l.license IN ('unknown', 'arr') AND t.copyright_license IS NULL
                    THEN {sql_str(default_license)} ELSE l.license END AS license,
               t.copyright_license AS license_raw,
               coalesce(t.copyright_holder, t.copyright_institution) AS rights_holder,
               nullif(t.name, 'not_classified') AS scientific_name,
               t.uri AS source_taxon_id, {_ranks("not_classified")},
               {_taxon_key("t.name", "t.uri")} AS taxon_key,
               t._file AS source_file
        FROM {table} t
        LEFT JOIN _licenses l ON l.raw IS NOT DISTINCT FROM t.copyright_license
        WHERE {passed}
        """,
    )


def load_bioscan_5m(ctx: PullContext) -> None:
    table = load_tables(ctx, "metadata", delim=",", quoted=True)
    split_list = ", ".join(sql_str(s) for s in SPLITS_5M)
    checks = [
        Check("t.processid IS NULL", "'processid is empty'"),
        Check(
            f"t.split IS NULL OR t.split NOT IN ({split_list})",
            "'split is not a BIOSCAN-5M split: ' || coalesce(t.split, '(empty)')",
        ),
        duplicate_check(ctx, table, "processid", "processid"),
    ]
    passed = quarantine_failures(ctx, table, checks)
    prefix = ctx.option("image_member_prefix", "bioscan5m/images/cropped_256/")
    license_raw = ctx.option("license", "CC BY 3.0")
    rights_holder = ctx.option("rights_holder", "CBG Photography Group")
    register_license_map(ctx.con, f"(SELECT {sql_str(license_raw)} AS v)", "v", "3.0", "_licenses")
    insert_records(
        ctx,
        f"""
        SELECT {sql_str(ctx.source)} AS source, t.processid AS source_id,
               {sql_str(ctx.manifest.version)} AS source_version, t.sampleid AS group_id,
               CASE WHEN t.split IN ('pretrain', 'train') THEN 'images_train'
                    ELSE 'images_eval' END AS archive,
               {sql_str(prefix)} || t.split || '/'
                   || CASE WHEN coalesce(t.chunk, '') = '' THEN '' ELSE t.chunk || '/' END
                   || t.processid || '.jpg' AS member,
               (SELECT license FROM _licenses) AS license,
               {sql_str(license_raw)} AS license_raw, {sql_str(rights_holder)} AS rights_holder,
               nullif(t.taxon, '') AS scientific_name, t.dna_bin AS source_taxon_id,
               {_ranks(None)}, {_taxon_key("t.taxon", "t.dna_bin")} AS taxon_key,
               t._file AS source_file
        FROM {table} t
        WHERE {passed}
        """,
    )
