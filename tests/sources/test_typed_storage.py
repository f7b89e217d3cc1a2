"""iNat open data is stored typed (`record_rows`) and read as text (`record_images`)."""

from __future__ import annotations

import dataclasses
import gzip
import shutil

from tests.conftest import fast_client
from treeoflife.loopback import LoopbackServer
from treeoflife.pull import pull_source
from treeoflife.sample import SAMPLE_FILES

INAT_HOST = "inaturalist-open-data.s3.amazonaws.com"
PHOTO_BASE = f"https://{INAT_HOST}/photos/"


def test_open_data_records_read_as_the_dump_gives_them(pulled_workspace):
    """Every text field of a stored-typed record equals the one built from the raw dump."""
    with pulled_workspace.connect(read_only=True) as con:
        typed, text_ids = con.execute(
            "SELECT count(source_num), count(source_id) FROM record_rows "
            "WHERE source = 'inat-open-data'"
        ).fetchone()
        assert typed > 0 and text_ids == 0
        mismatched = con.execute(
            f"""
            WITH expected AS (
                SELECT DISTINCT p.photo_id::VARCHAR AS source_id,
                       'inat-open-data:' || p.photo_id AS record_id,
                       o.observation_uuid::VARCHAR AS group_id,
                       '{PHOTO_BASE}' || p.photo_id || '/medium.' || p.extension AS url,
                       coalesce(nullif(nullif(trim(w.name), ''), 'None'), w.login)
                           AS rights_holder,
                       o.taxon_id::VARCHAR AS taxon_key
                FROM raw_inat_open_data__photos p
                JOIN raw_inat_open_data__observations o USING (observation_uuid)
                JOIN raw_inat_open_data__observers w ON w.observer_id = p.observer_id
            )
            SELECT r.source_id FROM records r
            LEFT JOIN expected e USING (source_id)
            WHERE r.source = 'inat-open-data'
              AND (e.source_id IS NULL OR r.record_id <> e.record_id
                   OR r.group_id <> e.group_id OR r.url <> e.url
                   OR r.rights_holder IS DISTINCT FROM e.rights_holder
                   OR r.taxon_key IS DISTINCT FROM e.taxon_key)
            """
        ).fetchall()
        records = con.execute(
            "SELECT count(*) FROM records WHERE source = 'inat-open-data'"
        ).fetchone()[0]
    # The photo attached to two observations matches one of them; every other must match.
    assert len(mismatched) <= 1 and records > 50, mismatched


def test_a_repeated_observer_id_is_quarantined_and_the_first_name_kept(
    tmp_path, fresh_workspace, sample_pipeline
):
    """A photo's rights holder comes from one observers row: a repeated id cannot double
    a record or change its holder."""
    root = tmp_path / "mirror"
    shutil.copytree(
        SAMPLE_FILES / INAT_HOST, root / INAT_HOST, ignore=shutil.ignore_patterns("photos")
    )
    observers = root / INAT_HOST / "observers.csv.gz"
    lines = gzip.decompress(observers.read_bytes()).decode().splitlines()
    observer_id, login, name = lines[6].split("\t")
    holder = name if name.strip() not in ("", "None") else login
    lines.append(f"{observer_id}\timpostor\tSomeone Else")
    observers.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    manifest = sample_pipeline.sources["inat-open-data"]
    unchecked = {
        role: dataclasses.replace(spec, checksums=(), size=None)
        for role, spec in manifest.files.items()
    }
    manifest = dataclasses.replace(manifest, files=unchecked)
    with LoopbackServer(root) as server:
        result = pull_source(fresh_workspace, manifest, fast_client(), mirror=server.url)
    assert result.records == 87  # as from the unchanged sample
    with fresh_workspace.connect(read_only=True) as con:
        quarantined = con.execute(
            "SELECT file, line, reason FROM quarantine WHERE reason LIKE '%observer_id%'"
        ).fetchall()
        holders = con.execute(
            "SELECT DISTINCT r.rights_holder FROM record_rows s JOIN records r "
            "ON r.record_id = s.source || ':' || s.source_num WHERE s.holder_num = ?",
            [int(observer_id)],
        ).fetchall()
        doubled = con.execute(
            "SELECT count(*) - count(DISTINCT record_id) FROM records"
        ).fetchone()[0]
    assert quarantined == [
        (
            "observers.csv.gz",
            len(lines),
            f"duplicate observer_id {observer_id} (an earlier row is kept)",
        )
    ]
    assert holders == [(holder,)]
    assert doubled == 0
