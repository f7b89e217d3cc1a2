"""iNaturalist loaders: the open-data dumps (`inat-open-data`) and the iNat2021 JSON (`inat21`).

Open data: four TSVs (no quoting); a photo's 7 ranks come from its observation's taxon
ancestry (root first, self excluded). iNat2021: COCO-like JSON with 7 rank fields per
category; images are catalogued as members of the competition tarballs.
"""

from __future__ import annotations

from treeoflife.licenses import register_license_map
from treeoflife.sources.loading import (
    Check,
    DelimitedRole,
    PullContext,
    duplicate_check,
    insert_records,
    load_tables,
    quarantine_failures,
    sql_str,
    stage_tables,
    timed_step,
)
from treeoflife.workspace import RANKS

# iNat ranks a species-level hybrid (`Mentha × piperita`) `hybrid`: it fills the species rank.
_RANK_ALIASES = {"species": ("species", "hybrid")}
_RANK_PIVOT = ",\n".join(
    "max(a.name) FILTER (WHERE a.rank IN ("
    + ", ".join(f"'{r}'" for r in _RANK_ALIASES.get(rank, (rank,)))
    + f')) AS "{rank}"'
    for rank in RANKS
)


# Ids, uuids and sizes are typed (faster storage and joins); a value that does not cast
# rejects its row to quarantine. Every other column stays VARCHAR, as in the dump.
TYPES = {
    "taxa": {"taxon_id": "BIGINT"},
    "observers": {"observer_id": "BIGINT"},
    "observations": {"observation_uuid": "UUID", "observer_id": "BIGINT", "taxon_id": "BIGINT"},
    "photos": {
        "photo_uuid": "UUID",
        "photo_id": "BIGINT",
        "observation_uuid": "UUID",
        "observer_id": "BIGINT",
        "width": "INTEGER",
        "height": "INTEGER",
        "position": "INTEGER",
    },
}


def stage_open_data(ctx: PullContext) -> None:
    """Before the transaction: read the four dumps side by side (see `stage_tables`)."""
    stage_tables(ctx, [DelimitedRole(role, "\t", False, types) for role, types in TYPES.items()])


def load_open_data(ctx: PullContext) -> None:
    """Photos become records; taxa, observations and observers are joined in SQL."""
    with timed_step(ctx.source, "raw tables"):
        taxa, observers, observations, photos = (
            load_tables(ctx, role, delim="\t", quoted=False, types=TYPES[role])
            for role in ("taxa", "observers", "observations", "photos")
        )
    with timed_step(ctx.source, "checks"):
        _check_rows(ctx, taxa, observers, observations, photos)
    with timed_step(ctx.source, "taxa"):
        _taxon_ranks(ctx, taxa)
    with timed_step(ctx.source, "records"):
        _insert_open_data_records(ctx, taxa, photos)
    with timed_step(ctx.source, "orphan check"):
        _quarantine_orphan_photos(ctx, photos)


def _check_rows(
    ctx: PullContext, taxa: str, observers: str, observations: str, photos: str
) -> None:
    """Quarantine failing rows; `_valid_observers`, `_valid_observations` and
    `_photos_failed` keep the verdicts."""
    con = ctx.con
    quarantine_failures(ctx, taxa, [Check("t.taxon_id IS NULL", "'taxon_id is empty'")])
    _valid_rows_view(ctx, "_valid_observers", observers, "observer_id")
    # An observation whose taxon is not in taxa.csv still yields records, with no ranks:
    # the taxonomy stage reports them unresolved rather than the pull dropping the images.
    _valid_rows_view(ctx, "_valid_observations", observations, "observation_uuid")
    _quarantine_empty_or_repeated(ctx, photos, "photo_id")
    con.execute(  # a copy: the orphan check may replace `_failed_<photos>`
        f"CREATE OR REPLACE TEMP TABLE _photos_failed AS SELECT failed_rowid FROM _failed_{photos}"
    )


def _quarantine_empty_or_repeated(ctx: PullContext, table: str, key: str) -> str:
    """Quarantine rows whose id `key` is empty or repeats an earlier row's (the first is
    kept); returns the SQL condition the passing rows meet."""
    checks = [Check(f"t.{key} IS NULL", f"'{key} is empty'"), duplicate_check(ctx, table, key, key)]
    return quarantine_failures(ctx, table, checks)


def _valid_rows_view(ctx: PullContext, view: str, table: str, key: str) -> None:
    """Temp view `view`: the rows of `table` with a present, unrepeated `key`."""
    passed = _quarantine_empty_or_repeated(ctx, table, key)
    ctx.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {table} t WHERE {passed}")


def _taxon_ranks(ctx: PullContext, taxa: str) -> None:
    """`_taxon_ranks`: the 7 ranks of every observed taxon, from its ancestry."""
    ctx.con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _taxon_ranks AS
        WITH paths AS (
            SELECT taxon_id,
                   TRY_CAST(unnest(string_split(coalesce(ancestry, ''), '/')
                                   || [taxon_id::VARCHAR]) AS BIGINT) AS id
            FROM {taxa} WHERE taxon_id IN (SELECT DISTINCT taxon_id FROM _valid_observations)
        )
        SELECT p.taxon_id, {_RANK_PIVOT}
        FROM paths p JOIN {taxa} a ON a.taxon_id = p.id
        GROUP BY p.taxon_id
        """
    )


def _insert_open_data_records(ctx: PullContext, taxa: str, photos: str) -> None:
    """One record per photo that passed its checks and has a valid observation.

    Ids, uuids, the URL and the rights holder are stored typed (`record_rows`): writing
    20M unique strings is most of a pull's cost, and the `record_images` view renders
    them as text for every reader.
    """
    con = ctx.con
    # The rights holder once per observer (a photo stores the observer id); one row each,
    # since repeated observer ids were quarantined.
    con.execute(
        f"INSERT INTO rights_holders SELECT {sql_str(ctx.source)}, observer_id, "
        f"coalesce(nullif(nullif(trim(name), ''), 'None'), login) FROM _valid_observers"
    )
    register_license_map(con, photos, "license", "4.0", "_licenses")
    size = ctx.option("photo_size", "medium")
    base = ctx.option("image_base_url", "https://inaturalist-open-data.s3.amazonaws.com/photos/")
    taxa_sql = f"""
        SELECT {sql_str(ctx.source)} AS source, o.taxon_id::VARCHAR AS taxon_key,
               o.taxon_id::VARCHAR AS source_taxon_id, x.name AS scientific_name,
               x.rank AS taxon_rank, {", ".join(f'r."{rank}"' for rank in RANKS)}
        FROM (SELECT DISTINCT taxon_id FROM _valid_observations WHERE taxon_id IS NOT NULL) o
        LEFT JOIN {taxa} x ON x.taxon_id = o.taxon_id
        LEFT JOIN _taxon_ranks r ON r.taxon_id = o.taxon_id
    """
    insert_records(
        ctx,
        f"""
        SELECT {sql_str(ctx.source)} AS source, t.photo_id AS source_num,
               {sql_str(ctx.manifest.version)} AS source_version,
               t.observation_uuid AS group_uuid,
               {sql_str(base)} AS url_base,
               '/' || {sql_str(size)} || '.' || t.extension AS url_tail,
               l.license, t.license AS license_raw, t.observer_id AS holder_num,
               o.taxon_id AS taxon_num, t.width, t.height, t._file AS source_file
        FROM {photos} t
        JOIN _valid_observations o ON o.observation_uuid = t.observation_uuid
        LEFT JOIN _licenses l ON l.raw IS NOT DISTINCT FROM t.license
        WHERE t.rowid NOT IN (SELECT failed_rowid FROM _photos_failed)
        """,
        taxa_sql,
    )


def _quarantine_orphan_photos(ctx: PullContext, photos: str) -> None:
    """Photos whose observation is missing got no record (inner join); quarantine them.

    Counting first skips the anti-join over every photo when none is missing (the usual
    case), which saves a second pass over the biggest join of the pull.
    """
    con = ctx.con
    total, failed, recorded = con.execute(
        f"SELECT (SELECT count(*) FROM {photos}), (SELECT count(*) FROM _photos_failed), "
        "(SELECT count(*) FROM record_rows WHERE source = ?)",
        [ctx.source],
    ).fetchone()
    if total - failed == recorded:
        return
    orphan = Check(
        "NOT EXISTS (SELECT 1 FROM _valid_observations o "
        "WHERE o.observation_uuid = t.observation_uuid) "
        "AND t.rowid NOT IN (SELECT failed_rowid FROM _photos_failed)",
        "'observation_uuid ' || coalesce(t.observation_uuid::VARCHAR, '(empty)') "
        "|| ' is not a valid row of observations'",
    )
    quarantine_failures(ctx, photos, [orphan])


def load_inat21(ctx: PullContext) -> None:
    """Each split's JSON gives images, annotations, categories and licenses raw tables."""
    con = ctx.con
    parts = ("images", "annotations", "categories", "licenses")
    first = True
    for role in ("train", "val"):
        if role not in ctx.files:
            continue
        for label, path in ctx.inputs(role):
            size = path.stat().st_size + 1
            for part in parts:
                verb = "CREATE OR REPLACE TABLE {t} AS" if first else "INSERT INTO {t}"
                con.execute(
                    verb.format(t=ctx.raw_table(part))
                    + f" SELECT unnest({part}, recursive := true), {sql_str(label)} AS _file, "
                    f"{sql_str(role)} AS _split FROM read_json({sql_str(str(path))}, "
                    f"maximum_object_size={size})"
                )
            first = False
    images, annotations = ctx.raw_table("images"), ctx.raw_table("annotations")
    categories, licenses = ctx.raw_table("categories"), ctx.raw_table("licenses")

    annotation_checks = [
        Check(
            f"NOT EXISTS (SELECT 1 FROM {images} i WHERE i.id = t.image_id AND i._file = t._file)",
            "'annotations[]: image_id ' || t.image_id || ' is not in images'",
        ),
        Check(
            f"NOT EXISTS (SELECT 1 FROM {categories} c "
            "WHERE c.id = t.category_id AND c._file = t._file)",
            "'annotations[]: category_id ' || t.category_id || ' is not in categories'",
        ),
    ]
    annotations_passed = quarantine_failures(ctx, annotations, annotation_checks, header_lines=0)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _labels AS SELECT t.image_id, t._file, "
        f"min(t.category_id) AS category_id, count(*) AS n FROM {annotations} t "
        f"WHERE {annotations_passed} GROUP BY ALL"
    )
    image_checks = [
        Check(
            "NOT EXISTS (SELECT 1 FROM _labels a WHERE a.image_id = t.id AND a._file = t._file)",
            "'images[]: image ' || t.id || ' has no valid annotation, so no label'",
        ),
        Check(
            "EXISTS (SELECT 1 FROM _labels a WHERE a.image_id = t.id AND a._file = t._file "
            "AND a.n > 1)",
            "'images[]: image ' || t.id || ' has more than one annotation'",
        ),
        duplicate_check(ctx, images, "id", "image id"),
    ]
    images_passed = quarantine_failures(ctx, images, image_checks, header_lines=0)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _license_urls AS "
        f"SELECT DISTINCT id, _file, coalesce(url, name) AS raw FROM {licenses}"
    )
    register_license_map(con, "_license_urls", "raw", "4.0", "_licenses")
    insert_records(
        ctx,
        f"""
        SELECT {sql_str(ctx.source)} AS source,
               t.id::VARCHAR AS source_id, {sql_str(ctx.manifest.version)} AS source_version,
               {sql_str(ctx.source + ":")} || t.id AS group_id,
               t._split || '_images' AS archive, t.file_name AS member,
               lm.license, lu.raw AS license_raw, t.rights_holder,
               c.name AS scientific_name, c.common_name, 'species' AS taxon_rank,
               c.id::VARCHAR AS source_taxon_id, c.id::VARCHAR AS taxon_key,
               c.kingdom, c.phylum, c.class, c."order", c.family, c.genus,
               c.genus || ' ' || c.specific_epithet AS species,
               t.width, t.height, t._file AS source_file
        FROM {images} t
        JOIN _labels a ON a.image_id = t.id AND a._file = t._file
        JOIN {categories} c ON c.id = a.category_id AND c._file = t._file
        LEFT JOIN _license_urls lu ON lu.id = t.license AND lu._file = t._file
        LEFT JOIN _licenses lm ON lm.raw IS NOT DISTINCT FROM lu.raw
        WHERE {images_passed}
        """,
    )
