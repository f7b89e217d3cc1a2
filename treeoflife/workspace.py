"""The workspace folder and its DuckDB catalog: layout, schema, migrations and status.

Every stage reads and writes one workspace; only the coordinating process opens
`catalog.duckdb` for writing (DuckDB takes one writer).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from treeoflife.errors import TolError

SCHEMA_VERSION = 2
DEFAULT_WORKSPACE = Path("tol-workspace")
DEFAULT_MEMORY_LIMIT = "1GB"
SUBDIRS = ("downloads", "staging", "release", "reports", "runs", "tmp")

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_RANK_COLUMNS = ", ".join(f'"{rank}" VARCHAR' for rank in RANKS)
_RANK_SELECT = ", ".join(f't."{rank}"' for rank in RANKS)

# Core tables shared by all stages (docs/architecture.md). Stages may add their own.
SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
-- One row per source image, as stored. Taxon-level fields live once per source taxon in
-- `source_taxa`; the `records` view joins them back (10M images share ~450K taxa, so
-- the catalog stores and writes the names once, and the taxonomy stage resolves taxa).
-- Big sources store ids, uuids, URLs and rights holders typed (the `*_num`, `*_uuid`,
-- `url_base`/`url_tail` and `holder_num` columns): DuckDB writes a unique string column
-- about 3x slower than an integer one, and the `record_images` view gives every reader the
-- one text form either way. Other sources fill the text columns.
CREATE TABLE IF NOT EXISTS record_rows (
    source VARCHAR NOT NULL,         -- the `tol pull` name
    source_id VARCHAR,               -- the source's image id as text, or:
    source_num BIGINT,               -- the id when it is an integer (iNat photo ids)
    source_version VARCHAR,
    group_id VARCHAR,                -- observation / specimen: one split per group, or:
    group_uuid UUID,                 -- the group when it is a uuid (iNat observations)
    url VARCHAR,                     -- canonical public URL of the image, if fetched by URL,
    url_base VARCHAR,                -- or url_base || source_num || url_tail
    url_tail VARCHAR,
    archive VARCHAR,                 -- manifest role of the image archive, if read from one
    member VARCHAR,                  -- member path inside that archive
    license VARCHAR,                 -- canonical licence id (treeoflife.licenses)
    license_raw VARCHAR,
    rights_holder VARCHAR,           -- the holder as text, or:
    holder_num BIGINT,               -- -> rights_holders (source, holder_num)
    taxon_key VARCHAR,               -- -> source_taxa (source, taxon_key), or:
    taxon_num BIGINT,                -- the taxon key when it is an integer
    width INTEGER,
    height INTEGER,
    source_file VARCHAR,
    CHECK (source_id IS NOT NULL OR source_num IS NOT NULL)
);
-- One name per (source, holder_num); written without repeats by the loaders.
CREATE TABLE IF NOT EXISTS rights_holders (
    source VARCHAR NOT NULL, holder_num BIGINT NOT NULL, rights_holder VARCHAR
);
-- Every stage reads images through this view: one text form per column, whatever the
-- storage. record_id = '<source>:<source_id>', stable.
CREATE OR REPLACE VIEW record_images AS
SELECT r.source || ':' || coalesce(r.source_id, r.source_num::VARCHAR) AS record_id,
       r.source, coalesce(r.source_id, r.source_num::VARCHAR) AS source_id, r.source_version,
       coalesce(r.group_id, r.group_uuid::VARCHAR) AS group_id,
       coalesce(r.url, r.url_base || r.source_num::VARCHAR || r.url_tail) AS url,
       r.archive, r.member, r.license, r.license_raw,
       coalesce(r.rights_holder, h.rights_holder) AS rights_holder,
       coalesce(r.taxon_key, r.taxon_num::VARCHAR) AS taxon_key,
       r.width, r.height, r.source_file
FROM record_rows r
LEFT JOIN rights_holders h ON h.source = r.source AND h.holder_num = r.holder_num;
CREATE TABLE IF NOT EXISTS source_taxa (
    source VARCHAR NOT NULL,
    taxon_key VARCHAR NOT NULL,      -- the source's taxon id, or a digest of its names
    source_taxon_id VARCHAR,
    scientific_name VARCHAR,         -- the name as the source gave it
    common_name VARCHAR,
    taxon_rank VARCHAR,
    {_RANK_COLUMNS}                  -- ranks as the source gave them; species = binomial
);
CREATE OR REPLACE VIEW records AS
SELECT i.record_id, i.source, i.source_id, i.source_version, i.group_id, i.url, i.archive,
       i.member, i.license, i.license_raw, i.rights_holder, t.scientific_name, t.common_name,
       t.taxon_rank, t.source_taxon_id, {_RANK_SELECT}, i.width, i.height, i.source_file,
       i.taxon_key
FROM record_images i
LEFT JOIN source_taxa t ON t.source = i.source AND t.taxon_key = i.taxon_key;
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR NOT NULL, file VARCHAR NOT NULL, line BIGINT, reason VARCHAR NOT NULL,
    raw VARCHAR
);
CREATE TABLE IF NOT EXISTS pulls (
    source VARCHAR PRIMARY KEY, version VARCHAR, fingerprint VARCHAR, records BIGINT,
    quarantined BIGINT, finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS downloads (
    source VARCHAR, role VARCHAR, url VARCHAR, path VARCHAR, size BIGINT, sha256 VARCHAR,
    finished_at TIMESTAMP, PRIMARY KEY (source, role)
);
CREATE TABLE IF NOT EXISTS taxa_resolved (
    record_id VARCHAR NOT NULL, {_RANK_COLUMNS}, common VARCHAR, method VARCHAR,
    authority VARCHAR, authority_taxon_id VARCHAR, status VARCHAR
);
CREATE TABLE IF NOT EXISTS images (
    record_id VARCHAR NOT NULL, status VARCHAR NOT NULL, error VARCHAR, sha256 VARCHAR,
    phash VARCHAR, width INTEGER, height INTEGER, shard VARCHAR, member VARCHAR
);
CREATE TABLE IF NOT EXISTS duplicates (
    record_id VARCHAR NOT NULL, kept_record_id VARCHAR, kind VARCHAR NOT NULL, distance INTEGER
);
CREATE TABLE IF NOT EXISTS release (
    treeoflife_id VARCHAR NOT NULL, record_id VARCHAR NOT NULL, split VARCHAR, shard VARCHAR
);
"""

# One entry per stage: (stage, the table whose rows say the stage produced output).
STAGE_TABLES = (
    ("pull", "records"),
    ("taxa", "taxa_resolved"),
    ("images", "images"),
    ("dedup", "dedup_runs"),
    ("shard", "release"),
)


@dataclass(frozen=True)
class Workspace:
    """A workspace folder; `connect()` opens its catalog."""

    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def exists(self) -> bool:
        return self.catalog_path.exists()

    def init(self) -> Workspace:
        """Create the folders and the catalog schema; safe to call on an existing workspace."""
        for name in SUBDIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        with self.connect(create=True) as con:
            migrate(con)
        return self

    @contextlib.contextmanager
    def connect(
        self, *, create: bool = False, read_only: bool = False, memory_limit: str | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the catalog; spills to the workspace tmp/ so big joins stay within memory.

        DuckDB's buffer limit defaults to 1 GB ($TOL_MEMORY_LIMIT overrides it), which keeps
        a 20M-row ingest under 2 GB of resident memory; raise it on a big machine.
        """
        memory_limit = memory_limit or os.environ.get("TOL_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT)
        if not create and not self.exists():
            raise TolError(
                f"no workspace at {self.root} (missing {self.catalog_path.name}); "
                f"run `tol init --workspace {self.root}` first"
            )
        try:
            con = duckdb.connect(str(self.catalog_path), read_only=read_only)
        except duckdb.IOException as exc:
            raise TolError(
                f"cannot open {self.catalog_path}: {exc}. Is another `tol` process using it?"
            ) from exc
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{self.tmp}'")
            if not read_only and not create:
                migrate(con)
            yield con
        finally:
            con.close()


# What turns a catalog of version N-1 into version N, before SCHEMA_SQL adds what is new.
MIGRATIONS = {
    # v2: `record_images` becomes a view over `record_rows`, which gains typed columns.
    2: """
    ALTER TABLE record_images RENAME TO record_rows;
    ALTER TABLE record_rows DROP COLUMN record_id;
    ALTER TABLE record_rows ALTER source_id DROP NOT NULL;
    ALTER TABLE record_rows ADD COLUMN source_num BIGINT;
    ALTER TABLE record_rows ADD COLUMN group_uuid UUID;
    ALTER TABLE record_rows ADD COLUMN url_base VARCHAR;
    ALTER TABLE record_rows ADD COLUMN url_tail VARCHAR;
    ALTER TABLE record_rows ADD COLUMN holder_num BIGINT;
    ALTER TABLE record_rows ADD COLUMN taxon_num BIGINT;
    """,
}


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring the schema to SCHEMA_VERSION (in one transaction); refuse a catalog written by
    a newer treeoflife."""
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    found = int(rows[0][0]) if rows else 0
    if found > SCHEMA_VERSION:
        raise TolError(
            f"catalog schema version {found} is newer than this treeoflife ({SCHEMA_VERSION}); "
            "upgrade treeoflife"
        )
    if found == SCHEMA_VERSION:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        # A new catalog (found 0) gets SCHEMA_SQL alone; an old one is migrated step by step.
        for version in range(found + 1, SCHEMA_VERSION + 1) if found else ():
            con.execute(MIGRATIONS[version])
        con.execute(SCHEMA_SQL)
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def table_names(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> set[str]:
    """Tables and views of a catalog's main schema (default: the connection's own). Stage
    tables appear when a stage first runs, and some (`records`, `taxa_resolved`) are views."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = coalesce(?, current_database()) AND table_schema = 'main'",
        [catalog],
    ).fetchall()
    return {name for (name,) in rows}


def table_exists(con: duckdb.DuckDBPyConnection, table: str, catalog: str | None = None) -> bool:
    return table in table_names(con, catalog)


def status(con: duckdb.DuckDBPyConnection) -> dict:
    """Per-stage completion and row counts, as `tol status --json` prints them."""
    stages: dict[str, dict] = {}
    present = table_names(con)
    for stage, table in STAGE_TABLES:
        # A stage's own tables appear when it first runs; before that it is simply not done.
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if table in present else 0
        stages[stage] = {"complete": rows > 0, "rows": rows}
    pulls = con.execute(
        "SELECT source, version, records, quarantined, finished_at FROM pulls ORDER BY source"
    ).fetchall()
    stages["pull"]["sources"] = {
        source: {
            "version": version,
            "records": records,
            "quarantined": quarantined,
            "finished_at": finished_at.isoformat() if finished_at else None,
        }
        for source, version, records, quarantined, finished_at in pulls
    }
    stages["pull"]["quarantined"] = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    return {"schema_version": int(version), "stages": stages}
