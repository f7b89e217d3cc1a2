"""Kingdom harmonisation as data: `kingdoms.csv` (beside this module) becomes the catalog
table `kingdom_names`, which maps every spelling a source or authority uses to one kingdom."""

from __future__ import annotations

from pathlib import Path

import duckdb

KINGDOMS_CSV = Path(__file__).with_name("kingdoms.csv")
KINGDOM_TABLE = "kingdom_names"

KINGDOM_SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS {KINGDOM_TABLE} (
    name VARCHAR PRIMARY KEY,   -- lower case, as a source or authority writes it
    kingdom VARCHAR,            -- the harmonised kingdom; NULL means "no kingdom known"
    note VARCHAR
);
"""


def load_kingdom_names(con: duckdb.DuckDBPyConnection, csv_path: Path = KINGDOMS_CSV) -> int:
    """Replace `kingdom_names` with the rows of `csv_path`; returns the row count.

    Extending the harmonisation is an edit to the CSV (a row per spelling), not to code.
    """
    con.execute(KINGDOM_SCHEMA_SQL)
    con.execute(f"DELETE FROM {KINGDOM_TABLE}")
    con.execute(
        f"""
        INSERT INTO {KINGDOM_TABLE}
        SELECT lower(trim(name)), nullif(trim(kingdom), ''), nullif(trim(note), '')
        FROM read_csv(?, header = true, all_varchar = true,
                      columns = {{'name': 'VARCHAR', 'kingdom': 'VARCHAR', 'note': 'VARCHAR'}})
        """,
        [str(csv_path)],
    )
    return con.execute(f"SELECT count(*) FROM {KINGDOM_TABLE}").fetchall()[0][0]
