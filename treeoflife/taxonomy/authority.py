"""Taxonomic authorities (GBIF Backbone DwC-A, COL ColDP, iNat taxa.csv) as uniform tables.

Owns `authority_taxa` and `authority_vernaculars`: filled in SQL from DuckDB's readers, with
the 7-rank classification of every usage computed by walking parent links in SQL.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import duckdb

from treeoflife.archives import extract_member, is_archive, list_members
from treeoflife.errors import TolError
from treeoflife.http import HttpClient
from treeoflife.manifest import SourceManifest, load_manifest, repo_dir
from treeoflife.pull import download_source_files
from treeoflife.sources.loading import (
    Check,
    PullContext,
    duplicate_check,
    ensure_rejected_lines,
    is_int,
    load_delimited,
    quarantine_failures,
    sql_str,
)
from treeoflife.workspace import RANKS, Workspace

log = logging.getLogger(__name__)

KINDS = ("gbif", "col", "inat")
# The authority kind of each authority manifest's source name (manifests/*.toml).
KIND_OF_SOURCE = {"gbif-backbone": "gbif", "col": "col", "inat-taxa": "inat"}
STATUSES = ("accepted", "synonym", "doubtful", "other")

_RANK_COLUMNS = ", ".join(f'"{rank}" VARCHAR' for rank in RANKS)

AUTHORITY_SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS authority_taxa (
    authority VARCHAR NOT NULL,      -- gbif | col | inat
    version VARCHAR,
    taxon_id VARCHAR NOT NULL,       -- the authority's own id (GBIF key, COL ID, iNat taxon_id)
    parent_id VARCHAR,               -- for COL synonyms: the accepted usage's parent
    accepted_id VARCHAR,             -- NULL unless status = 'synonym': the accepted usage
    status VARCHAR NOT NULL,         -- accepted | synonym | doubtful | other
    status_raw VARCHAR,              -- as the authority gave it (iNat: active / inactive)
    rank VARCHAR,                    -- lower case
    scientific_name VARCHAR,         -- with authorship
    canonical_name VARCHAR,          -- without authorship
    authorship VARCHAR,
    {_RANK_COLUMNS}                  -- of the ACCEPTED taxon; species = canonical binomial
);
CREATE TABLE IF NOT EXISTS authority_vernaculars (
    authority VARCHAR NOT NULL,
    taxon_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    language VARCHAR,                -- ISO 639-1, lower case where a mapping is known
    preferred BOOLEAN
);
"""

# ISO 639-3 / 639-2 (B and T) codes -> ISO 639-1, for COL's `language`.
ISO639_1 = {
    "afr": "af", "ara": "ar", "baq": "eu", "bul": "bg", "cat": "ca", "ces": "cs",
    "chi": "zh", "cym": "cy", "cze": "cs", "dan": "da", "deu": "de", "dut": "nl",
    "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu", "fas": "fa",
    "fin": "fi", "fra": "fr", "fre": "fr", "ger": "de", "gle": "ga", "glg": "gl",
    "gre": "el", "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "ice": "is",
    "ind": "id", "isl": "is", "ita": "it", "jpn": "ja", "kor": "ko", "lat": "la",
    "lav": "lv", "lit": "lt", "may": "ms", "mri": "mi", "msa": "ms", "nld": "nl",
    "nno": "nn", "nob": "nb", "nor": "no", "per": "fa", "pol": "pl", "por": "pt",
    "ron": "ro", "rum": "ro", "rus": "ru", "slk": "sk", "slo": "sk", "slv": "sl",
    "spa": "es", "srp": "sr", "swa": "sw", "swe": "sv", "tha": "th", "tur": "tr",
    "ukr": "uk", "vie": "vi", "wel": "cy", "zho": "zh",
}  # fmt: skip


@dataclass(frozen=True)
class AuthorityStats:
    """What one load produced; `quarantined` counts this authority's rows in `quarantine`."""

    authority: str
    version: str
    taxa: int
    accepted: int
    synonyms: int
    unclassified: int  # non-synonym usages whose kingdom could not be found
    vernaculars: int
    quarantined: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Input:
    role: str  # taxa | vernacular
    label: str  # file name, or `archive!member`: what quarantine rows name
    path: Path


# Files per kind: (role, accepted names case-insensitively, required).
_FILES = {
    "gbif": (("taxa", ("taxon.tsv",), True), ("vernacular", ("vernacularname.tsv",), False)),
    "col": (("taxa", ("nameusage.tsv",), True), ("vernacular", ("vernacularname.tsv",), False)),
    "inat": (("taxa", ("taxa.csv", "taxa.csv.gz"), True),),
}

# Columns each raw file must have (matched case-insensitively, after `col:` is stripped).
_REQUIRED = {
    ("gbif", "taxa"): (
        "taxonID", "parentNameUsageID", "acceptedNameUsageID", "scientificName",
        "scientificNameAuthorship", "canonicalName", "taxonRank", "taxonomicStatus",
        "kingdom", "phylum", "class", "order", "family", "genus",
    ),
    ("gbif", "vernacular"): ("taxonID", "vernacularName", "language"),
    ("col", "taxa"): ("ID", "parentID", "status", "scientificName", "authorship", "rank"),
    ("col", "vernacular"): ("taxonID", "name", "language"),
    ("inat", "taxa"): ("taxon_id", "ancestry", "rank", "name", "active"),
}  # fmt: skip

_ID_COLUMN = {"gbif": "taxonID", "col": "ID", "inat": "taxon_id"}

_STATUS_SQL = """CASE
    WHEN {s} = 'accepted' THEN 'accepted'
    WHEN {s} IN ('doubtful', 'provisionally accepted', 'provisionally_accepted') THEN 'doubtful'
    WHEN {s} LIKE '%synonym%' OR {s} = 'misapplied' THEN 'synonym'
    ELSE 'other' END"""


def _status(column: str) -> str:
    return _STATUS_SQL.format(s=f"lower(trim({column}))")


def _flat_ranks(alias: str) -> str:
    return ", ".join(f'nullif(trim({alias}."{rank}"), \'\') AS "{rank}"' for rank in RANKS[:-1])


# One row per usage, uniform columns; `{raw}` is the raw table, `{keep}` the rows that passed.
_USAGES_SQL = {
    "gbif": """
        SELECT t.taxonID AS taxon_id,
               nullif(t.parentNameUsageID, '') AS parent_id,
               CASE WHEN {status} = 'synonym' THEN nullif(t.acceptedNameUsageID, '') END
                   AS accepted_id,
               {status} AS status, t.taxonomicStatus AS status_raw,
               lower(trim(t.taxonRank)) AS rank, t.scientificName AS scientific_name,
               coalesce(nullif(t.canonicalName, ''), t.scientificName) AS canonical_name,
               nullif(t.scientificNameAuthorship, '') AS authorship,
               {flat}, NULL::VARCHAR AS species, NULL::VARCHAR[] AS lineage
        FROM {raw} t WHERE {keep}
    """,
    "col": """
        SELECT t.ID AS taxon_id,
               CASE WHEN {status} <> 'synonym' THEN nullif(t.parentID, '') END AS parent_id,
               CASE WHEN {status} = 'synonym' THEN nullif(t.parentID, '') END AS accepted_id,
               {status} AS status, t.status AS status_raw,
               lower(trim(t.rank)) AS rank,
               concat_ws(' ', t.scientificName, nullif(t.authorship, '')) AS scientific_name,
               t.scientificName AS canonical_name,
               nullif(t.authorship, '') AS authorship,
               {flat}, NULL::VARCHAR AS species, NULL::VARCHAR[] AS lineage
        FROM {raw} t WHERE {keep}
    """,
    "inat": """
        SELECT t.taxon_id AS taxon_id,
               nullif(string_split(coalesce(t.ancestry, ''), '/')[-1], '') AS parent_id,
               NULL::VARCHAR AS accepted_id,
               CASE WHEN lower(t.active) = 'true' THEN 'accepted' ELSE 'other' END AS status,
               CASE lower(t.active) WHEN 'true' THEN 'active' WHEN 'false' THEN 'inactive'
                    ELSE t.active END AS status_raw,
               lower(trim(t.rank)) AS rank, t.name AS scientific_name,
               t.name AS canonical_name, NULL::VARCHAR AS authorship,
               {null_ranks},
               list_append(CASE WHEN nullif(t.ancestry, '') IS NULL THEN []::VARCHAR[]
                                ELSE string_split(t.ancestry, '/') END, t.taxon_id) AS lineage
        FROM {raw} t WHERE {keep}
    """,
}


def _rank_case(rank: str, child: str, parent: str | None) -> str:
    otherwise = f'{parent}."{rank}"' if parent else "NULL"
    return (
        f"CASE WHEN {child}.rank = {sql_str(rank)} THEN {child}.canonical_name "
        f'ELSE {otherwise} END AS "{rank}"'
    )


# Top-down over the non-synonym usages: each usage appears once (N rows, not N x depth), a
# usage whose parent is missing starts a tree, and a parent cycle is never entered.
_WALK_SQL = """
CREATE OR REPLACE TEMP TABLE _authority_walk AS
WITH RECURSIVE nodes AS (
    SELECT taxon_id, parent_id, rank, canonical_name FROM _authority_usages
    WHERE status <> 'synonym'
),
walk AS (
    SELECT n.taxon_id, 0 AS depth, {root_ranks}
    FROM nodes n LEFT JOIN nodes p ON p.taxon_id = n.parent_id
    WHERE p.taxon_id IS NULL
    UNION ALL
    SELECT c.taxon_id, w.depth + 1, {child_ranks}
    FROM walk w JOIN nodes c ON c.parent_id = w.taxon_id
    WHERE w.depth < 500
)
SELECT * FROM walk
"""

# iNat: the ancestry lists every ancestor, so no recursion is needed (SOURCES.md §1.8); an
# ancestor missing from the file is skipped; a species-level hybrid fills `species`.
_INAT_RANK_ALIASES = {"genus": ("genus", "genushybrid"), "species": ("species", "hybrid")}
_LINEAGE_SQL = """
CREATE OR REPLACE TEMP TABLE _authority_walk AS
WITH steps AS (
    SELECT taxon_id, unnest(lineage) AS ancestor_id FROM _authority_usages
)
SELECT s.taxon_id, {pivot}
FROM steps s JOIN _authority_usages a ON a.taxon_id = s.ancestor_id
GROUP BY s.taxon_id
"""

_INSERT_TAXA_SQL = """
INSERT INTO authority_taxa
WITH classified AS (
    SELECT u.taxon_id, u.parent_id, {merged}
    FROM _authority_usages u LEFT JOIN _authority_walk w ON w.taxon_id = u.taxon_id
    WHERE u.status <> 'synonym'
)
SELECT {authority}, {version}, u.taxon_id,
       coalesce(u.parent_id, CASE WHEN u.status = 'synonym' THEN c.parent_id END),
       u.accepted_id, u.status, u.status_raw, u.rank, u.scientific_name, u.canonical_name,
       u.authorship, {ranks}
FROM _authority_usages u
LEFT JOIN classified c
       ON c.taxon_id = CASE WHEN u.status = 'synonym' THEN u.accepted_id ELSE u.taxon_id END
"""


def ensure_authority_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create `authority_taxa` and `authority_vernaculars` if the catalog lacks them."""
    con.execute(AUTHORITY_SCHEMA_SQL)


def load_authority(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    path: Path,
    *,
    version: str,
    extract_dir: Path,
) -> AuthorityStats:
    """Load one authority into `authority_taxa` / `authority_vernaculars`, replacing its rows.

    `path` is, for gbif, backbone.zip or a folder holding Taxon.tsv (+ VernacularName.tsv);
    for col, a ColDP zip or folder holding NameUsage.tsv (+ VernacularName.tsv); for inat,
    taxa.csv[.gz] or a folder holding it. Archive members are extracted under `extract_dir`.
    The whole load is one transaction: a failed load leaves the previous rows in place, and
    loading again gives the same rows. Rows that do not parse or fail a check go to
    `quarantine` with source `authority:<kind>`.
    """
    if kind not in KINDS:
        raise TolError(f"unknown authority kind {kind!r}; use one of {', '.join(KINDS)}")
    path = Path(path)
    inputs = _locate_inputs(kind, path, Path(extract_dir))
    source = f"authority:{kind}"
    ctx = PullContext(
        con=con,
        manifest=SourceManifest(
            name=source, version=version, title=f"{kind} taxonomy", base_url="", files={}
        ),
        files={},
        extract_dir=Path(extract_dir),
    )
    ensure_authority_tables(con)
    ensure_rejected_lines(con)
    con.begin()
    try:
        con.execute("DELETE FROM quarantine WHERE source = ?", [source])
        con.execute("DELETE FROM authority_taxa WHERE authority = ?", [kind])
        con.execute("DELETE FROM authority_vernaculars WHERE authority = ?", [kind])
        tables = {item.role: _load_raw(ctx, kind, item) for item in inputs}
        _insert_taxa(ctx, kind, version, tables["taxa"])
        if "vernacular" in tables:
            _insert_vernaculars(ctx, kind, tables["vernacular"])
        for table in tables.values():
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute("DELETE FROM _rejected_lines WHERE raw_table = ?", [table])
        con.execute("DROP TABLE IF EXISTS _authority_usages")
        con.execute("DROP TABLE IF EXISTS _authority_walk")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    stats = authority_stats(con, kind, version)
    log.info("loaded authority %s %s: %s", kind, version, stats)
    return stats


def authority_stats(con: duckdb.DuckDBPyConnection, kind: str, version: str) -> AuthorityStats:
    """Counts of one loaded authority's rows."""
    taxa, accepted, synonyms, unclassified = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE status = 'accepted'),
               count(*) FILTER (WHERE status = 'synonym'),
               count(*) FILTER (WHERE status <> 'synonym' AND kingdom IS NULL)
        FROM authority_taxa WHERE authority = ?
        """,
        [kind],
    ).fetchall()[0]
    vernaculars = con.execute(
        "SELECT count(*) FROM authority_vernaculars WHERE authority = ?", [kind]
    ).fetchall()[0][0]
    quarantined = con.execute(
        "SELECT count(*) FROM quarantine WHERE source = ?", [f"authority:{kind}"]
    ).fetchall()[0][0]
    return AuthorityStats(
        kind, version, taxa, accepted, synonyms, unclassified, vernaculars, quarantined
    )


def download_authority(
    workspace: Workspace,
    manifest: SourceManifest,
    client: HttpClient,
    mirror: str | None = None,
) -> Path:
    """Download (or reuse, when verified) the manifest's one file into
    `downloads/<name>/<version>/`; returns its path."""
    if len(manifest.files) != 1:
        raise TolError(
            f"manifest {manifest.path or manifest.name} lists {len(manifest.files)} files; "
            "an authority manifest must list exactly one (the backbone.zip / ColDP zip)"
        )
    (role,) = manifest.files
    return download_source_files(workspace, manifest, client, mirror=mirror, roles=[role])[role]


def load_authority_from(
    workspace: Workspace,
    kind: str | None,
    source: str,
    client: HttpClient,
    *,
    version: str | None = None,
    mirror: str | None = None,
) -> AuthorityStats:
    """`tol taxa load-authority`: SOURCE is a manifest (.toml), an http(s) URL or a path.

    `kind=None` takes the kind from a manifest's source name (KIND_OF_SOURCE).
    """
    if source.endswith(".toml"):
        candidate = Path(source)
        if not candidate.exists():
            candidate = repo_dir("manifests") / source
        manifest = load_manifest(candidate)
        kind = kind or KIND_OF_SOURCE.get(manifest.name)
        if kind is None:
            raise TolError(f"{candidate}: source {manifest.name!r} is not a known authority")
        path = download_authority(workspace, manifest, client, mirror=mirror)
        version = version or manifest.version
        extract = path.parent / "extracted"
    elif kind is None:
        raise TolError(f"{source}: give the authority kind ({', '.join(KINDS)})")
    elif source.startswith(("http://", "https://")):
        version = version or "url"
        folder = workspace.downloads / f"authority-{kind}" / version
        folder.mkdir(parents=True, exist_ok=True)
        name = source.rsplit("/", 1)[-1].split("?", 1)[0] or "authority"
        path = client.download(source, folder / name)
        extract = folder / "extracted"
    else:
        path = Path(source)
        version = version or "local"
        extract = workspace.downloads / f"authority-{kind}" / version / "extracted"
    with workspace.connect() as con:
        return load_authority(con, kind, path, version=version, extract_dir=extract)


# inputs -------------------------------------------------------------------------------------
def _locate_inputs(kind: str, path: Path, extract_dir: Path) -> list[_Input]:
    if not path.exists():
        raise TolError(f"{path}: no such file or folder (the {kind} authority to load)")
    found: list[_Input] = []
    if path.is_dir():
        files = {child.name.lower(): child for child in path.iterdir() if child.is_file()}
        for role, names, required in _FILES[kind]:
            match = next((files[name] for name in names if name in files), None)
            if match is not None:
                found.append(_Input(role, match.name, match))
            elif required:
                raise TolError(f"{path}: no {' or '.join(names)} in this folder; is it {kind}?")
        return found
    if kind == "inat":
        return [_Input("taxa", path.name, path)]
    if not is_archive(path):
        raise TolError(f"{path}: not a zip/tar archive nor a folder; pass the {kind} download")
    members = list_members(path)
    for role, names, required in _FILES[kind]:
        matches = sorted(
            (m for m in members if PurePosixPath(m).name.lower() in names),
            key=lambda m: (m.count("/"), m),
        )
        if matches:
            name = matches[0]
            target = extract_member(path, name, extract_dir)
            found.append(_Input(role, f"{path.name}!{name}", target))
        elif required:
            raise TolError(f"{path}: no member named {' or '.join(names)}; is it a {kind} file?")
    return found


def _header(path: Path) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        line = handle.readline()
    return line.rstrip("\r\n").split("\t")


def _load_raw(ctx: PullContext, kind: str, item: _Input) -> str:
    """One input into a raw table (VARCHAR columns), rejected lines to quarantine."""
    table = f"_raw_authority_{kind}__{item.role}"
    header = _header(item.path)
    names = [name.removeprefix("col:") for name in header] if kind == "col" else None
    lower = {name.lower() for name in (names or header)}
    missing = [c for c in _REQUIRED[(kind, item.role)] if c.lower() not in lower]
    if missing:
        raise TolError(
            f"{item.label}: missing column(s) {', '.join(missing)} in the header; "
            f"is this a {kind} {item.role} file?"
        )
    ctx.con.execute("DELETE FROM _rejected_lines WHERE raw_table = ?", [table])
    load_delimited(ctx, table, item.path, label=item.label, delim="\t", quoted=False, names=names)
    return table


# taxa ---------------------------------------------------------------------------------------
def _taxa_checks(ctx: PullContext, kind: str, raw: str) -> list[Check]:
    key = _ID_COLUMN[kind]
    checks = [
        Check(f"nullif(trim(t.{key}), '') IS NULL", f"'{key} is empty'"),
        duplicate_check(ctx, raw, key, key),
    ]
    if kind == "inat":
        checks += [
            Check(f"NOT {is_int('t.taxon_id')}", "'taxon_id is not an integer: ' || t.taxon_id"),
            Check(
                "nullif(t.ancestry, '') IS NOT NULL "
                "AND NOT regexp_full_match(t.ancestry, '[0-9]+(/[0-9]+)*')",
                "'ancestry is not /-joined taxon ids: ' || t.ancestry",
            ),
        ]
    return checks


def _insert_taxa(ctx: PullContext, kind: str, version: str, raw: str) -> None:
    con = ctx.con
    keep = quarantine_failures(ctx, raw, _taxa_checks(ctx, kind, raw))
    status = _status("t.taxonomicStatus" if kind == "gbif" else "t.status")  # not for inat
    null_ranks = ", ".join(f'NULL::VARCHAR AS "{rank}"' for rank in RANKS)
    usages = _USAGES_SQL[kind].format(
        raw=raw, keep=keep, status=status, flat=_flat_ranks("t"), null_ranks=null_ranks
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _authority_usages AS {usages}")
    if kind == "inat":
        pivot = ", ".join(
            f"max(CASE WHEN a.rank IN {_INAT_RANK_ALIASES.get(rank, (rank,))!r} "
            f'THEN a.canonical_name END) AS "{rank}"'
            for rank in RANKS
        )
        con.execute(_LINEAGE_SQL.format(pivot=pivot))
    else:
        con.execute(
            _WALK_SQL.format(
                root_ranks=", ".join(_rank_case(rank, "n", None) for rank in RANKS),
                child_ranks=", ".join(_rank_case(rank, "c", "w") for rank in RANKS),
            )
        )
    merged = ", ".join(f'coalesce(u."{rank}", w."{rank}") AS "{rank}"' for rank in RANKS)
    con.execute(
        _INSERT_TAXA_SQL.format(
            merged=merged,
            authority=sql_str(kind),
            version=sql_str(version),
            ranks=", ".join(f'c."{rank}"' for rank in RANKS),
        )
    )


# vernaculars --------------------------------------------------------------------------------
def _language_sql(column: str) -> str:
    cases = " ".join(f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in ISO639_1.items())
    code = f"lower(trim({column}))"
    return f"CASE {code} {cases} ELSE nullif({code}, '') END"


def _insert_vernaculars(ctx: PullContext, kind: str, raw: str) -> None:
    con = ctx.con
    columns = {row[0].lower() for row in con.execute(f"DESCRIBE {raw}").fetchall()}
    name = "vernacularName" if kind == "gbif" else "name"
    preferred_column = "isPreferredName" if kind == "gbif" else "preferred"
    preferred = (
        f"TRY_CAST(t.{preferred_column} AS BOOLEAN)"
        if preferred_column.lower() in columns
        else "NULL::BOOLEAN"
    )
    keep = quarantine_failures(
        ctx,
        raw,
        [
            Check("nullif(trim(t.taxonID), '') IS NULL", "'taxonID is empty'"),
            Check(f"nullif(trim(t.{name}), '') IS NULL", f"'{name} is empty'"),
        ],
    )
    con.execute(
        f"""
        INSERT INTO authority_vernaculars
        SELECT {sql_str(kind)}, t.taxonID, t.{name}, {_language_sql("t.language")}, {preferred}
        FROM {raw} t WHERE {keep}
        """
    )
