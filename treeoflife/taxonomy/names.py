"""Scientific-name normalisation as DuckDB SQL: HTML, whitespace, case, authorship and years,
hybrids (`×`, ` x `), qualifiers (sp., spp., cf., aff., nr.), infraspecific ranks, cultivars.

Everything is a macro or a SELECT template, so 450K source names parse in one vectorised pass;
`parse_names` runs the same SQL on a Python list (tests, debugging).
"""

from __future__ import annotations

import duckdb

from treeoflife.sources.loading import sql_str

# Values that mean "no value" in a rank or name column (BIOSCAN writes not_classified, EOL
# and others write unknown / (unidentified), the original dataset also saw pleasehelp).
NULL_TOKENS = (
    "", "-", "?", "na", "n/a", "nan", "none", "null", "unknown", "not_classified",
    "not classified", "unclassified", "(unidentified)", "unidentified", "undetermined",
    "indet", "indet.", "pleasehelp", "incertae sedis",
)  # fmt: skip
# The second token of "Genus sp." etc.: an identification to genus only (or tentative).
QUALIFIERS = {"sp": "sp.", "spp": "spp.", "cf": "cf.", "cfr": "cf.", "aff": "aff.", "nr": "nr."}
# Infraspecific rank markers, as written -> as stored.
INFRA_MARKERS = {
    "subsp": "subsp.", "ssp": "subsp.", "var": "var.", "subvar": "subvar.", "f": "f.",
    "fo": "f.", "forma": "f.", "morph": "morph", "nothosubsp": "nothosubsp.",
    "nothovar": "nothovar.", "ab": "ab.",
}  # fmt: skip
# Lower-case words that start an authorship ("de Geer", "van der Wulp"), never an epithet.
PARTICLES = (
    "de", "da", "di", "do", "du", "van", "von", "der", "den", "la", "le", "ex", "et", "in",
    "al", "del", "della", "dos", "das", "auct", "sensu", "non", "nec", "emend", "and",
)  # fmt: skip

_Q = "|".join(QUALIFIERS)
_M = "|".join(INFRA_MARKERS)
# Genus, (Subgenus), qualifier, epithet, infraspecific marker, infraspecific epithet, rest.
# Every optional group starts with a space and the pattern is anchored, so a token is taken
# whole or not at all ("malaise2719" is never cut to "malaise").
NAME_PATTERN = (
    r"^(\S+)(?: \((\p{Lu}\p{Ll}+)\))?(?: (" + _Q + r")\.?)?(?: (\p{Ll}[\p{Ll}-]*))?"
    r"(?: (" + _M + r")\.?)?(?: (\p{Ll}[\p{Ll}-]*))?(?: (.*))?$"
)
_PARTS = "['genus', 'subgenus', 'qualifier', 'epithet', 'marker', 'infra', 'rest']"
# The same pattern for all-ASCII names, where \p{Lu} and \p{Ll} are just [A-Z] and [a-z]: RE2
# runs it several times faster, and nearly every name is ASCII.
ASCII_NAME_PATTERN = (
    NAME_PATTERN.replace(r"[\p{Ll}-]", "[a-z-]")
    .replace(r"\p{Lu}", "[A-Z]")
    .replace(r"\p{Ll}", "[a-z]")
)


def _in_list(values) -> str:
    return "(" + ", ".join(sql_str(v) for v in values) + ")"


def _case_map(expr: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in mapping.items())
    return f"CASE {expr} {whens} END"


# Scalar macros; regexes are guarded by cheap tests because most names are already clean.
NAME_MACROS_SQL = f"""
-- Macros nest badly (each use of an argument copies its whole expression), so callers clean
-- in layers with clean_values_sql(); these two are for single values.
CREATE OR REPLACE TEMP MACRO tol_null_token(s) AS
    CASE WHEN lower(s) IN {_in_list(NULL_TOKENS)} THEN NULL ELSE s END;
-- All-caps or all-lower names get a capital first letter and lower-case rest.
CREATE OR REPLACE TEMP MACRO tol_fix_case(s) AS
    CASE WHEN s = upper(s) OR s = lower(s) THEN upper(left(s, 1)) || lower(substr(s, 2))
         ELSE s END;
-- The key both sides of a name join use: no hybrid sign, no rank marker, no accents, lower.
CREATE OR REPLACE TEMP MACRO tol_name_key(c) AS
    CASE WHEN contains(c, '×') OR contains(c, '.') OR contains(c, ' x ') OR contains(c, ' X ')
         THEN strip_accents(lower(trim(regexp_replace(regexp_replace(regexp_replace(c,
                  '(^|\\s)(?:×\\s*|[xX]\\s+)', '\\1', 'g'),
                  '\\s(?:{_M})\\.(\\s)', '\\1', 'g'), '\\s+', ' ', 'g'))))
         ELSE strip_accents(lower(c)) END;
"""

# `__RELATION__` holds a column `__NAME__`; the result adds the n_* columns (see docs/taxa.md).
PARSE_SQL = f"""
WITH cleaned AS (
    __CLEANED__
), hybrids AS (
    SELECT *,
           coalesce(contains(n_clean, '×') OR contains(n_clean, ' x ')
                    OR contains(n_clean, ' X ') OR starts_with(n_clean, 'x ')
                    OR starts_with(n_clean, 'X '), false) AS n_hybrid
    FROM cleaned
), formulas AS (
    SELECT *,
           n_hybrid AND regexp_matches(n_clean, '\\S\\s+(?:×|[xX])\\s*\\p{{Lu}}')
               AS n_hybrid_formula
    FROM hybrids
), unhybrid AS (
    SELECT *,
           tol_fix_case(CASE WHEN n_hybrid THEN trim(regexp_replace(
               CASE WHEN n_hybrid_formula
                    THEN regexp_replace(n_clean, '\\s+(?:×|[xX])\\s*\\p{{Lu}}.*$', '')
                    ELSE n_clean END,
               '(^|\\s)(?:×\\s*|[xX]\\s+)', '\\1', 'g')) ELSE n_clean END) AS n_plain
    FROM formulas
), split AS (
    -- strlen counts bytes and length characters: equal only for an all-ASCII name.
    SELECT *,
           CASE WHEN strlen(n_plain) = length(n_plain)
                THEN regexp_extract(n_plain, {sql_str(ASCII_NAME_PATTERN)}, {_PARTS})
                ELSE regexp_extract(n_plain, {sql_str(NAME_PATTERN)}, {_PARTS}) END AS n_parts,
           strlen(n_plain) = length(n_plain) AS n_ascii
    FROM unhybrid
), tokens AS (
    SELECT *,
           CASE WHEN CASE WHEN n_ascii THEN regexp_full_match(n_parts.genus, '[A-Z][a-z-]+')
                          ELSE regexp_full_match(n_parts.genus, '\\p{{Lu}}[\\p{{Ll}}-]+') END
                THEN n_parts.genus END AS n_genus,
           n_parts.epithet <> '' AND n_parts.epithet NOT IN {_in_list(PARTICLES)} AS epithet_ok,
           n_parts.infra <> '' AND n_parts.infra NOT IN {_in_list(PARTICLES)} AS infra_ok
    FROM split
), parsed AS (
    SELECT * EXCLUDE (epithet_ok, infra_ok, n_parts, n_ascii),
           nullif(n_parts.subgenus, '') AS n_subgenus,
           CASE WHEN n_genus IS NOT NULL THEN {_case_map("n_parts.qualifier", QUALIFIERS)} END
               AS n_qualifier,
           CASE WHEN n_genus IS NOT NULL AND epithet_ok THEN n_parts.epithet END AS n_epithet,
           CASE WHEN n_genus IS NOT NULL AND epithet_ok AND infra_ok
                THEN {_case_map("n_parts.marker", INFRA_MARKERS)} END AS n_infra_rank,
           CASE WHEN n_genus IS NOT NULL AND epithet_ok AND infra_ok THEN n_parts.infra END
               AS n_infra_epithet,
           CASE WHEN n_genus IS NULL THEN NULL
                WHEN n_parts.epithet <> '' AND NOT epithet_ok
                THEN concat_ws(' ', n_parts.epithet, nullif(n_parts.marker, ''),
                               nullif(n_parts.infra, ''), nullif(n_parts.rest, ''))
                WHEN NOT infra_ok
                THEN nullif(concat_ws(' ', nullif(n_parts.marker, ''), nullif(n_parts.infra, ''),
                                      nullif(n_parts.rest, '')), '')
                ELSE nullif(n_parts.rest, '') END AS n_rest
    FROM tokens
), described AS (
    SELECT *,
           CASE WHEN n_rest IS NOT NULL AND (contains(n_rest, chr(39)) OR contains(n_rest, '"')
                     OR contains(n_rest, '‘') OR contains(n_rest, '’') OR contains(n_rest, 'cv.'))
                THEN coalesce(
                    nullif(regexp_extract(n_rest, '[''‘’"]([^''‘’"]+)[''‘’"]', 1), ''),
                    nullif(regexp_extract(n_rest, 'cv\\.\\s*(\\S+)', 1), '')) END AS n_cultivar,
           CASE WHEN n_genus IS NOT NULL AND n_epithet IS NULL AND n_rest IS NOT NULL
                THEN regexp_matches(n_rest, '^\\S*\\d') ELSE false END AS n_interim
    FROM parsed
)
SELECT * EXCLUDE (n_rest),
       CASE WHEN n_cultivar IS NULL THEN n_rest
            ELSE nullif(trim(regexp_replace(n_rest, '[''‘’"][^''‘’"]+[''‘’"]|cv\\.\\s*\\S+',
                                            '', 'g')), '') END AS n_authorship,
       CASE WHEN n_epithet IS NOT NULL AND n_qualifier IS NULL AND NOT n_hybrid_formula
            THEN 'species'
            WHEN n_genus IS NOT NULL THEN 'uninomial' END AS n_kind,
       CASE WHEN n_hybrid_formula OR n_epithet IS NULL OR n_qualifier IS NOT NULL THEN NULL
            WHEN regexp_matches(n_clean, '^(?:×|[xX]\\s)') THEN '×' || n_genus || ' ' || n_epithet
            WHEN n_hybrid THEN n_genus || ' × ' || n_epithet
            ELSE n_genus || ' ' || n_epithet END AS n_binomial,
       strip_accents(lower(n_genus)) AS n_genus_key,
       strip_accents(lower(n_epithet)) AS n_epithet_key,
       CASE WHEN n_epithet IS NOT NULL AND n_qualifier IS NULL AND NOT n_hybrid_formula
            THEN strip_accents(lower(n_genus || ' ' || n_epithet)) END AS n_species_key
FROM described
"""

PARSED_COLUMNS = (
    "n_clean", "n_hybrid", "n_hybrid_formula", "n_plain", "n_genus", "n_subgenus",
    "n_qualifier", "n_epithet", "n_infra_rank", "n_infra_epithet", "n_cultivar", "n_interim",
    "n_authorship", "n_kind", "n_binomial", "n_genus_key", "n_epithet_key", "n_species_key",
)  # fmt: skip


def install_name_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Define the tol_* macros on this connection (temporary: nothing is written)."""
    con.execute(NAME_MACROS_SQL)


def clean_values_sql(
    relation: str, columns: dict[str, str], *, fix_case: tuple[str, ...] = ()
) -> str:
    """A SELECT adding cleaned copies of columns: `{new_name: source_column}`. Cleaning =
    HTML tags and entities out, runs of whitespace/underscores to one space, trimmed, the
    NULL_TOKENS to NULL; names in `fix_case` also get tol_fix_case. One layer per step, so
    no expression is copied into another (DuckDB inlines macro arguments)."""
    html = ", ".join(
        f"CASE WHEN contains({src}, '<') OR contains({src}, '&') THEN regexp_replace("
        f"replace(replace(replace(replace({src}, '&nbsp;', ' '), '&amp;', '&'), '&times;', "
        f"'×'), '&#215;', '×'), '<[^>]*>', ' ', 'g') ELSE {src} END AS {new}"
        for new, src in columns.items()
    )
    space = ", ".join(
        f"CASE WHEN contains({c}, '  ') OR contains({c}, '_') OR contains({c}, chr(9)) "
        f"OR contains({c}, chr(10)) OR contains({c}, chr(13)) OR contains({c}, chr(160)) "
        f"THEN regexp_replace({c}, '[\\s_\\x{{00A0}}]+', ' ', 'g') ELSE {c} END AS {c}"
        for c in columns
    )
    tokens = ", ".join(f"tol_null_token(nullif(trim({c}), '')) AS {c}" for c in columns)
    cased = ", ".join(f"tol_fix_case({c}) AS {c}" if c in fix_case else c for c in columns)
    names = ", ".join(columns)
    return (
        f"SELECT * EXCLUDE ({names}), {cased} FROM (SELECT * EXCLUDE ({names}), {tokens} "
        f"FROM (SELECT * EXCLUDE ({names}), {space} FROM (SELECT *, {html} FROM {relation})))"
    )


def parse_sql(relation: str, name: str) -> str:
    """A SELECT adding the parsed n_* columns to every row of `relation` (a table name or a
    parenthesised query) from its column `name`."""
    cleaned = clean_values_sql(relation, {"n_clean": name})
    return PARSE_SQL.replace("__CLEANED__", cleaned)


def parse_names(con: duckdb.DuckDBPyConnection, names: list[str | None]) -> list[dict]:
    """Parse a few names with the same SQL the resolver runs; one dict per name, in order."""
    install_name_macros(con)
    con.execute("CREATE OR REPLACE TEMP TABLE _names_in (i INTEGER, raw VARCHAR)")
    con.executemany("INSERT INTO _names_in VALUES (?, ?)", list(enumerate(names)))
    cursor = con.execute(f"SELECT * FROM ({parse_sql('_names_in', 'raw')}) ORDER BY i")
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    con.execute("DROP TABLE _names_in")
    return rows
