"""Taxonomy benchmark: `tol taxa resolve` end to end on a synthetic backbone and catalog,
against a bare DuckDB join of the records' normalised names to the backbone's, same run.

The backbone (GBIF-shaped `authority_taxa`: kingdoms to species, ~13% synonyms, some genus
homonyms across kingdoms, vernaculars) and the catalog (`source_taxa` + `record_rows`,
Zipf-like images per taxon; exact names, authorship strings, lower case, HTML, synonyms,
misspellings, genus-only and `sp.` names, homonym genera with and without family, unknown
names, Metazoa/Viridiplantae kingdoms) are generated in SQL into a fresh workspace.

    .venv/bin/python benchmarks/taxonomy.py [--names 3000000] [--records 10000000]
                                            [--taxa 450000] [--quick] [--keep DIR]
                                            [--reuse]

`--keep DIR --reuse` runs on a workspace an earlier `--keep DIR` generated (same sizes; its
resolve outputs and name index are dropped first, so the first run is still cold).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from treeoflife.taxonomy.authority import ensure_authority_tables
from treeoflife.workspace import Workspace

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "taxonomy.json"
SYLLABLES = (
    "['ca', 'lo', 'phi', 'ra', 'mus', 'te', 'ni', 'dor', 'ae', 'lis', 'ur', 'pe', 'xo', "
    "'ban', 'gu', 'si', 'mel', 'tor', 'ky', 'no']"
)


def word(n: str, syllables: int = 5) -> str:
    """SQL: a pronounceable word unique per integer `n` < 20**syllables."""
    parts = " || ".join(f"s[(({n}) // {20**i}) % 20 + 1]" for i in range(syllables))
    return f"(SELECT {parts} FROM (SELECT {SYLLABLES} AS s))"


def cap(expr: str) -> str:
    return f"upper(left({expr}, 1)) || substr({expr}, 2)"


def build_backbone(con: duckdb.DuckDBPyConnection, names: int) -> dict:
    """~`names` usages: higher ranks, genera, accepted species and synonyms."""
    genera = max(names // 15, 200)
    families = max(genera // 10, 50)
    synonyms = names // 8
    species = names - genera - families - synonyms - 1000
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _ranks AS
    SELECT f AS family_id, f % 6 AS kingdom_id, f % 90 AS phylum_id, f % 400 AS class_id,
           f % 2000 AS order_id
    FROM range({families}) t(f);
    CREATE OR REPLACE TEMP TABLE _genera AS
    SELECT g, g % {families} AS family_id,
           -- the last 1% reuse an earlier genus' name in another family (homonyms)
           CASE WHEN g >= {genera} - {genera // 100} THEN g - {genera // 2} + 7 ELSE g END
               AS name_id
    FROM range({genera}) t(g);
    """)
    kingdoms = "['Animalia', 'Plantae', 'Fungi', 'Chromista', 'Protozoa', 'Bacteria']"
    ranks_sql = f"""
        {kingdoms}[r.kingdom_id + 1] AS kingdom,
        {cap(word("r.phylum_id + 1000", 3))} || 'phyta' AS phylum,
        {cap(word("r.class_id + 2000", 3))} || 'opsida' AS class,
        {cap(word("r.order_id + 3000", 3))} || 'ales' AS "order",
        {cap(word("r.family_id + 4000", 4))} || 'idae' AS family
    """
    cols = (
        "authority, version, taxon_id, parent_id, accepted_id, status, status_raw, rank, "
        'scientific_name, canonical_name, authorship, kingdom, phylum, class, "order", family, '
        "genus, species"
    )
    con.execute(f"""
    INSERT INTO authority_taxa ({cols})
    SELECT 'gbif', 'bench', 'f' || family_id, NULL, NULL, 'accepted', 'accepted', 'family',
           family, family, NULL, kingdom, phylum, class, "order", family, NULL, NULL
    FROM (SELECT r.family_id, {ranks_sql} FROM _ranks r);
    CREATE OR REPLACE TEMP TABLE _genus_names AS
    SELECT g.g, g.family_id, {cap(word("g.name_id + 50000"))} AS genus, {ranks_sql}
    FROM _genera g JOIN _ranks r USING (family_id);
    INSERT INTO authority_taxa ({cols})
    SELECT 'gbif', 'bench', 'g' || g, 'f' || family_id, NULL, 'accepted', 'accepted', 'genus',
           genus || ' Author, 1900', genus, 'Author, 1900', kingdom, phylum, class, "order",
           family, genus, NULL
    FROM _genus_names;
    CREATE OR REPLACE TEMP TABLE _species AS
    SELECT i, i % {genera} AS g,
           {word(f"(i // {genera}) * 131 + (i % {genera}) % 131", 4)} AS epithet
    FROM range({species}) t(i);
    INSERT INTO authority_taxa ({cols})
    SELECT 'gbif', 'bench', 's' || s.i, 'g' || s.g, NULL, 'accepted', 'accepted', 'species',
           n.genus || ' ' || s.epithet || ' (Linnaeus, 1758)', n.genus || ' ' || s.epithet,
           '(Linnaeus, 1758)', n.kingdom, n.phylum, n.class, n."order", n.family, n.genus,
           n.genus || ' ' || s.epithet
    FROM _species s JOIN _genus_names n ON n.g = s.g;
    INSERT INTO authority_taxa ({cols})
    SELECT 'gbif', 'bench', 'y' || j, 'g' || s.g, 's' || s.i, 'synonym', 'synonym', 'species',
           o.genus || ' ' || s.epithet || 'us Smith, 1850', o.genus || ' ' || s.epithet || 'us',
           'Smith, 1850', n.kingdom, n.phylum, n.class, n."order", n.family, n.genus,
           n.genus || ' ' || s.epithet
    FROM range({synonyms}) t(j)
    JOIN _species s ON s.i = (j * 7) % {species}
    JOIN _genus_names n ON n.g = s.g
    JOIN _genus_names o ON o.g = (s.g + 1) % {genera};
    INSERT INTO authority_vernaculars
    SELECT 'gbif', 's' || i, 'Common ' || {word("i", 4)}, 'en', i % 3 = 0
    FROM range(0, {species}, 4) t(i);
    """)
    return con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'synonym') FROM authority_taxa"
    ).fetchall()[0]


def own(rank: str) -> str:
    """SQL: the rank of the taxon a source name belongs to (synonym, genus or species)."""
    return (
        f"(CASE WHEN kind BETWEEN 790 AND 829 THEN y.{rank} "
        f"WHEN kind BETWEEN 845 AND 914 THEN g.{rank} ELSE s.{rank} END)"
    )


def build_catalog(con: duckdb.DuckDBPyConnection, taxa: int, records: int) -> None:
    """`taxa` source taxa over 3 sources and `records` images, Zipf-like per taxon."""
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _pick AS
    SELECT t, hash(t * 2654435761) % 1000 AS kind, hash(t) AS h FROM range({taxa}) x(t);
    -- numbered in taxon_id order, so the same sizes always give the same catalog
    CREATE OR REPLACE TEMP TABLE _species_pool AS
    SELECT row_number() OVER (ORDER BY a.taxon_id) - 1 AS k, a.* FROM authority_taxa a
    WHERE a.rank = 'species' AND a.status = 'accepted' AND hash(a.taxon_id) % 3 = 0;
    CREATE OR REPLACE TEMP TABLE _syn_pool AS
    SELECT row_number() OVER (ORDER BY a.taxon_id) - 1 AS k, a.* FROM authority_taxa a
    WHERE a.status = 'synonym';
    CREATE OR REPLACE TEMP TABLE _genus_pool AS
    SELECT row_number() OVER (ORDER BY a.taxon_id) - 1 AS k, a.* FROM authority_taxa a
    WHERE a.rank = 'genus';
    """)
    n_sp, n_syn, n_gen = (
        con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in ("_species_pool", "_syn_pool", "_genus_pool")
    )
    source = "['inat21', 'inat-open-data', 'eol'][t % 3 + 1]"
    con.execute(f"""
    INSERT INTO source_taxa (source, taxon_key, source_taxon_id, scientific_name, common_name,
                             taxon_rank, kingdom, phylum, class, "order", family, genus, species)
    SELECT {source}, 't' || t, 't' || t,
        CASE
          WHEN kind < 600 THEN s.canonical_name
          WHEN kind < 750 THEN s.scientific_name                          -- with authorship
          WHEN kind < 770 THEN lower(s.canonical_name)
          WHEN kind < 790 THEN '<i>' || s.canonical_name || '</i>'
          WHEN kind < 830 THEN y.scientific_name                          -- a synonym
          WHEN kind < 845 THEN s.genus || ' ' || left(split_part(s.canonical_name, ' ', 2), 3)
                              || 'x' || substr(split_part(s.canonical_name, ' ', 2), 5)  -- typo
          WHEN kind < 885 THEN g.canonical_name                           -- genus only
          WHEN kind < 915 THEN g.canonical_name || ' sp.'
          WHEN kind < 960 THEN s.genus || ' ' || 'zq' || (h % 100000)     -- unknown species
          ELSE 'Nomen' || (h % 100000) || ' ignotum'                      -- unknown genus
        END,
        CASE WHEN t % 3 = 0 AND kind < 600 THEN 'Common name ' || t END,
        NULL,
        CASE WHEN t % 2 = 0 THEN CASE WHEN {own("kingdom")} = 'Animalia' AND t % 3 = 2
                                      THEN 'Metazoa'
                                      WHEN {own("kingdom")} = 'Plantae' AND t % 3 = 2
                                      THEN 'Viridiplantae' ELSE {own("kingdom")} END END,
        CASE WHEN t % 2 = 0 THEN {own("phylum")} END, NULL, NULL,
        CASE WHEN t % 4 < 3 THEN {own("family")} END, NULL, NULL
    FROM _pick p
    JOIN _species_pool s ON s.k = p.h % {n_sp}
    JOIN _syn_pool y ON y.k = p.h % {n_syn}
    JOIN _genus_pool g ON g.k = p.h % {n_gen}
    ;
    INSERT INTO record_rows (source, source_id, taxon_key)
    SELECT ['inat21', 'inat-open-data', 'eol'][t % 3 + 1], 'r' || i, 't' || t
    FROM (SELECT i, least({taxa} - 1, floor({taxa} * power((hash(i) % 1000003) / 1000003.0,
                                                           2.2)))::BIGINT AS t
          FROM range({records}) r(i));
    """)


def build_workspace(root: Path, names: int, taxa: int, records: int) -> dict:
    workspace = Workspace(root).init()
    started = time.perf_counter()
    with workspace.connect(memory_limit="4GB") as con:
        ensure_authority_tables(con)
        usages, synonyms = build_backbone(con, names)
        build_catalog(con, taxa, records)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM record_images), (SELECT count(*) FROM source_taxa)"
        ).fetchall()[0]
    return {
        "authority_usages": usages, "synonyms": synonyms, "records": counts[0],
        "source_taxa": counts[1], "generate_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def reuse_workspace(root: Path) -> dict:
    """The sizes of a kept workspace, with everything `tol taxa resolve` wrote dropped (the
    name index included) so the next resolve starts cold, as on freshly generated data."""
    workspace = Workspace(root)
    with workspace.connect() as con:
        kind = con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'taxa_resolved'"
        ).fetchall()
        if kind:  # back to the empty core table a fresh workspace has
            con.execute(f"DROP {'VIEW' if kind[0][0] == 'VIEW' else 'TABLE'} taxa_resolved")
        for table in ("taxa_name_index", "taxa_name_index_state", "taxa_source_resolved",
                      "taxa_conflicts"):  # fmt: skip
            con.execute(f"DROP TABLE IF EXISTS {table}")
        counts = con.execute(
            "SELECT (SELECT count(*) FROM authority_taxa), "
            "(SELECT count(*) FROM authority_taxa WHERE status = 'synonym'), "
            "(SELECT count(*) FROM record_images), (SELECT count(*) FROM source_taxa)"
        ).fetchall()[0]
        con.execute("CHECKPOINT")
    workspace.init()
    return {
        "authority_usages": counts[0], "synonyms": counts[1], "records": counts[2],
        "source_taxa": counts[3], "generate_s": None, "reused": True,
    }  # fmt: skip


def bare_join(root: Path) -> dict:
    """Baseline: every record's lower-cased name joined to the backbone's, nothing else.
    The record names are materialised first (untimed); the join writes its result."""
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute("SET memory_limit = '1GB'")
    con.execute(f"SET temp_directory = '{root / 'tmp'}'")
    con.execute("""
        CREATE OR REPLACE TABLE _bench_names AS
        SELECT i.source || ':' || i.source_id AS record_id, lower(t.scientific_name) AS key
        FROM record_images i JOIN source_taxa t USING (source, taxon_key);
        CREATE OR REPLACE TABLE _bench_backbone AS
        SELECT lower(canonical_name) AS key, taxon_id FROM authority_taxa;
    """)
    started = time.perf_counter()
    con.execute("""
        CREATE OR REPLACE TABLE _bench_joined AS
        SELECT n.record_id, b.taxon_id FROM _bench_names n
        LEFT JOIN _bench_backbone b ON b.key = n.key
    """)
    seconds = time.perf_counter() - started
    matched = con.execute("SELECT count(taxon_id) FROM _bench_joined").fetchall()[0][0]
    con.execute("DROP TABLE _bench_names; DROP TABLE _bench_backbone; DROP TABLE _bench_joined")
    con.close()
    return {"seconds": round(seconds, 2), "matched_rows": matched}


def run_resolve(root: Path, *extra: str) -> dict:
    """`tol taxa resolve --json` in a child process: wall time, peak RSS, its step timings."""
    tol = Path(sys.executable).with_name("tol")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(
        [str(tol), "taxa", "resolve", "-w", str(root), "--json", *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tol taxa resolve failed:\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    stats = json.loads(done.stdout)
    return {
        "seconds": round(seconds, 2), "peak_rss_mb": round(max(peak, before) / 1024),
        "stats": stats,
    }  # fmt: skip


def table(result: dict) -> str:
    bare = result["bare_join"]["seconds"]
    lines = ["| run | seconds | x bare join | peak RSS |", "|---|---|---|---|"]
    lines.append(f"| bare DuckDB join (10M-style names x backbone) | {bare:.1f} | 1.00x | - |")
    labels = {
        "cold": "cold name index",
        "warm": "warm name index",
        "table": "warm, per_record = table",
    }
    for key, label in labels.items():
        run = result[f"resolve_{key}"]
        lines.append(
            f"| `tol taxa resolve` ({label}) | {run['seconds']:.1f} | "
            f"{run['seconds'] / bare:.2f}x | {run['peak_rss_mb']:,} MB |"
        )
    lines += ["", "| step | cold | warm | table | share (cold) |", "|---|---|---|---|---|"]
    steps = {key: result[f"resolve_{key}"]["stats"]["steps"] for key in labels}
    total = sum(steps["cold"].values()) or 1
    lines += [
        f"| {name} | {seconds:.2f} | {steps['warm'].get(name, 0):.2f} | "
        f"{steps['table'].get(name, 0):.2f} | {100 * seconds / total:.0f}% |"
        for name, seconds in steps["cold"].items()
    ]
    by_status = result["resolve_cold"]["stats"]["by_status"]
    by_method = result["resolve_cold"]["stats"]["by_method"]
    lines += ["", f"statuses: {by_status}", f"methods: {by_method}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=3_000_000, help="backbone usages")
    parser.add_argument("--records", type=int, default=10_000_000, help="images")
    parser.add_argument("--taxa", type=int, default=450_000, help="distinct source taxa")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: reuse the workspace already there"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.names, args.records, args.taxa = 60_000, 200_000, 10_000
    root = args.keep or Path(tempfile.mkdtemp(prefix="tol-bench-taxa-")) / "ws"
    reuse = args.reuse and args.keep is not None and (root / "catalog.duckdb").exists()
    if root.exists() and not reuse:
        shutil.rmtree(root)
    try:
        if reuse:
            sizes = reuse_workspace(root)
            print(f"reusing {root}: {sizes}")
        else:
            print(f"generating {args.names:,} names, {args.taxa:,} taxa, {args.records:,} records")
            sizes = build_workspace(root, args.names, args.taxa, args.records)
            print(f"generated in {sizes['generate_s']} s: {sizes}")
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "duckdb": duckdb.__version__},
            "sizes": sizes,
            "bare_join": bare_join(root),
            "resolve_cold": run_resolve(root),  # the default: per_record = view
            "resolve_warm": run_resolve(root),
            "resolve_table": run_resolve(root, "--per-record", "table"),
        }  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(table(result))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
