"""`tol taxa resolve`: every record's 7 ranks, common name and provenance from the loaded
authorities, as set-based SQL over the distinct source taxa, fanned out to records in one join.

Owns `taxa_resolved` (core: one row per record), `taxa_source_resolved` (one row per source
taxon, with the JSON explanation), `taxa_conflicts`, `taxa_name_index` (a cache of every
authority name under its join key) and `kingdom_names` (kingdoms.csv).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import duckdb

from treeoflife.errors import TolError
from treeoflife.sources.loading import sql_str
from treeoflife.taxonomy.authority import ensure_authority_tables
from treeoflife.taxonomy.kingdoms import load_kingdom_names
from treeoflife.taxonomy.names import clean_values_sql, install_name_macros, parse_sql
from treeoflife.workspace import RANKS, Workspace

log = logging.getLogger(__name__)

# TaxonoPy's default order (GBIF backbone, then Catalogue of Life); iNat taxa last.
DEFAULT_AUTHORITY_ORDER = ("gbif", "col", "inat")
HIGHER = RANKS[:-1]  # kingdom .. genus: the ranks a homonym is told apart by
RANK_BIT = {rank: 1 << (5 - i) for i, rank in enumerate(HIGHER)}  # kingdom 32 .. genus 1
# Fallback levels when the record's own name is unknown: (level, rank matched).
FALLBACK_LEVELS = ((1, "genus"), (2, "family"), (3, "order"), (4, "class"), (5, "phylum"),
                   (6, "kingdom"))  # fmt: skip
STATUSES = ("resolved", "partial", "ambiguous", "unresolved")
STEPS = (
    "prepare", "authority index", "normalise", "exact + synonym", "fuzzy", "higher rank",
    "homonyms", "assemble", "conflicts", "fan out",
)  # fmt: skip

_CORE_EXTRA_COLUMNS = (("source", "VARCHAR"), ("taxon_key", "VARCHAR"), ("flags", "VARCHAR[]"))


@dataclass(frozen=True)
class ResolveOptions:
    """`[stages.taxa]` options of a pipeline file (all optional).

    authority_order: authorities to try, first wins (default gbif, col, inat);
    prefer: per-source override, e.g. `prefer = {inat21 = ["inat", "gbif"]}` (only those);
    fuzzy_max_distance: edit distance allowed for a misspelt word (0 turns fuzzy off);
    vernacular_language: ISO 639-1 code of the common names to take from authorities;
    per_record: "view" (default: `taxa_resolved` is a view joining `record_images` to
    `taxa_source_resolved`, like the `records` view, so each taxon's answer is stored once,
    not once per image) or "table" (one materialised row per record: 10M rows to write).
    """

    authority_order: tuple[str, ...] = DEFAULT_AUTHORITY_ORDER
    prefer: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fuzzy_max_distance: int = 2
    vernacular_language: str = "en"
    per_record: str = "view"

    @classmethod
    def from_stage(cls, stage: Mapping | None) -> ResolveOptions:
        """Read the options from a pipeline's `[stages.taxa]` table, with defaults."""
        stage = dict(stage or {})
        where = "pipeline [stages.taxa]"

        def names(value, key: str) -> tuple[str, ...]:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TolError(f"{where}: {key} must be a list of authority names, got {value!r}")
            return tuple(v.lower() for v in value)

        order = names(
            stage.get("authority_order", list(DEFAULT_AUTHORITY_ORDER)), "authority_order"
        )
        prefer_raw = stage.get("prefer", {})
        if not isinstance(prefer_raw, Mapping):
            raise TolError(f"{where}: prefer must be a table of source = [authorities]")
        prefer = {src: names(v, f"prefer.{src}") for src, v in prefer_raw.items()}
        distance = stage.get("fuzzy_max_distance", 2)
        if not isinstance(distance, int) or not 0 <= distance <= 3:
            raise TolError(f"{where}: fuzzy_max_distance must be an integer 0-3, got {distance!r}")
        language = stage.get("vernacular_language", "en")
        if not isinstance(language, str) or len(language) != 2:
            raise TolError(f"{where}: vernacular_language must be an ISO 639-1 code like 'en'")
        per_record = stage.get("per_record", "view")
        if per_record not in ("table", "view"):
            raise TolError(f"{where}: per_record must be 'table' or 'view', got {per_record!r}")
        return cls(order, prefer, distance, language.lower(), per_record)

    def order_for(self, source: str, loaded: list[str]) -> list[str]:
        """The authorities tried for `source`, best first, among those loaded."""
        if source in self.prefer:
            return [a for a in self.prefer[source] if a in loaded]
        rest = sorted(a for a in loaded if a not in self.authority_order)
        return [a for a in self.authority_order if a in loaded] + rest


@dataclass
class ResolveStats:
    """What one resolve produced, counted in records (images) unless named taxa."""

    records: int
    taxa: int
    authorities: list[str]
    by_status: dict[str, int]
    by_method: dict[str, int]
    by_source: dict[str, dict[str, int]]
    conflicts: int
    seconds: float
    steps: dict[str, float]

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for a console: the share resolved and what is left."""
        total = max(self.records, 1)
        parts = [
            f"{self.by_status.get(s, 0):,} {s} ({100 * self.by_status.get(s, 0) / total:.1f}%)"
            for s in STATUSES
        ]
        return (
            f"taxa: {self.records:,} records ({self.taxa:,} source taxa) against "
            f"{', '.join(self.authorities) or 'no authority'}: {', '.join(parts)}; "
            f"{self.conflicts:,} rank conflicts; {self.seconds:.1f} s"
        )


# SQL ----------------------------------------------------------------------------------------
def _q(rank: str) -> str:
    return f'"{rank}"'


# Bumped when the index's columns change: an index of another layout is rebuilt.
INDEX_LAYOUT = 2
_INDEX_STATE_SQL = """
CREATE TABLE IF NOT EXISTS taxa_name_index_state (
    authority VARCHAR, version VARCHAR, taxa BIGINT, synonyms BIGINT, layout INTEGER
)
"""

_FINGERPRINT_SQL = f"""
SELECT authority, any_value(version), count(*), count(*) FILTER (WHERE status = 'synonym'),
       {INDEX_LAYOUT}
FROM authority_taxa GROUP BY authority ORDER BY authority
"""

# Synonyms whose accepted usage is itself a synonym (chains); followed a hop at a time below.
_CHAIN_SQL = """
CREATE OR REPLACE TEMP TABLE _synonym_chain AS
SELECT s.authority, s.taxon_id, t.accepted_id AS target_id
FROM authority_taxa s
JOIN authority_taxa t ON t.authority = s.authority AND t.taxon_id = s.accepted_id
WHERE s.status = 'synonym' AND t.status = 'synonym' AND t.accepted_id IS NOT NULL
"""
_CHAIN_HOP_SQL = """
UPDATE _synonym_chain SET target_id = t.accepted_id
FROM authority_taxa t
WHERE t.authority = _synonym_chain.authority AND t.taxon_id = _synonym_chain.target_id
  AND t.status = 'synonym' AND t.accepted_id IS NOT NULL
  AND t.accepted_id <> _synonym_chain.taxon_id
"""
# Only what the rules join on, plus the accepted usage's id: writing 3M rows is the index's
# whole cost, so the accepted taxon's name, rank and lineage are looked up in authority_taxa
# for the (few hundred thousand) candidates instead (_LINEAGE_COLUMNS).
_INDEX_SQL = """
CREATE OR REPLACE TABLE taxa_name_index AS
WITH usable AS (
    SELECT authority, taxon_id, accepted_id, status, rank, canonical_name AS name,
           tol_name_key(canonical_name) AS key
    FROM authority_taxa
    WHERE status IN ('accepted', 'doubtful', 'synonym') AND canonical_name IS NOT NULL
), targets AS (
    SELECT u.authority, u.key, u.taxon_id, u.status, u.rank, u.name, u.taxon_id AS target_id
    FROM usable u WHERE u.status <> 'synonym'
    UNION ALL
    SELECT u.authority, u.key, u.taxon_id, u.status, u.rank, u.name, t.taxon_id
    FROM usable u
    LEFT JOIN _synonym_chain c ON c.authority = u.authority AND c.taxon_id = u.taxon_id
    JOIN authority_taxa t ON t.authority = u.authority
                         AND t.taxon_id = coalesce(c.target_id, u.accepted_id)
                         AND t.status <> 'synonym'
    WHERE u.status = 'synonym'
)
SELECT authority, key, length(key) - length(replace(key, ' ', '')) + 1 AS words,
       split_part(key, ' ', 1) AS genus_key, split_part(key, ' ', 2) AS epithet_key,
       taxon_id, status, rank, name, target_id
FROM targets
"""

_SOURCE_COLUMNS = {
    "clean_name": "scientific_name", "source_common": "common_name",
    "source_rank": "taxon_rank", "raw_species": "species",
    **{f"raw_{r}": _q(r) for r in HIGHER},
}  # fmt: skip
_CLEAN_SOURCE = clean_values_sql(
    "distinct_taxa", _SOURCE_COLUMNS, fix_case=tuple(f"raw_{r}" for r in HIGHER)
)
_UNINOMIAL_RANK = " ".join(
    f"WHEN n_genus_key = strip_accents(lower({'s_kingdom' if r == 'kingdom' else 'raw_' + r})) "
    f"THEN '{r}'"
    for r in reversed(HIGHER)
)
_FILLED = ", ".join(
    f"coalesce(raw_{r}, CASE WHEN q_rank IN {('genus', 'species') if r == 'genus' else (r, r)} "
    "THEN n_genus END) AS s_" + r
    for r in HIGHER[1:]
)
# `source_taxa` normally has one row per (source, taxon_key); if not, the first by name wins.
_DEDUPED_SOURCE_TAXA = """(
    SELECT DISTINCT ON (source, taxon_key) * FROM source_taxa
    ORDER BY source, taxon_key, scientific_name NULLS LAST, source_taxon_id
)"""
# Parsed columns no later step reads: not written to _taxa_query (450K rows, ~30 columns).
_QUERY_UNUSED = ("clean_name", "source_rank", "n_clean", "n_plain", "n_kind", "n_binomial",
                 "n_species_key")  # fmt: skip
_QUERY_SQL = f"""
CREATE OR REPLACE TEMP TABLE _taxa_query AS
WITH distinct_taxa AS (
    SELECT * FROM {{source_taxa}}
), src AS (
    SELECT source, taxon_key, clean_name, source_common, lower(source_rank) AS source_rank,
           {", ".join(f"raw_{r}" for r in HIGHER)}, raw_species
    FROM ({_CLEAN_SOURCE})
), named AS (
    SELECT s.* EXCLUDE (raw_kingdom),
           CASE WHEN k.name IS NOT NULL THEN k.kingdom ELSE s.raw_kingdom END AS s_kingdom,
           coalesce(clean_name, raw_species, raw_genus, raw_family, raw_order, raw_class,
                    raw_phylum) AS query_name
    FROM src s LEFT JOIN kingdom_names k ON k.name = lower(s.raw_kingdom)
), parsed AS ({parse_sql("named", "query_name")}
), ranked AS (
    SELECT *,
           CASE WHEN n_kind = 'species' THEN 'species'
                WHEN n_kind IS NULL THEN NULL
                WHEN n_epithet IS NOT NULL OR n_qualifier IS NOT NULL OR n_interim
                     OR n_hybrid_formula THEN 'genus'
                {_UNINOMIAL_RANK}
                ELSE source_rank END AS q_rank,
           CASE n_kind WHEN 'species' THEN n_species_key WHEN 'uninomial' THEN n_genus_key END
               AS q_key
    FROM parsed
)
SELECT * EXCLUDE (raw_phylum, raw_class, raw_order, raw_family, raw_genus, raw_species,
                  {", ".join(_QUERY_UNUSED)}),
       {_FILLED},
       CASE WHEN n_kind = 'species' THEN n_binomial END AS s_species
FROM ranked
"""

_PREFS_SCHEMA = "CREATE OR REPLACE TEMP TABLE _prefs (source VARCHAR, authority VARCHAR, pref INT)"

# The rules collect candidates as (taxon, usage, accepted id) in _cand_keys; the accepted
# taxon's name, rank and 7 ranks are added when they are scored (_LINEAGE_COLUMNS).
_CAND_COLUMNS = (
    "source, taxon_key, level, distance, pref, authority, taxon_id, status, rank, name, target_id"
)
_X_COLUMNS = "x.authority, x.taxon_id, x.status, x.rank, x.name, x.target_id"
_EXACT_SQL = f"""
CREATE OR REPLACE TEMP TABLE _cand_keys AS
SELECT q.source, q.taxon_key, 0 AS level, 0 AS distance, p.pref, {_X_COLUMNS}
FROM _taxa_query q
JOIN _prefs p ON p.source = q.source
JOIN taxa_name_index x ON x.authority = p.authority AND x.key = q.q_key
WHERE CASE WHEN q.q_rank = 'species' THEN x.words = 2
           ELSE x.words = 1 AND (q.q_rank IS NULL OR x.rank = q.q_rank) END
"""

# A misspelt epithet within a known genus, or a misspelt genus with a known epithet (blocked
# on the genus' first two letters); short words are never fuzzed.
_FUZZY_SQL = f"""
INSERT INTO _cand_keys ({_CAND_COLUMNS})
WITH missing AS (
    SELECT q.source, q.taxon_key, q.n_genus_key, q.n_epithet_key, p.authority, p.pref
    FROM _taxa_query q JOIN _prefs p ON p.source = q.source
    WHERE q.q_rank = 'species'
      AND NOT EXISTS (SELECT 1 FROM _cand_keys c
                      WHERE c.source = q.source AND c.taxon_key = q.taxon_key)
), pairs AS (
    SELECT m.source, m.taxon_key, m.pref, m.n_epithet_key AS word, x.epithet_key AS other,
           {_X_COLUMNS}
    FROM missing m JOIN taxa_name_index x
      ON x.authority = m.authority AND x.words = 2 AND x.genus_key = m.n_genus_key
    WHERE x.epithet_key <> m.n_epithet_key
      AND abs(length(x.epithet_key) - length(m.n_epithet_key)) <= {{max_distance}}
    UNION ALL
    SELECT m.source, m.taxon_key, m.pref, m.n_genus_key, x.genus_key, {_X_COLUMNS}
    FROM missing m JOIN taxa_name_index x
      ON x.authority = m.authority AND x.words = 2 AND x.epithet_key = m.n_epithet_key
     AND left(x.genus_key, 2) = left(m.n_genus_key, 2)
    WHERE x.genus_key <> m.n_genus_key
      AND abs(length(x.genus_key) - length(m.n_genus_key)) <= {{max_distance}}
), scored AS (
    SELECT *, damerau_levenshtein(word, other) AS distance,
           CASE WHEN length(word) <= 4 THEN 0 WHEN length(word) <= 7 THEN 1
                ELSE {{max_distance}} END AS allowed
    FROM pairs
)
SELECT source, taxon_key, 0, distance, pref, authority, taxon_id, status, rank, name, target_id
FROM scored
WHERE distance <= least(allowed, {{max_distance}})
QUALIFY rank() OVER (PARTITION BY source, taxon_key ORDER BY distance) = 1
"""

_FALLBACK_KEYS = " UNION ALL ".join(
    f"SELECT source, taxon_key, {level} AS level, '{rank}' AS rank, "
    + (
        "coalesce(CASE WHEN q_rank IN ('species', 'genus') THEN n_genus END, s_genus)"
        if rank == "genus"
        else f"s_{rank}"
    )
    + " AS value FROM missing"
    for level, rank in FALLBACK_LEVELS
)
_HIGHER_SQL = f"""
INSERT INTO _cand_keys ({_CAND_COLUMNS})
WITH missing AS (
    SELECT * FROM _taxa_query q
    WHERE NOT EXISTS (SELECT 1 FROM _cand_keys c
                      WHERE c.source = q.source AND c.taxon_key = q.taxon_key)
), wanted AS (
    SELECT source, taxon_key, level, rank, strip_accents(lower(value)) AS key
    FROM ({_FALLBACK_KEYS}) WHERE value IS NOT NULL
)
SELECT w.source, w.taxon_key, w.level, 0, p.pref, {_X_COLUMNS}
FROM wanted w
JOIN _prefs p ON p.source = w.source
JOIN taxa_name_index x ON x.authority = p.authority AND x.key = w.key AND x.words = 1
                      AND x.rank = w.rank
"""

# The accepted taxon's name, rank and 7 ranks (kingdom harmonised) of a candidate `b`.
_LINEAGE_COLUMNS = (
    "t.canonical_name AS target_name, t.rank AS target_rank, "
    "CASE WHEN k.name IS NOT NULL THEN k.kingdom ELSE t.kingdom END AS kingdom, "
    + ", ".join(f"t.{_q(r)}" for r in RANKS[1:])
)
_LINEAGE_JOIN = """
JOIN authority_taxa t ON t.authority = b.authority AND t.taxon_id = b.target_id
LEFT JOIN kingdom_names k ON k.name = lower(t.kingdom)
"""


def _bits(op: str) -> str:
    return " + ".join(
        f"CASE WHEN q.s_{r} IS NOT NULL AND b.{_q(r)} IS NOT NULL "
        f"AND lower(q.s_{r}) {op} lower(b.{_q(r)}) THEN {RANK_BIT[r]} ELSE 0 END"
        for r in HIGHER
    )


# Most taxa have one candidate: only those with several go through the window functions.
# Only the best (level, authority) candidates get their lineage (a join with authority_taxa),
# and the scored candidates stay a CTE of the _choice query: no temp table is written.
_SCORED_CTES = f"""
several AS (
    SELECT source, taxon_key FROM _cand_keys GROUP BY source, taxon_key HAVING count(*) > 1
), best_keys AS (
    SELECT c.*, false AS several FROM _cand_keys c
    WHERE NOT EXISTS (SELECT 1 FROM several m
                      WHERE m.source = c.source AND m.taxon_key = c.taxon_key)
    UNION ALL
    (SELECT c.*, true FROM _cand_keys c
     WHERE EXISTS (SELECT 1 FROM several m
                   WHERE m.source = c.source AND m.taxon_key = c.taxon_key)
     QUALIFY dense_rank() OVER (PARTITION BY c.source, c.taxon_key
                                ORDER BY c.level, c.pref) = 1)
), best AS (
    SELECT b.*, {_LINEAGE_COLUMNS} FROM best_keys b {_LINEAGE_JOIN}
), marked AS MATERIALIZED (
    SELECT b.*, ({_bits("=")}) AS agree, ({_bits("<>")}) AS disagree,
           CASE b.status WHEN 'accepted' THEN 0 WHEN 'doubtful' THEN 1 ELSE 2 END AS prio,
           concat_ws('|', {", ".join(f"coalesce(b.{_q(r)}, '')" for r in HIGHER[:-1])})
               AS lineage
    FROM best b JOIN _taxa_query q ON q.source = b.source AND q.taxon_key = b.taxon_key
), scored AS MATERIALIZED (
    SELECT * EXCLUDE (several), bit_count(agree) - bit_count(disagree) AS score, 1::BIGINT AS rn
    FROM marked WHERE NOT several
    UNION ALL
    SELECT * EXCLUDE (several), bit_count(agree) - bit_count(disagree) AS score,
           row_number() OVER (PARTITION BY source, taxon_key
                              ORDER BY bit_count(agree) - bit_count(disagree) DESC, prio,
                                       distance, target_id, taxon_id) AS rn
    FROM marked WHERE several
)"""

_CANDIDATE_STRUCT = (
    "struct_pack(authority := {a}.authority, taxon_id := {a}.target_id, "
    "name := {a}.target_name, rank := {a}.target_rank, matched := {a}.name, "
    "status := {a}.status, kingdom := {a}.kingdom, family := {a}.family, score := {a}.score)"
)
_DECISIVE = " ".join(f"WHEN (d & {bit}) > 0 THEN '{r}'" for r, bit in RANK_BIT.items())
_CHOICE_SQL = f"""
CREATE OR REPLACE TEMP TABLE _choice AS
WITH {_SCORED_CTES}, winner AS (SELECT * FROM scored WHERE rn = 1),
rivals AS (
    SELECT s.source, s.taxon_key, count(*) AS rivals, max(s.score) AS rival_score,
           arg_min(s.agree, s.rn) AS rival_agree, arg_min(s.disagree, s.rn) AS rival_disagree,
           list({_CANDIDATE_STRUCT.format(a="s")} ORDER BY s.rn) AS rival_list
    FROM scored s JOIN winner w ON w.source = s.source AND w.taxon_key = s.taxon_key
    WHERE s.rn > 1 AND s.lineage <> w.lineage
    GROUP BY s.source, s.taxon_key
), joined AS (
    SELECT w.*, coalesce(r.rivals, 0) AS rivals, r.rival_score,
           (w.agree & ~coalesce(r.rival_agree, 0)) | (coalesce(r.rival_disagree, 0) & ~w.disagree)
               AS d,
           CASE WHEN r.rivals > 0
                THEN list_prepend({_CANDIDATE_STRUCT.format(a="w")}, r.rival_list) END
               AS candidates
    FROM winner w
    LEFT JOIN rivals r ON r.source = w.source AND r.taxon_key = w.taxon_key
)
SELECT * EXCLUDE (d),
       rivals > 0 AND rival_score >= score AS tied,
       (disagree & 48) > 0 AND (agree & 62) = 0 AS contradicts,
       CASE {_DECISIVE} ELSE 'conflicts' END AS decisive_rank
FROM joined
"""

_VERNACULAR_SQL = """
CREATE OR REPLACE TEMP TABLE _vernacular AS
SELECT v.authority, v.taxon_id,
       first(v.name ORDER BY CASE WHEN v.preferred THEN 0 WHEN v.preferred IS NULL THEN 1
                                  ELSE 2 END, lower(v.name), v.name) AS name
FROM authority_vernaculars v
WHERE v.language = {language}
  AND EXISTS (SELECT 1 FROM _choice c
              WHERE c.authority = v.authority AND c.target_id = v.taxon_id)
GROUP BY v.authority, v.taxon_id
"""


def _final_rank(rank: str) -> str:
    """The rank's value: the authority's down to the matched level, the source's below it."""
    index = RANKS.index(rank)
    matched = (
        "CASE d.level "
        + " ".join(f"WHEN {level} THEN {RANKS.index(r)}" for level, r in FALLBACK_LEVELS)
        + f" ELSE {len(RANKS) - 1} END"
    )
    source, authority = f"d.s_{rank}", f"d.a_{rank}"
    if rank != "kingdom":
        authority = f"CASE WHEN {index} <= {matched} THEN {authority} ELSE {source} END"
    return f"CASE WHEN d.use_authority THEN {authority} ELSE {source} END AS {_q(rank)}"


def _conflict_bits(alias: str) -> str:
    return " + ".join(
        f"CASE WHEN {alias}.use_authority AND {alias}.s_{r} IS NOT NULL "
        f"AND {alias}.{_q(r)} IS NOT NULL AND lower({alias}.s_{r}) <> lower({alias}.{_q(r)}) "
        f"THEN {1 << (6 - i)} ELSE 0 END"
        for i, r in enumerate(RANKS)
    )


_FLAGS = (
    "CASE WHEN regexp_matches(lineage_bits, '10+1') THEN 'lineage-hole' END",
    "CASE WHEN n_hybrid THEN 'hybrid' END",
    "CASE WHEN n_hybrid_formula THEN 'hybrid-formula' END",
    "CASE WHEN n_qualifier IS NOT NULL THEN 'qualifier' END",
    "CASE WHEN n_interim THEN 'interim-name' END",
    "CASE WHEN n_infra_epithet IS NOT NULL THEN 'infraspecific' END",
    "CASE WHEN n_cultivar IS NOT NULL THEN 'cultivar' END",
    "CASE WHEN rivals > 0 THEN 'homonym' END",
    "CASE WHEN conflict_bits > 0 THEN 'conflict' END",
    "CASE WHEN level > 0 AND use_authority THEN 'below-match-from-source' END",
    "CASE WHEN NOT matched AND query_name IS NOT NULL THEN 'not-in-authority' END",
)
_ALL_RANKS = ", ".join(_q(r) for r in RANKS)
_RESOLVED_SQL = f"""
CREATE OR REPLACE TABLE taxa_source_resolved AS
WITH decided AS (
    SELECT q.*, c.* EXCLUDE (source, taxon_key, {_ALL_RANKS}),
           {", ".join(f"c.{_q(r)} AS a_{r}" for r in RANKS)},
           c.taxon_key IS NOT NULL AS matched,
           CASE WHEN c.taxon_key IS NULL THEN 'unresolved'
                WHEN c.contradicts OR c.tied THEN 'ambiguous'
                WHEN c.level > 0 OR q.n_interim OR q.n_hybrid_formula
                     OR q.n_qualifier IN ('cf.', 'aff.', 'nr.') THEN 'partial'
                ELSE 'resolved' END AS resolution,
           coalesce(NOT c.contradicts AND NOT c.tied, false) AS use_authority
    FROM _taxa_query q
    LEFT JOIN _choice c ON c.source = q.source AND c.taxon_key = q.taxon_key
), ranked AS (
    SELECT d.*, {", ".join(_final_rank(r) for r in RANKS)}
    FROM decided d
), flagged AS (
    SELECT r.*, ({_conflict_bits("r")}) AS conflict_bits,
           {" || ".join(f"CASE WHEN r.{_q(rank)} IS NULL THEN '0' ELSE '1' END" for rank in RANKS)}
               AS lineage_bits,
           v.name AS vernacular
    FROM ranked r
    LEFT JOIN _vernacular v ON r.use_authority AND r.level = 0 AND v.authority = r.authority
                           AND v.taxon_id = r.target_id
)
SELECT source, taxon_key, query_name, {_ALL_RANKS},
       coalesce(source_common, vernacular, "species",
                nullif(concat_ws(' ', {_ALL_RANKS}), ''), query_name, 'unknown') AS common,
       CASE WHEN source_common IS NOT NULL THEN 'source'
            WHEN vernacular IS NOT NULL THEN 'vernacular:' || authority
            WHEN "species" IS NOT NULL THEN 'scientific'
            WHEN coalesce({_ALL_RANKS}) IS NOT NULL THEN 'taxonomic'
            WHEN query_name IS NOT NULL THEN 'name'
            ELSE 'unknown' END AS common_origin,
       CASE WHEN NOT matched
            THEN CASE WHEN query_name IS NULL AND s_kingdom IS NULL THEN 'none'
                      ELSE 'source-only' END
            WHEN contradicts THEN 'rank-conflict'
            WHEN tied THEN 'homonym'
            WHEN rivals > 0 THEN 'homonym-by-' || decisive_rank
            WHEN level > 0 THEN 'higher-rank'
            WHEN distance > 0 THEN 'fuzzy'
            WHEN status = 'synonym' THEN 'synonym'
            ELSE 'exact' END AS method,
       CASE WHEN use_authority THEN authority END AS authority,
       CASE WHEN use_authority THEN target_id END AS authority_taxon_id,
       resolution AS status,
       list_filter([{", ".join(_FLAGS)}], lambda f: f IS NOT NULL) AS flags,
       conflict_bits,
       -- A plain exact match is explained by its columns; JSON for 450K rows costs seconds.
       CASE WHEN matched AND level = 0 AND distance = 0 AND status <> 'synonym' AND rivals = 0
                 AND NOT tied AND NOT contradicts AND conflict_bits = 0 AND NOT n_hybrid
                 AND n_qualifier IS NULL AND n_infra_epithet IS NULL AND n_cultivar IS NULL
                 AND NOT n_interim THEN NULL
       ELSE json_object(
           'query', query_name,
           'parsed', json_object('genus', n_genus, 'subgenus', n_subgenus, 'epithet', n_epithet,
                                 'qualifier', n_qualifier, 'infraspecific_rank', n_infra_rank,
                                 'infraspecific_epithet', n_infra_epithet,
                                 'authorship', n_authorship, 'cultivar', n_cultivar,
                                 'hybrid', n_hybrid, 'hybrid_formula', n_hybrid_formula,
                                 'interim', n_interim),
           'match', CASE WHEN matched THEN json_object(
               'authority', authority, 'taxon_id', taxon_id, 'name', name, 'rank', rank,
               'status', status, 'accepted_id', target_id, 'accepted_name', target_name,
               'level', level, 'edit_distance', distance) END,
           'candidates', to_json(candidates),
           'source_ranks', json_object({", ".join(f"'{r}', s_{r}" for r in RANKS)})
       ) END AS details
FROM flagged
"""

_CONFLICT_VALUES = ", ".join(
    f"('{rank}', c.s_{rank}, c.{_q(rank)}, {1 << (6 - i)})" for i, rank in enumerate(RANKS)
)
# Record counts only for the (few) conflicting taxa: a semi-join, not a 10M-row group-by.
_CONFLICTS_SQL = f"""
CREATE OR REPLACE TABLE taxa_conflicts AS
WITH conflicting AS (
    SELECT r.source, r.taxon_key, r.method, r.authority, r.authority_taxon_id, r.conflict_bits,
           {", ".join(f"r.{_q(rank)}" for rank in RANKS)},
           {", ".join(f"q.s_{rank}" for rank in RANKS)}
    FROM taxa_source_resolved r
    JOIN _taxa_query q ON q.source = r.source AND q.taxon_key = r.taxon_key
    WHERE r.conflict_bits > 0
), counts AS (
    SELECT i.source, i.taxon_key, count(*) AS records
    FROM record_images i
    WHERE EXISTS (SELECT 1 FROM conflicting c
                  WHERE c.source = i.source AND c.taxon_key = i.taxon_key)
    GROUP BY i.source, i.taxon_key
)
SELECT c.source, c.taxon_key, coalesce(n.records, 0) AS records, x.rank, x.source_value,
       x.authority_value, c.authority, c.authority_taxon_id,
       CASE WHEN x.rank NOT IN ('genus', 'species') THEN 'classification'
            WHEN c.method = 'synonym' THEN 'synonym'
            WHEN c.method = 'fuzzy' THEN 'spelling'
            ELSE 'classification' END AS kind
FROM conflicting c
LEFT JOIN counts n ON n.source = c.source AND n.taxon_key = c.taxon_key
CROSS JOIN LATERAL (
    SELECT * FROM (VALUES {_CONFLICT_VALUES}) v(rank, source_value, authority_value, bit)
) x
WHERE c.conflict_bits & x.bit > 0
ORDER BY c.source, c.taxon_key, list_position({list(RANKS)!r}, x.rank)
"""

_FAN_OUT_COLUMNS = (
    f"record_id, {', '.join(_q(r) for r in RANKS)}, common, method, authority, "
    "authority_taxon_id, status, source, taxon_key, flags"
)
_FAN_OUT_SELECT = f"""
SELECT i.record_id, {", ".join(f"t.{_q(r)}" for r in RANKS)},
       coalesce(t.common, 'unknown') AS common, coalesce(t.method, 'none') AS method,
       t.authority, t.authority_taxon_id, coalesce(t.status, 'unresolved') AS status,
       i.source, i.taxon_key, coalesce(t.flags, ['no-source-taxon']) AS flags
FROM record_images i
LEFT JOIN taxa_source_resolved t ON t.source = i.source AND t.taxon_key = i.taxon_key
"""
# The core table's columns (workspace.py) plus this stage's; others' added columns are kept.
_CORE_SPEC = (
    ("record_id", "VARCHAR NOT NULL"), *((r, "VARCHAR") for r in RANKS), ("common", "VARCHAR"),
    ("method", "VARCHAR"), ("authority", "VARCHAR"), ("authority_taxon_id", "VARCHAR"),
    ("status", "VARCHAR"), *_CORE_EXTRA_COLUMNS,
)  # fmt: skip


_TABLE_STATS_SQL = "SELECT source, status, method, count(*) FROM taxa_resolved GROUP BY ALL"
# The same counts for the view: records counted per source taxon first, so the 10M-row join
# and its strings are skipped (twice as fast).
_VIEW_STATS_SQL = """
WITH n AS (SELECT source, taxon_key, count(*) AS records FROM record_images GROUP BY ALL)
SELECT n.source, coalesce(t.status, 'unresolved'), coalesce(t.method, 'none'),
       sum(n.records)::BIGINT
FROM n LEFT JOIN taxa_source_resolved t ON t.source = n.source AND t.taxon_key = n.taxon_key
GROUP BY ALL
"""


# the stage ----------------------------------------------------------------------------------
_TEMP_TABLES = ("_taxa_query", "_cand_keys", "_choice", "_vernacular", "_prefs")
StepCallback = Callable[[str, int, int], None]


def _core_kind(con: duckdb.DuckDBPyConnection) -> str | None:
    """'BASE TABLE' or 'VIEW': what `taxa_resolved` is now (None if missing)."""
    rows = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = 'taxa_resolved' "
        "AND table_schema = 'main' AND table_catalog = current_database()"
    ).fetchall()
    return rows[0][0] if rows else None


def _loaded_authorities(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT DISTINCT authority FROM authority_taxa ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def _fill_prefs(con: duckdb.DuckDBPyConnection, options: ResolveOptions, loaded: list[str]):
    con.execute(_PREFS_SCHEMA)
    sources = [r[0] for r in con.execute("SELECT DISTINCT source FROM source_taxa").fetchall()]
    rows = [
        (source, authority, position)
        for source in sources
        for position, authority in enumerate(options.order_for(source, loaded))
    ]
    if rows:
        con.executemany("INSERT INTO _prefs VALUES (?, ?, ?)", rows)
    used = sorted({authority for _, authority, _ in rows})
    return used


def build_name_index(con: duckdb.DuckDBPyConnection, *, force: bool = False) -> bool:
    """(Re)build `taxa_name_index` when the authorities (or the index layout) changed since
    the last build; returns whether it rebuilt. Synonym chains (A -> B -> C) are followed to
    their accepted end, at most 10 hops; a cycle or a dangling id leaves the name out."""
    state_columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'taxa_name_index_state' "
            "AND schema_name = 'main' AND database_name = current_database() ORDER BY column_index"
        ).fetchall()
    ]
    if state_columns and state_columns[-1] != "layout":  # written by an older release
        con.execute("DROP TABLE taxa_name_index_state")
    con.execute(_INDEX_STATE_SQL)
    state = con.execute("SELECT * FROM taxa_name_index_state ORDER BY authority").fetchall()
    fingerprint = con.execute(_FINGERPRINT_SQL).fetchall()
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'taxa_name_index' "
        "AND NOT temporary"
    ).fetchall()[0][0]
    if exists and not force and [tuple(r) for r in state] == [tuple(r) for r in fingerprint]:
        return False
    con.execute(_CHAIN_SQL)
    for _ in range(10):
        changed = con.execute(_CHAIN_HOP_SQL).fetchall()[0][0]
        if not changed:
            break
    con.execute(_INDEX_SQL)
    con.execute("DELETE FROM taxa_name_index_state")
    if fingerprint:
        con.executemany("INSERT INTO taxa_name_index_state VALUES (?, ?, ?, ?, ?)", fingerprint)
    con.execute("DROP TABLE IF EXISTS _synonym_chain")
    return True


class _StepClock:
    """Times the named steps in order and reports each start to `on_step`."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._since = self.started

    def __call__(self, name: str) -> None:
        self.stop()
        self._current, self._since = name, time.perf_counter()
        if self.on_step:
            self.on_step(name, STEPS.index(name), len(STEPS))

    def stop(self) -> float:
        now = time.perf_counter()
        if self._current is not None:
            self.seconds[self._current] = round(now - self._since, 3)
            self._current = None
        return now - self.started


def _write_core_table(con: duckdb.DuckDBPyConnection, per_record: str) -> None:
    """Replace `taxa_resolved`: a table recreated and filled by one join (a DROP is instant
    where a DELETE of 10M rows is not), or, with per_record = "view", a view of that join."""
    kind = _core_kind(con)
    known = {name for name, _ in _CORE_SPEC}
    extra = []
    if kind == "BASE TABLE":
        extra = [
            (name, data_type)
            for name, data_type in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'taxa_resolved' AND table_schema = 'main' "
                "AND table_catalog = current_database() ORDER BY ordinal_position"
            ).fetchall()
            if name not in known
        ]
        con.execute("DROP TABLE taxa_resolved")
    elif kind == "VIEW":
        con.execute("DROP VIEW taxa_resolved")
    if per_record == "view":
        con.execute(f"CREATE VIEW taxa_resolved AS {_FAN_OUT_SELECT}")
        return
    spec = ", ".join(f'"{name}" {data_type}' for name, data_type in (*_CORE_SPEC, *extra))
    con.execute(f"CREATE TABLE taxa_resolved ({spec})")
    con.execute(f"INSERT INTO taxa_resolved ({_FAN_OUT_COLUMNS}) {_FAN_OUT_SELECT}")


def resolve_taxa(
    con: duckdb.DuckDBPyConnection,
    options: ResolveOptions | None = None,
    on_step: StepCallback | None = None,
) -> ResolveStats:
    """Fill `taxa_resolved` (one row per record in `record_images`), `taxa_source_resolved`
    and `taxa_conflicts` from the loaded authorities, replacing earlier results in one
    transaction. `on_step(name, index, total)` is called before each step."""
    options = options or ResolveOptions()
    step = _StepClock(on_step)
    step("prepare")
    install_name_macros(con)
    ensure_authority_tables(con)
    # No per-segment compression analysis (duckdb 2 has no plain dictionary method and
    # stores these uncompressed): writing 10M rows of a dozen string columns is the costliest
    # step, and the analysis (which picks dict_fsst) doubles it.
    compression = con.execute("SELECT current_setting('force_compression')").fetchall()[0][0]
    con.execute("SET force_compression = 'dictionary'")
    try:
        step("authority index")
        # A cache of the authorities alone, so it is committed on its own: the resolve below
        # then does not carry 3M uncommitted rows in its transaction.
        con.begin()
        try:
            build_name_index(con)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        step("normalise")
        con.begin()
        try:
            used = _resolve_in_transaction(con, options, step)
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.execute(f"SET force_compression = {sql_str(compression or 'auto')}")
    seconds = step.stop()
    stats = resolve_stats(con, used, seconds=seconds, steps=step.seconds)
    log.info("resolved taxa: %s", stats.summary())
    return stats


def _resolve_in_transaction(
    con: duckdb.DuckDBPyConnection, options: ResolveOptions, step: _StepClock
) -> list[str]:
    """The steps from normalise to fan out, in the caller's transaction; returns the
    authorities used."""
    load_kingdom_names(con)
    loaded = _loaded_authorities(con)
    unknown = sorted({a for order in options.prefer.values() for a in order if a not in loaded})
    if unknown:
        log.warning("authorities named in the options but not loaded: %s", unknown)
    used = _fill_prefs(con, options, loaded)
    (duplicated,) = con.execute(
        "SELECT count(*) - count(DISTINCT (source, taxon_key)) FROM source_taxa"
    ).fetchall()[0]
    source_taxa = _DEDUPED_SOURCE_TAXA if duplicated else "source_taxa"
    con.execute(_QUERY_SQL.replace("{source_taxa}", source_taxa))
    step("exact + synonym")
    con.execute(_EXACT_SQL)
    step("fuzzy")
    if options.fuzzy_max_distance > 0:
        con.execute(_FUZZY_SQL.replace("{max_distance}", str(options.fuzzy_max_distance)))
    step("higher rank")
    con.execute(_HIGHER_SQL)
    step("homonyms")
    con.execute(_CHOICE_SQL)
    step("assemble")
    con.execute(_VERNACULAR_SQL.format(language=sql_str(options.vernacular_language)))
    con.execute(_RESOLVED_SQL)
    step("conflicts")
    con.execute(_CONFLICTS_SQL)
    step("fan out")
    # The fan out reads only record_images and taxa_source_resolved: free the rest first.
    for table in _TEMP_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    _write_core_table(con, options.per_record)
    return used


def resolve_workspace(
    workspace: Workspace, stage_options: Mapping | None = None, on_step: StepCallback | None = None
) -> ResolveStats:
    """`resolve_taxa` on a workspace, with a pipeline's `[stages.taxa]` table as options
    (what `tol demo` and `tol run` call)."""
    options = ResolveOptions.from_stage(stage_options)
    with workspace.connect() as con:
        return resolve_taxa(con, options, on_step)


def resolve_stats(
    con: duckdb.DuckDBPyConnection,
    authorities: list[str] | None = None,
    *,
    seconds: float = 0.0,
    steps: dict[str, float] | None = None,
) -> ResolveStats:
    """Counts over the current `taxa_resolved` (records) and `taxa_source_resolved` (taxa)."""
    query = _VIEW_STATS_SQL if _core_kind(con) == "VIEW" else _TABLE_STATS_SQL
    rows = con.execute(query).fetchall()
    by_status: dict[str, int] = {}
    by_method: dict[str, int] = {}
    by_source: dict[str, dict[str, int]] = {}
    for source, status, method, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        by_method[method] = by_method.get(method, 0) + count
        per_source = by_source.setdefault(source, {})
        per_source[status] = per_source.get(status, 0) + count
    taxa = con.execute("SELECT count(*) FROM taxa_source_resolved").fetchall()[0][0]
    conflicts = con.execute("SELECT count(*) FROM taxa_conflicts").fetchall()[0][0]
    if authorities is None:
        authorities = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT authority FROM taxa_source_resolved "
                "WHERE authority IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
    return ResolveStats(
        records=sum(by_status.values()),
        taxa=taxa,
        authorities=authorities,
        by_status=dict(sorted(by_status.items())),
        by_method=dict(sorted(by_method.items(), key=lambda kv: -kv[1])),
        by_source={k: dict(sorted(v.items())) for k, v in sorted(by_source.items())},
        conflicts=conflicts,
        seconds=round(seconds, 3),
        steps=steps or {},
    )


def explain(con: duckdb.DuckDBPyConnection, record_id: str) -> dict:
    """A record's resolution with its JSON explanation (what `tol taxa explain` prints)."""
    cursor = con.execute(
        "SELECT r.*, t.query_name, t.common_origin, t.details FROM taxa_resolved r "
        "LEFT JOIN taxa_source_resolved t ON t.source = r.source AND t.taxon_key = r.taxon_key "
        "WHERE r.record_id = ?",
        [record_id],
    )
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    if not rows:
        raise TolError(f"no record {record_id!r} in taxa_resolved; run `tol taxa resolve` first")
    found = dict(zip(columns, rows[0], strict=True))
    found["details"] = json.loads(found["details"]) if found["details"] else None
    return found
