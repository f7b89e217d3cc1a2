"""Shared machinery of the source loaders: raw tables, rejected rows and the quarantine.

Every loader reads its files with DuckDB's own readers into `raw_<source>__<role>` tables
(every source column kept; VARCHAR except the ids it types), sends rows DuckDB could not
parse and rows that fail a check to `quarantine` with file, line and reason, and fills
`record_rows` and `source_taxa` (the `records` view) in SQL.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from treeoflife.archives import extract_matching
from treeoflife.manifest import SourceManifest
from treeoflife.workspace import RANKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullContext:
    """What a loader gets: the open catalog, its manifest and the downloaded files by role."""

    con: duckdb.DuckDBPyConnection
    manifest: SourceManifest
    files: dict[str, Path]
    extract_dir: Path
    extracted: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    # raw table -> label of the one file `stage_tables` read into `_staging_<table>`
    staged: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.manifest.name

    def raw_table(self, role: str) -> str:
        return f"raw_{self.source.replace('-', '_')}__{role}"

    def inputs(self, role: str) -> list[tuple[str, Path]]:
        """(label, path) of the file(s) to read for a role: the download, or its member(s).

        The label (file name, or `archive!member`) is what quarantine rows name. The members
        of every role that shares an archive are extracted together, in one pass.
        """
        spec = self.manifest.file(role)
        path = self.files[role]
        if not spec.member:
            return [(path.name, path)]
        if role not in self.extracted:
            sharing = {
                other: self.manifest.file(other).member
                for other, other_path in self.files.items()
                if other_path == path and self.manifest.file(other).member
            }
            dest_dirs = {other: self.extract_dir / other for other in sharing}
            self.extracted.update(extract_matching(path, sharing, dest_dirs))
        return [(f"{path.name}!{name}", member) for name, member in self.extracted[role]]

    def option(self, key: str, default=None):
        return self.manifest.options.get(key, default)


@contextlib.contextmanager
def timed_step(source: str, step: str) -> Iterator[None]:
    """Log (INFO: `tol -v`) how long one step of a pull took; `benchmarks/ingest.py` counts them.

    The record carries `pull_step` and `seconds` as attributes, for handlers that count.
    """
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    log.info(
        "%s: %s took %.2f s", source, step, seconds, extra={"pull_step": step, "seconds": seconds}
    )


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


def _reader_sql(
    path: Path,
    *,
    delim: str,
    quoted: bool,
    header: bool,
    names: Sequence[str] | None,
    types: Mapping[str, str] | None,
    rejects: str,
    scan: str,
) -> str:
    """The `read_csv(...)` call of `load_delimited`; rejected lines go to `rejects`."""
    options = [
        f"delim={sql_str(delim)}",
        f"header={'true' if header else 'false'}",
        "auto_type_candidates=['VARCHAR']",
        "store_rejects=true",
        f"rejects_table={sql_str(rejects)}",
        f"rejects_scan={sql_str(scan)}",
        "strict_mode=true",
        "auto_detect=false" if names and not header else "auto_detect=true",
    ]
    options += ["quote=''", "escape=''"] if not quoted else ["quote='\"'", "escape='\"'"]
    types = dict(types or {})
    if names and not header:  # no header: name and type every column ourselves
        columns = ", ".join(f"{sql_str(c)}: {sql_str(types.get(c, 'VARCHAR'))}" for c in names)
        options.append("columns={" + columns + "}")
    else:
        if names:
            options.append(f"names={sql_list(names)}")
        if types:
            typed = ", ".join(f"{sql_str(k)}: {sql_str(v)}" for k, v in types.items())
            options.append("types={" + typed + "}")
    return f"read_csv({sql_str(str(path))}, {', '.join(options)})"


def _rejected_rows_sql(rejects: str) -> str:
    """One row per rejected line: its first error (by column) and the raw line."""
    return (
        "SELECT line, arg_min(error_type || ': ' || error_message, coalesce(column_idx, 0)) "
        f"AS reason, any_value(csv_line) AS csv_line FROM {rejects} GROUP BY line"
    )


def load_delimited(
    ctx: PullContext,
    table: str,
    path: Path,
    *,
    label: str,
    delim: str,
    quoted: bool,
    header: bool = True,
    names: Sequence[str] | None = None,
    types: Mapping[str, str] | None = None,
    replace: bool = True,
) -> None:
    """Read one CSV/TSV (gzip or plain) into `table` as VARCHAR; rejected lines to quarantine.

    `quoted=False` is for the iNat dumps, whose text is never quoted and may hold `"`.
    Columns are VARCHAR (lossless) except those `types` names (ids, uuids, counts): typed
    columns store and join faster, and a value that does not cast rejects its row, which
    lands in quarantine with DuckDB's message and the line.
    The rejected line numbers are kept in `_rejected_lines` so later checks can compute
    the file line of an accepted row. A file `stage_tables` already read is only renamed
    into place here (inside the pull's transaction), not read again.
    """
    if replace and ctx.staged.get(table) == label:
        _install_staged(ctx, table, label)
        return
    tag = uuid.uuid4().hex[:12]
    rejects, scan = f"_rejects_{tag}", f"_rejects_scan_{tag}"
    reader = _reader_sql(
        path,
        delim=delim,
        quoted=quoted,
        header=header,
        names=names,
        types=types,
        rejects=rejects,
        scan=scan,
    )
    verb = "CREATE OR REPLACE TABLE" if replace else "INSERT INTO"
    select = f"SELECT *, {sql_str(label)} AS _file FROM {reader}"
    ctx.con.execute(f"{verb} {table} {'AS ' if replace else ''}{select}")
    ctx.con.execute(
        f"""
        INSERT INTO quarantine
        SELECT {sql_str(ctx.source)}, {sql_str(label)}, line, reason, csv_line
        FROM ({_rejected_rows_sql(rejects)}) ORDER BY line
        """
    )
    ensure_rejected_lines(ctx.con)
    ctx.con.execute(
        f"INSERT INTO _rejected_lines SELECT DISTINCT {sql_str(table)}, {sql_str(label)}, line "
        f"FROM {rejects}"
    )
    ctx.con.execute(f"DROP TABLE IF EXISTS {rejects}")
    ctx.con.execute(f"DROP TABLE IF EXISTS {scan}")


@dataclass(frozen=True)
class DelimitedRole:
    """How `stage_tables` reads one role's file (as `load_tables` would)."""

    role: str
    delim: str
    quoted: bool
    types: Mapping[str, str] | None = None


def _staging_names(table: str) -> tuple[str, str]:
    return f"_staging_{table}", f"_staging_rejects_{table}"


def stage_tables(ctx: PullContext, roles: Sequence[DelimitedRole]) -> None:
    """Read single-file roles into committed `_staging_*` tables, several files at once.

    Run before the pull's transaction: a gzip file is inflated by one thread, so reading
    the big files side by side (one cursor each, biggest first) keeps every core DuckDB is
    given busy (about 10% less wall time than one after the other at 5M iNat photos).
    `load_tables` then renames each staged table into place
    inside the transaction, so a pull stays all-or-nothing; a killed pull leaves only
    staging tables, which the next pull replaces and `drop_staged` removes. Roles read
    from several files (appended into one table) are left to `load_tables`.
    """
    jobs = []
    for spec in roles:
        inputs = ctx.inputs(spec.role)
        if len(inputs) == 1:
            label, path = inputs[0]
            jobs.append((path.stat().st_size, spec, label, path))
    if not jobs:
        return
    jobs.sort(key=lambda job: -job[0])
    threads = int(ctx.con.execute("SELECT current_setting('threads')").fetchone()[0])
    for _, spec, label, _ in jobs:  # claimed first, so a failure drops every staging table
        ctx.staged[ctx.raw_table(spec.role)] = label
    cursors = [ctx.con.cursor() for _ in jobs]  # made here: cursor() is not thread-safe

    def stage(index: int) -> None:
        _, spec, label, path = jobs[index]
        _stage_one(cursors[index], ctx.raw_table(spec.role), path, label, spec)

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
            for done in [pool.submit(stage, index) for index in range(len(jobs))]:
                done.result()
    except BaseException:
        drop_staged(ctx)
        raise
    finally:
        for cursor in cursors:
            cursor.close()


def _stage_one(
    cursor: duckdb.DuckDBPyConnection, table: str, path: Path, label: str, spec: DelimitedRole
) -> None:
    """One file into `_staging_<table>` and its rejected lines into `_staging_rejects_<table>`."""
    staging, rejected = _staging_names(table)
    tag = uuid.uuid4().hex[:12]
    rejects, scan = f"_rejects_{tag}", f"_rejects_scan_{tag}"
    reader = _reader_sql(
        path,
        delim=spec.delim,
        quoted=spec.quoted,
        header=True,
        names=None,
        types=spec.types,
        rejects=rejects,
        scan=scan,
    )
    cursor.execute(
        f"CREATE OR REPLACE TABLE {staging} AS SELECT *, {sql_str(label)} AS _file FROM {reader}"
    )
    cursor.execute(f"CREATE OR REPLACE TABLE {rejected} AS {_rejected_rows_sql(rejects)}")
    cursor.execute(f"DROP TABLE IF EXISTS {rejects}")
    cursor.execute(f"DROP TABLE IF EXISTS {scan}")


def _install_staged(ctx: PullContext, table: str, label: str) -> None:
    """Inside the transaction: the staged table becomes `table`, its rejects quarantine rows."""
    con = ctx.con
    staging, rejected = _staging_names(table)
    con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"ALTER TABLE {staging} RENAME TO {table}")
    con.execute(
        f"INSERT INTO quarantine SELECT {sql_str(ctx.source)}, {sql_str(label)}, line, reason, "
        f"csv_line FROM {rejected} ORDER BY line"
    )
    ensure_rejected_lines(con)
    con.execute(
        f"INSERT INTO _rejected_lines SELECT {sql_str(table)}, {sql_str(label)}, line "
        f"FROM {rejected}"
    )
    con.execute(f"DROP TABLE {rejected}")


def drop_staged(ctx: PullContext) -> None:
    """Drop what `stage_tables` left (after a failure, or tables a loader did not take)."""
    for table in ctx.staged:
        for name in _staging_names(table):
            ctx.con.execute(f"DROP TABLE IF EXISTS {name}")


def ensure_rejected_lines(con: duckdb.DuckDBPyConnection) -> None:
    """The per-pull temp table of line numbers DuckDB's reader rejected."""
    con.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _rejected_lines "
        "(raw_table VARCHAR, file VARCHAR, line BIGINT)"
    )


@dataclass(frozen=True)
class Check:
    """A row check on a raw table: rows where `fails` (SQL over alias t) holds are quarantined."""

    fails: str
    reason: str  # SQL expression, e.g. "'photo_id is not an integer: ' || t.photo_id"


def quarantine_failures(
    ctx: PullContext,
    table: str,
    checks: Sequence[Check],
    *,
    header_lines: int | Mapping[str, int] = 1,
) -> str:
    """Copy the rows of a raw table that fail any check to quarantine, once, with every reason.

    Returns the SQL predicate (over alias t) that keeps the rows that passed: the records
    filter. The checks run in ONE scan; the failing rowids (few) are kept in a temp table
    so the records query needs only a cheap anti-join instead of re-running the checks.
    The rows stay in the raw table (it keeps every source row). The file line is the row's
    ordinal plus the header plus the rejected lines before it (an ASOF join);
    `header_lines` may differ per file (EOL writes the header in its first file only).
    """
    if not checks:
        return "true"
    condition = " OR ".join(f"coalesce(({c.fails}), false)" for c in checks)
    reason = (
        "concat_ws('; ', "
        + ", ".join(f"CASE WHEN coalesce(({c.fails}), false) THEN {c.reason} END" for c in checks)
        + ")"
    )
    ensure_rejected_lines(ctx.con)
    failing = f"_failed_{table}"

    def header(column: str) -> str:
        if isinstance(header_lines, int):
            return str(header_lines)
        cases = " ".join(f"WHEN {sql_str(k)} THEN {v}" for k, v in header_lines.items())
        return f"(CASE {column} {cases} ELSE 1 END)"

    ctx.con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {failing} AS
        SELECT t.rowid AS failed_rowid, t._file, {reason} AS _reason, to_json(t)::VARCHAR AS _raw
        FROM {table} t WHERE {condition}
        """
    )
    ctx.con.execute(
        f"""
        INSERT INTO quarantine
        WITH first_rows AS (SELECT _file, min(rowid) AS first_rowid FROM {table} GROUP BY _file),
        numbered AS (
            SELECT n._raw, n._file, n._reason, n.failed_rowid - f.first_rowid + 1 AS _ordinal
            FROM {failing} n JOIN first_rows f ON n._file = f._file
        ),
        rejected AS (
            SELECT file, line - {header("file")} - row_number() OVER (
                       PARTITION BY file ORDER BY line) AS skip_key,
                   row_number() OVER (PARTITION BY file ORDER BY line) AS skipped
            FROM _rejected_lines WHERE raw_table = {sql_str(table)}
        ),
        rejected_keys AS (
            SELECT file, skip_key, max(skipped) AS skipped FROM rejected GROUP BY ALL
        )
        SELECT {sql_str(ctx.source)}, n._file,
               n._ordinal + {header("n._file")} + coalesce(r.skipped, 0), n._reason, n._raw
        FROM numbered n
        ASOF LEFT JOIN rejected_keys r ON n._file = r.file AND n._ordinal > r.skip_key
        ORDER BY n._file, n._ordinal
        """
    )
    return f"t.rowid NOT IN (SELECT failed_rowid FROM {failing})"


def is_int(column: str) -> str:
    """SQL: the VARCHAR column holds an integer."""
    return f"(TRY_CAST({column} AS BIGINT) IS NOT NULL)"


def duplicate_check(ctx: PullContext, table: str, key: str, what: str) -> Check:
    """A check failing every row whose `key` repeats an earlier row's (the first one is kept).

    The repeated rows are found with an equi-join on the (few) repeated keys and kept as
    rowids, so the check itself is a cheap semi-join, not a join with an inequality.
    """
    repeats = f"_repeats_{table}_{key.strip(chr(34)).replace(' ', '_')}"
    ctx.con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {repeats} AS
        WITH firsts AS (
            SELECT {key} AS k, min(rowid) AS first_rowid FROM {table}
            WHERE {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1
        )
        SELECT t.rowid AS repeat_rowid FROM {table} t JOIN firsts d ON d.k = t.{key}
        WHERE t.rowid <> d.first_rowid
        """
    )
    return Check(
        fails=f"t.rowid IN (SELECT repeat_rowid FROM {repeats})",
        reason=f"'duplicate {what} ' || t.{key} || ' (an earlier row is kept)'",
    )


TAXON_COLUMNS = ("source_taxon_id", "scientific_name", "common_name", "taxon_rank", *RANKS)


def insert_records(ctx: PullContext, select_sql: str, taxa_sql: str | None = None) -> None:
    """Add the loader's SELECT (one row per image: `records` columns + `taxon_key`, or the
    typed `record_rows` columns, e.g. `source_num` for `source_id`).

    Taxon columns go once per `taxon_key` to `source_taxa`, the rest to `record_rows`;
    columns the SELECT lacks stay NULL. Writing names once per taxon instead of once per
    image halves the ingest's write time at 5M+ rows. Big sources pass `taxa_sql` (one row
    per taxon, from their small taxon tables); otherwise the taxa are the DISTINCT taxon
    columns of the image rows.
    """
    con = ctx.con
    con.execute(f"CREATE OR REPLACE TEMP VIEW _loader_rows AS {select_sql}")
    given = [row[0] for row in con.execute("DESCRIBE _loader_rows").fetchall()]
    if taxa_sql is None:
        taxon = ", ".join(f'"{c}"' for c in TAXON_COLUMNS if c in given)
        taxa_sql = (
            f"SELECT DISTINCT source, taxon_key, {taxon} FROM _loader_rows "
            "WHERE taxon_key IS NOT NULL"
        )
    con.execute(f"INSERT INTO source_taxa BY NAME {taxa_sql}")
    image = ", ".join(f'"{c}"' for c in given if c not in TAXON_COLUMNS)
    con.execute(f"INSERT INTO record_rows BY NAME SELECT {image} FROM _loader_rows")


def load_tables(
    ctx: PullContext,
    role: str,
    *,
    delim: str,
    quoted: bool,
    types: Mapping[str, str] | None = None,
) -> str:
    """Load every input of a role (with header rows) into one raw table; returns its name."""
    table = ctx.raw_table(role)
    for i, (label, path) in enumerate(ctx.inputs(role)):
        load_delimited(
            ctx, table, path, label=label, delim=delim, quoted=quoted, types=types, replace=i == 0
        )
    return table
