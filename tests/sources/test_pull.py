"""`tol pull` on the bundled sample, over a real loopback HTTP server."""

from __future__ import annotations

import pytest

from treeoflife.workspace import RANKS

SOURCES = ("inat21", "inat-open-data", "bioscan-1m", "bioscan-5m", "eol")


@pytest.mark.parametrize("source", SOURCES)
def test_records_match_the_sample_ground_truth(pulled_workspace, sample_expected, source):
    expected = {r["source_id"]: r for r in sample_expected["records"][source]}
    assert sample_expected["sources"][source]["records"] == len(expected)
    with pulled_workspace.connect(read_only=True) as con:
        rows = con.execute(
            f"SELECT source_id, record_id, {', '.join(f'{chr(34)}{r}{chr(34)}' for r in RANKS)} "
            "FROM records WHERE source = ?",
            [source],
        ).fetchall()
    assert {row[0] for row in rows} == set(expected)
    assert len({row[1] for row in rows}) == len(rows), "record_id must be unique"
    synonyms = {
        (ref["source"], ref["source_id"]): syn["name"]
        for syn in sample_expected["synonyms"]
        for ref in syn["records"]
    }
    as_given = {v: k for k, v in sample_expected["sources"]["eol"]["kingdom_names"].items()}
    gaps = {g["taxon"]: g["rank"] for g in sample_expected["sources"]["eol"]["missing_ranks"]}
    fallback_pages = {p["page_id"] for p in sample_expected["sources"]["eol"]["fallback_pages"]}
    for source_id, record_id, *ranks in rows:
        assert record_id == f"{source}:{source_id}"
        truth = list(expected[source_id]["ranks"])
        if source.startswith("bioscan"):  # BIOSCAN gives no kingdom
            truth[0] = None
        if source == "bioscan-5m" and truth[6] is None and ranks[6]:
            assert any(ch.isdigit() for ch in ranks[6])  # a BIN placeholder ("malaise2719")
            truth[6] = ranks[6]
        if source == "eol" and expected[source_id].get("page_id") in fallback_pages:
            truth = [None] * 7  # no chain in taxon.tab: only a name from provider_ids
        elif source == "eol":  # the names EOL uses, and the ranks its hierarchy skips
            truth[0] = as_given.get(truth[0], truth[0])
            if truth[6] in gaps:
                truth[RANKS.index(gaps[truth[6]])] = None
        synonym = synonyms.get((source, source_id))
        if synonym:  # the source's own (outdated) name, resolved later by `tol taxa`
            truth[5:] = [synonym.split()[0], synonym]
        assert ranks == truth, (source, source_id)


@pytest.mark.parametrize("source", SOURCES)
def test_planted_bad_rows_are_quarantined_with_file_line_and_reason(
    pulled_workspace, sample_expected, source
):
    with pulled_workspace.connect(read_only=True) as con:
        quarantined = con.execute(
            "SELECT file, line, reason, raw FROM quarantine WHERE source = ?", [source]
        ).fetchall()
    for bad in sample_expected["sources"][source]["bad_rows"]:
        line = bad["line"]
        if line is None:  # JSON: a pointer like /annotations/72 -> 1-based index 73
            line = int(bad["pointer"].rsplit("/", 1)[1]) + 1
            array = bad["pointer"].split("/")[1]
            hits = [q for q in quarantined if q[1] == line and q[2].startswith(array)]
        else:
            hits = [q for q in quarantined if q[1] == line]
        hits = [q for q in hits if bad["file"] in q[0]]
        assert hits, f"{source}: planted bad row {bad} not in quarantine {quarantined}"
        assert all(q[2] and q[3] for q in hits), "reason and raw row must be kept"


def test_quarantined_rows_never_become_records(pulled_workspace):
    with pulled_workspace.connect(read_only=True) as con:
        dup = con.execute(
            "SELECT raw::JSON->>'photo_id' FROM quarantine WHERE reason LIKE 'duplicate photo_id%'"
        ).fetchall()
        assert len(dup) == 1
        count = con.execute(
            "SELECT count(*) FROM records WHERE source_id = ?", [dup[0][0]]
        ).fetchone()[0]
        assert count == 1  # the first row is kept once, the repeat is quarantined
        non_int = con.execute(
            "SELECT count(*) FROM records WHERE source = 'inat-open-data' "
            "AND TRY_CAST(source_id AS BIGINT) IS NULL"
        ).fetchone()[0]
        assert non_int == 0


def test_raw_tables_keep_every_source_column(pulled_workspace):
    with pulled_workspace.connect(read_only=True) as con:
        photo_columns = [
            r[0] for r in con.execute("DESCRIBE raw_inat_open_data__photos").fetchall()
        ]
        bioscan5m = [r[0] for r in con.execute("DESCRIBE raw_bioscan_5m__metadata").fetchall()]
        eol_rows = con.execute("SELECT count(*) FROM raw_eol__media_manifest").fetchone()[0]
    assert photo_columns[:9] == [
        "photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension",
        "license", "width", "height", "position",
    ]  # fmt: skip
    assert "coord-lat" in bioscan5m and "index_bioscan_1M_insect" in bioscan5m
    # both manifest files, the header-less second one included, minus the malformed line
    assert eol_rows == 50 + 41 - 1


def test_record_fields_per_source(pulled_workspace):
    with pulled_workspace.connect(read_only=True) as con:

        def one(sql: str):
            return con.execute(sql).fetchone()

        url, ext = one(
            "SELECT r.url, p.extension FROM records r JOIN raw_inat_open_data__photos p "
            "ON p.photo_id = r.source_id WHERE r.source = 'inat-open-data' "
            "AND p.extension = 'png' LIMIT 1"
        )
        assert url.startswith("https://inaturalist-open-data.s3.amazonaws.com/photos/")
        assert url.endswith("/medium.png")
        archive, member = one(
            "SELECT archive, member FROM records WHERE source = 'inat21' AND member LIKE 'val/%'"
        )
        assert archive == "val_images"
        archive, member = one(
            "SELECT archive, member FROM records WHERE source = 'bioscan-1m' LIMIT 1"
        )
        assert member.startswith("bioscan/images/cropped_256/part") and member.endswith(".jpg")
        members = con.execute("SELECT member FROM records WHERE source = 'bioscan-5m'").fetchall()
        assert any("/pretrain/" in m[0] and m[0].count("/") == 5 for m in members)
        assert any("/val/" in m[0] and m[0].count("/") == 4 for m in members)
        kingdoms = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT kingdom FROM records WHERE source = 'eol'"
            ).fetchall()
        }
        assert {"Metazoa", "Archaeplastida", "Fungi"} <= kingdoms  # as EOL gives them
        licenses = {r[0] for r in con.execute("SELECT DISTINCT license FROM records").fetchall()}
        assert "unknown" not in licenses and None not in licenses
        assert {"cc0-1.0", "cc-by-nc-sa-4.0", "pdm", "arr", "cc-by-3.0"} <= licenses
        missing_holder = one(
            "SELECT count(*) FROM records WHERE rights_holder IS NULL "
            "AND license NOT IN ('pdm', 'cc0-1.0', 'no-known-restrictions')"
        )[0]
        assert missing_holder == 0


def test_eol_fallback_names_and_common_names(pulled_workspace, sample_expected):
    fallback = sample_expected["sources"]["eol"]["fallback_pages"][0]
    with pulled_workspace.connect(read_only=True) as con:
        names = con.execute(
            "SELECT DISTINCT scientific_name FROM records WHERE source_taxon_id = ?",
            [fallback["page_id"]],
        ).fetchall()
        commons = con.execute(
            "SELECT count(*) FILTER (common_name IS NOT NULL), count(*) FROM records "
            "WHERE source = 'eol'"
        ).fetchone()
    assert names == [(fallback["name"],)]
    assert commons[0] > commons[1] // 2
