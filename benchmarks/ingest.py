"""Ingest benchmark: `tol pull inat-open-data` against bare DuckDB and pandas on the same dumps.

Generates iNaturalist-open-data-shaped TSV dumps (cached per row count), runs each contender
in its own child process (so peak RSS is per contender) and prints and saves a table.

    .venv/bin/python benchmarks/ingest.py [--rows 5000000 20000000] [--data-dir DIR]
                                          [--threads N] [--repeat 3]

On a shared machine one run's times swing by ±20%: `--repeat` runs all contenders in
rounds and reports medians plus tol's ratio in every round.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"
SOURCE_VERSION = "bench"
ROLES = ("photos", "observations", "taxa", "observers")
BASELINE = "bare-duckdb (all 4 files)"
PHOTOS_ONLY = "bare-duckdb (photos)"

COLUMNS = {
    "photos": (
        "photo_uuid photo_id observation_uuid observer_id extension license width height position"
    ),
    "observations": (
        "observation_uuid observer_id latitude longitude positional_accuracy taxon_id "
        "quality_grade observed_on anomaly_score"
    ),
    "taxa": "taxon_id ancestry rank_level rank name active",
    "observers": "observer_id login name",
}
OBSERVER_COUNT = 200_000
# (rank, rank_level, how many, first taxon_id); the root 48460 "Life" sits above kingdoms.
TAXON_LEVELS = (
    ("kingdom", 70, 6, 1),
    ("phylum", 60, 60, 101),
    ("class", 50, 300, 1001),
    ("order", 40, 1_500, 2001),
    ("family", 30, 6_000, 4001),
    ("genus", 20, 20_000, 50_001),
    ("species", 10, 72_000, 100_001),
)
KINGDOMS = "['Animalia', 'Plantae', 'Fungi', 'Chromista', 'Protozoa', 'Bacteria']"
SUFFIXES = {"phylum": "phyta", "class": "opsida", "order": "ales", "family": "idae"}
SYLLABLES = (
    "['ca', 'lo', 'phi', 'ra', 'mus', 'te', 'ni', 'dor', 'ae', 'lis', 'ur', 'pe', 'xo', "
    "'an', 'the', 'gy', 'ro', 'bu', 'sti', 'mel']"
)
TSV_OPTIONS = "DELIMITER '\t', HEADER, QUOTE '', ESCAPE ''"
# Lines with too few columns, so the reader's reject path (quarantine) runs.
MALFORMED_PHOTOS = 5
MALFORMED_OBSERVERS = 2


# --- data generation ------------------------------------------------------------------------


def observation_count(photo_rows: int) -> int:
    """About 1.4 photos per observation, like the real dump."""
    return (photo_rows * 5 + 6) // 7


def _uuid_sql(h: str) -> str:
    """A UUID-looking string from the 32 hex digits of column `h` (an md5, computed once)."""
    return (
        f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-4' || substr({h}, 14, 3) || '-a' "
        f"|| substr({h}, 18, 3) || '-' || substr({h}, 21, 12)"
    )


def _tsv_line(columns: str, expressions: list[str], short_when: str | None = None) -> str:
    """One VARCHAR column holding the whole TSV line, named after the header line.

    Writing lines (not columns) lets a few rows (`short_when`) have too few columns; the
    column name is the header because DuckDB writes names as they are when QUOTE is ''.
    """
    values = [f"coalesce(({e})::VARCHAR, '')" for e in expressions]
    line = f"concat_ws(chr(9), {', '.join(values)})"
    if short_when:
        short = f"concat_ws(chr(9), {values[0]}, {values[1]})"
        line = f"CASE WHEN {short_when} THEN {short} ELSE {line} END"
    header = columns.replace(" ", "\t")
    return f'{line} AS "{header}"'


def _uniform(row: str, stream: str) -> str:
    """SQL: a deterministic number in [0, 1) for `row`, independent per `stream`."""
    return f"(hash({row}, '{stream}') % 1000000 / 1000000.0)"


def _weighted(row: str, stream: str, choices: list[tuple[int, str]]) -> str:
    """SQL: pick a value by percentage weights, e.g. [(88, "'jpg'"), (10, "'jpeg'"), ...]."""
    percent, cases, total = f"hash({row}, '{stream}') % 100", [], 0
    for weight, value in choices[:-1]:
        total += weight
        cases.append(f"WHEN {percent} < {total} THEN {value}")
    return f"CASE {' '.join(cases)} ELSE {choices[-1][1]} END"


def _nullable(row: str, stream: str, percent_null: int, value: str) -> str:
    return f"CASE WHEN hash({row}, '{stream}') % 100 < {percent_null} THEN NULL ELSE {value} END"


def _taxa_select(con: duckdb.DuckDBPyConnection) -> str:
    """Build the taxon tree level by level (each ancestry extends its parent's); one SELECT."""
    parent_rank, parent_count = None, 1
    for rank, level, count, first_id in TAXON_LEVELS:
        if rank == "kingdom":
            name = f"list_element({KINGDOMS}, i + 1)"
        elif rank == "genus":
            name = "cap(word(i))"
        elif rank == "species":
            name = "p.name || ' ' || word(i * 7 + 3)"
        else:
            name = f"cap(word(i + {first_id})) || '{SUFFIXES[rank]}'"
        if parent_rank is None:
            parent_join, ancestry = "", "'48460'"
        else:
            parent_join = f"JOIN _tree_{parent_rank} p ON p.idx = i * {parent_count} // {count}"
            ancestry = "p.ancestry || '/' || p.taxon_id"
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _tree_{rank} AS
            SELECT i AS idx, {first_id} + i AS taxon_id, {ancestry} AS ancestry,
                   {level} AS rank_level, '{rank}' AS rank, {name} AS name,
                   CASE WHEN i % 97 = 50 THEN 'false' ELSE 'true' END AS active
            FROM range({count}) t(i) {parent_join}
            """
        )
        parent_rank, parent_count = rank, count
    columns = "taxon_id, ancestry, rank_level, rank, name, active"
    union = " UNION ALL ".join(f"SELECT {columns} FROM _tree_{rank}" for rank, *_ in TAXON_LEVELS)
    life = (
        "SELECT 48460 AS taxon_id, NULL AS ancestry, 100 AS rank_level, "
        "'stateofmatter' AS rank, 'Life' AS name, 'true' AS active"
    )
    line = _tsv_line(COLUMNS["taxa"], columns.split(", "))
    return f"SELECT {line} FROM ({life} UNION ALL {union})"


def _observers_select() -> str:
    name = (
        "CASE WHEN i % 5 < 2 THEN NULL "
        "WHEN i % 1000 = 7 THEN 'Jack \"JJ\" ' || cap(word(i)) "
        "ELSE cap(word(i + 11)) || ' ' || cap(word(i)) END"
    )
    malformed = f"i IN (1234, {OBSERVER_COUNT - 99})"
    line = _tsv_line(COLUMNS["observers"], ["i + 1", "word(i) || (i % 1000)", name], malformed)
    return f"SELECT {line} FROM range({OBSERVER_COUNT}) t(i)"


def _observations_select(photo_rows: int) -> str:
    """Taxa: 90% species (skewed to a few popular ones), 8% genus, 2% family; all exist."""
    levels = {rank: (count, first_id) for rank, _, count, first_id in TAXON_LEVELS}
    (species, first_species), (genera, first_genus), (families, first_family) = (
        levels["species"],
        levels["genus"],
        levels["family"],
    )
    pick = _uniform("i", "pick")
    taxon = (
        f"CASE WHEN {pick} < 0.90 "
        f"THEN {first_species} + floor({species} * pow({_uniform('i', 's')}, 3))::BIGINT "
        f"WHEN {pick} < 0.98 THEN {first_genus} + hash(i, 'g') % {genera} "
        f"ELSE {first_family} + hash(i, 'f') % {families} END"
    )
    quality = _weighted("i", "q", [(65, "'research'"), (25, "'needs_id'"), (10, "'casual'")])
    no_place = f"{_uniform('i', 'm')} < 0.02"
    expressions = [
        _uuid_sql("ho"),
        f"hash(i) % {OBSERVER_COUNT} + 1",
        f"CASE WHEN {no_place} THEN NULL ELSE round({_uniform('i', 'lat')} * 170 - 85, 7) END",
        f"CASE WHEN {no_place} THEN NULL ELSE round({_uniform('i', 'lon')} * 360 - 180, 7) END",
        _nullable("i", "a", 30, "hash(i, 'acc') % 5000"),
        taxon,
        quality,
        _nullable("i", "d", 1, "DATE '2008-01-01' + (hash(i, 'day') % 6200)::INTEGER"),
        _nullable("i", "z", 10, f"round({_uniform('i', 'score')} ** 4, 6)"),
    ]
    line = _tsv_line(COLUMNS["observations"], expressions)
    rows = f"SELECT i, md5('o' || i) AS ho FROM range({observation_count(photo_rows)}) t(i)"
    return f"SELECT {line} FROM ({rows})"


def _photos_select(photo_rows: int) -> str:
    """Photo j belongs to observation j * M // N, so every observation has 1 or 2 photos."""
    n, m = photo_rows, observation_count(photo_rows)
    numbered = f"SELECT j, j * {m} // {n} AS o FROM range({n}) t(j)"
    licence = _weighted(
        "j",
        "l",
        [
            (60, "'CC-BY-NC'"),
            (12, "'CC-BY'"),
            (8, "'CC0'"),
            (8, "'CC-BY-NC-SA'"),
            (6, "'CC-BY-NC-ND'"),
            (4, "'CC-BY-SA'"),
            (2, "'CC-BY-ND'"),
        ],
    )
    extension = _weighted("j", "e", [(88, "'jpg'"), (10, "'jpeg'"), (2, "'png'")])
    size = "(hash(j, 'w') % 4 + 1)::BIGINT"
    expressions = [
        _uuid_sql("hp"),
        # about 0.1% of rows repeat the previous row's photo_id
        "10000000 + j - CASE WHEN j > 0 AND hash(j, 'dup') % 1000 = 0 THEN 1 ELSE 0 END",
        _uuid_sql("ho"),
        f"hash(o) % {OBSERVER_COUNT} + 1",
        extension,
        licence,
        f"[2048, 1536, 1024, 2048][{size}]",
        f"[1536, 2048, 768, 1365][{size}]",
        f"j - (o * {n} + {m - 1}) // {m}",
    ]
    malformed = f"j % {n // MALFORMED_PHOTOS} = {n // (2 * MALFORMED_PHOTOS)}"
    line = _tsv_line(COLUMNS["photos"], expressions, malformed)
    rows = f"SELECT j, o, md5('p' || j) AS hp, md5('o' || o) AS ho FROM ({numbered})"
    return f"SELECT {line} FROM ({rows})"


def generate_dumps(data_dir: Path, photo_rows: int) -> tuple[dict[str, Path], dict[str, int]]:
    """The four gzip TSVs for `photo_rows` photos, generated once and cached in `data_dir`.

    Returns the paths by role and the data lines per role (malformed ones included).
    """
    folder = data_dir / f"inat-{photo_rows}"
    done = folder / "lines.json"
    paths = {role: folder / f"{role}.csv.gz" for role in ROLES}
    if done.exists() and all(p.exists() for p in paths.values()):
        return paths, json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"CREATE OR REPLACE MACRO latin(n) AS list_element({SYLLABLES}, n % 20 + 1)")
    # a pseudo-Latin word per n < 160000, scrambled (7919 is prime to 160000) and unique
    con.execute(
        "CREATE OR REPLACE MACRO word(n) AS latin(n * 7919 % 160000) "
        "|| latin(n * 7919 % 160000 // 20) || latin(n * 7919 % 160000 // 400) "
        "|| latin(n * 7919 % 160000 // 8000)"
    )
    con.execute("CREATE OR REPLACE MACRO cap(s) AS upper(s[1]) || s[2:]")
    selects = {
        "taxa": _taxa_select(con),
        "observers": _observers_select(),
        "observations": _observations_select(photo_rows),
        "photos": _photos_select(photo_rows),
    }
    lines = {
        "taxa": 1 + sum(count for _, _, count, _ in TAXON_LEVELS),
        "observers": OBSERVER_COUNT,
        "observations": observation_count(photo_rows),
        "photos": photo_rows,
    }
    plain = {role: folder / f"{role}.tsv.part" for role in ROLES}
    for role, select in selects.items():
        con.execute(f"COPY ({select}) TO '{plain[role]}' ({TSV_OPTIONS})")
    con.close()
    # DuckDB's own gzip writer is single-threaded and slow; zlib level 1 in two threads is not
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(lambda role: _gzip(plain[role], paths[role]), ROLES))
    for role in ROLES:
        print(f"  generated {paths[role].name}: {lines[role]:,} lines, {_mb(paths[role]):,.0f} MB")
    done.write_text(json.dumps(lines))
    print(f"  generation took {time.perf_counter() - started:.1f} s")
    return paths, lines


def _gzip(plain: Path, dest: Path) -> None:
    """Compress `plain` to `dest` (via dest.part), then delete `plain`."""
    part = dest.with_name(dest.name + ".part")
    with open(plain, "rb") as source, open(part, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0) as out:
            shutil.copyfileobj(source, out, 1 << 20)
    os.replace(part, dest)
    plain.unlink()


# --- contenders (each runs in a child process) ----------------------------------------------


def bare_duckdb(paths: dict[str, Path], work_dir: Path, threads: int | None) -> dict:
    """CREATE TABLE AS read_csv per file into a fresh database file, closed inside the timing."""
    db_path = work_dir / "bare.duckdb"
    started = time.perf_counter()
    con = duckdb.connect(str(db_path))
    if threads:
        con.execute(f"SET threads = {threads}")
    counts = {}
    for role, path in paths.items():
        # ignore_errors: the malformed lines would otherwise abort the whole read.
        con.execute(
            f"CREATE TABLE {role} AS SELECT * FROM read_csv('{path}', delim='\t', header=true, "
            "quote='', escape='', ignore_errors=true)"
        )
        counts[role] = con.execute(f"SELECT count(*) FROM {role}").fetchone()[0]
    con.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "table_rows": counts, "db_mb": _mb(db_path)}


def tol_pull(paths: dict[str, Path], work_dir: Path, threads: int | None) -> dict:
    """The real `tol pull` code path on a fresh workspace whose downloads are already there."""
    if threads:
        _default_duckdb_threads(threads)
    from treeoflife.http import HttpClient, file_digest
    from treeoflife.manifest import load_manifest
    from treeoflife.pull import download_dir, pull_source
    from treeoflife.workspace import Workspace

    workspace = Workspace(work_dir / "workspace").init()
    manifest_path = work_dir / "inat-open-data-bench.toml"
    manifest_path.write_text(_manifest_toml(paths))
    manifest = load_manifest(manifest_path)
    downloads = download_dir(workspace, manifest)
    downloads.mkdir(parents=True, exist_ok=True)
    for path in paths.values():
        _link_or_copy(path, downloads / path.name)
    steps = _record_pull_steps()
    started = time.perf_counter()
    result = pull_source(workspace, manifest, HttpClient())
    seconds = time.perf_counter() - started
    digest_started = time.perf_counter()
    for path in paths.values():
        file_digest(path, "sha256")
    sha256_s = time.perf_counter() - digest_started
    with workspace.connect(read_only=True) as con:
        records = con.execute("SELECT count(*) FROM records").fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        reasons = con.execute(
            "SELECT file, regexp_replace(reason, '[0-9]+', 'N', 'g') AS kind, count(*) "
            "FROM quarantine GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    return {
        "seconds": seconds,
        "records": records,
        "quarantined": quarantined,
        "pull_result": [result.records, result.quarantined],
        "quarantine_reasons": [list(row) for row in reasons],
        "sha256_s": sha256_s,
        "db_mb": _mb(workspace.catalog_path),
        "steps_s": steps,
    }


def _record_pull_steps() -> dict[str, float]:
    """Collect the step timings `tol pull` logs (INFO, `pull_step`), in order, into a dict."""
    steps: dict[str, float] = {}

    class StepTimes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            step = getattr(record, "pull_step", None)
            if step is not None:
                steps[step] = steps.get(step, 0.0) + record.seconds

    logger = logging.getLogger("treeoflife")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(StepTimes(logging.DEBUG))
    return steps


def pandas_read(paths: dict[str, Path], work_dir: Path, threads: int | None) -> dict:
    """pandas.read_csv of each file into memory, all frames kept alive (what a script does)."""
    started = time.perf_counter()
    frames = {role: pandas.read_csv(path, sep="\t", quoting=3) for role, path in paths.items()}
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "table_rows": {role: len(frame) for role, frame in frames.items()},
        "frame_mb": sum(f.memory_usage(deep=True).sum() for f in frames.values()) / 2**20,
    }


CONTENDERS = {
    PHOTOS_ONLY: (bare_duckdb, ("photos",)),
    BASELINE: (bare_duckdb, ROLES),
    "tol pull": (tol_pull, ROLES),
    "pandas (photos)": (pandas_read, ("photos",)),
    "pandas (all 4 files)": (pandas_read, ROLES),
}


def _default_duckdb_threads(threads: int) -> None:
    """Make every duckdb.connect in this (child) process start with `threads` threads."""
    connect = duckdb.connect

    def connect_with_threads(*args, **kwargs):
        config = dict(kwargs.pop("config", None) or {})
        config.setdefault("threads", threads)
        return connect(*args, config=config, **kwargs)

    duckdb.connect = connect_with_threads


def _manifest_toml(paths: dict[str, Path]) -> str:
    """A manifest whose files are already downloaded: no checksums, so none is fetched."""
    lines = [
        "[source]",
        'name = "inat-open-data"',
        f'version = "{SOURCE_VERSION}"',
        'title = "iNaturalist open data (benchmark dumps)"',
        'base_url = "http://127.0.0.1:9/"',
        "",
        "[options]",
        'photo_size = "medium"',
    ]
    for role, path in paths.items():
        lines += ["", f"[files.{role}]", f'path = "{path.name}"']
    return "\n".join(lines) + "\n"


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def _peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_main(spec_json: str) -> None:
    """Run one contender and print its result (with its own peak RSS) as the last line."""
    spec = json.loads(spec_json)
    run, roles = CONTENDERS[spec["name"]]
    paths = {role: Path(spec["paths"][role]) for role in roles}
    result = run(paths, Path(spec["work_dir"]), spec["threads"])
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result, default=float))


# --- the parent: run children, print and save the table -------------------------------------


def run_child(name: str, paths: dict[str, Path], work_dir: Path, threads: int | None) -> dict:
    """One contender in a fresh interpreter; adds wall time and wait4's ru_maxrss."""
    work_dir.mkdir(parents=True)
    spec = {
        "name": name,
        "paths": {role: str(p) for role, p in paths.items()},
        "work_dir": str(work_dir),
        "threads": threads,
    }
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )
    output = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    shutil.rmtree(work_dir, ignore_errors=True)
    if child.returncode != 0:
        raise SystemExit(f"{name}: child exited with {child.returncode}; see its traceback above")
    result = json.loads(output.strip().splitlines()[-1])
    result["child_wall_s"] = wall_s
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    return result


def _warm_page_cache(paths: dict[str, Path]) -> None:
    """Read every file once so no contender pays for a cold disk the others do not."""
    for path in paths.values():
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def benchmark(photo_rows: int, data_dir: Path, threads: int | None, repeat: int = 1) -> dict:
    """Run every contender `repeat` times, in rounds (so a slow spell of the shared machine
    hits all of them), and keep each one's median run; `rounds_s` keeps every round's time."""
    print(f"\n== {photo_rows:,} photo rows ==")
    paths, lines = generate_dumps(data_dir, photo_rows)
    _warm_page_cache(paths)
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for round_index in range(repeat):
        for name, (_, roles) in CONTENDERS.items():
            print(f"  round {round_index + 1}/{repeat}: running {name} ...", flush=True)
            result = run_child(name, paths, data_dir / f"run-{photo_rows}", threads)
            result["rows"] = sum(lines[role] for role in roles)
            runs[name].append(result)
    results = {}
    for name, name_runs in runs.items():
        ordered = sorted(name_runs, key=lambda r: r["seconds"])
        result = dict(ordered[(len(ordered) - 1) // 2])  # the median (the lower of two)
        result["rows_per_s"] = result["rows"] / result["seconds"]
        result["rounds_s"] = [r["seconds"] for r in name_runs]
        result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in name_runs)
        results[name] = result
    base = results[BASELINE]
    for result in results.values():
        result["time_vs_baseline"] = result["seconds"] / base["seconds"]
        result["memory_vs_baseline"] = result["peak_rss_mb"] / base["peak_rss_mb"]
        result["time_vs_baseline_per_round"] = [
            s / b for s, b in zip(result["rounds_s"], base["rounds_s"], strict=True)
        ]
    return {
        "photo_rows": photo_rows,
        "repeat": repeat,
        "lines": lines,
        "file_mb": {role: _mb(path) for role, path in paths.items()},
        "environment": environment(threads),
        "baseline": BASELINE,
        "contenders": results,
    }


def _code_version() -> str:
    """The checkout's commit, `+dirty` if treeoflife/ has uncommitted changes (results vary)."""
    git = ["git", "-C", str(BENCH_DIR.parent)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "treeoflife"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def environment(threads: int | None) -> dict:
    return {
        "treeoflife": _code_version(),
        "duckdb": duckdb.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "threads": threads or "duckdb default",
        "machine": platform.platform(),
    }


def format_table(report: dict) -> str:
    env, results = report["environment"], report["contenders"]
    files = ", ".join(f"{role} {n:,}" for role, n in report["lines"].items())
    sizes = ", ".join(f"{role} {mb:,.0f}" for role, mb in report["file_mb"].items())
    lines = [
        f"rows={report['photo_rows']:,} | lines: {files} | gz MB: {sizes}",
        f"treeoflife {env['treeoflife']} | duckdb {env['duckdb']} | pandas {env['pandas']} | "
        f"python {env['python']} | "
        f"cpus {env['cpu_count']} (usable {env['usable_cpus']}) | threads {env['threads']}",
        f"{'contender':<26} {'rows':>12} {'seconds':>8} {'rows/s':>11} {'peak RSS MB':>11} "
        f"{'x time':>7} {'x mem':>6}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<26} {r['rows']:>12,} {r['seconds']:>8.1f} {r['rows_per_s']:>11,.0f} "
            f"{r['peak_rss_mb']:>11,.0f} {r['time_vs_baseline']:>7.2f} "
            f"{r['memory_vs_baseline']:>6.2f}"
        )
    photos_s = results[PHOTOS_ONLY]["seconds"]
    pull = results["tol pull"]
    if report.get("repeat", 1) > 1:
        lines.append(
            f"medians of {report['repeat']} rounds; tol pull x time per round: "
            + ", ".join(f"{x:.2f}" for x in pull["time_vs_baseline_per_round"])
        )
    lines += [
        f"ratios (x time, x mem) are against '{BASELINE}'; vs '{PHOTOS_ONLY}' time: "
        + ", ".join(
            f"{name} {r['seconds'] / photos_s:.2f}"
            for name, r in results.items()
            if name != PHOTOS_ONLY
        ),
        f"tol pull: {pull['records']:,} records, {pull['quarantined']:,} quarantined; "
        f"sha256 of the 4 files {pull['sha256_s']:.1f} s (inside its time); "
        f"catalog {pull['db_mb']:,.0f} MB vs bare all-4 db {results[BASELINE]['db_mb']:,.0f} MB",
    ]
    if pull.get("steps_s"):
        lines.append(
            "tol pull steps (s): "
            + ", ".join(f"{step} {s:.1f}" for step, s in pull["steps_s"].items())
        )
    lines += [
        f"  quarantine: {file}: {n:,} x {kind[:70]}" for file, kind, n in pull["quarantine_reasons"]
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000_000])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of all contenders; medians are reported"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tables = []
    for photo_rows in args.rows:
        report = benchmark(photo_rows, args.data_dir.resolve(), args.threads, args.repeat)
        result_path = RESULTS_DIR / f"ingest-{photo_rows}.json"
        result_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
        tables.append(format_table(report))
        print("\n" + tables[-1] + f"\n(saved {result_path})")
    if len(tables) > 1:
        print("\n\n".join(["\n== summary =="] + tables))


if __name__ == "__main__":
    main()
