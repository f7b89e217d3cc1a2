"""Taxonomy fixtures: the sample pulled and resolved, and a hand-built mini catalog with the
cases the sample lacks (synonym chain, misspelling, genus homonyms, lineage hole, ...)."""

from __future__ import annotations

import shutil

import pytest

from treeoflife.demo import load_sample_authorities
from treeoflife.taxonomy.authority import ensure_authority_tables
from treeoflife.workspace import RANKS, Workspace

TAXON_COLUMNS = (
    "authority", "version", "taxon_id", "parent_id", "accepted_id", "status", "status_raw",
    "rank", "scientific_name", "canonical_name", "authorship", *RANKS,
)  # fmt: skip
SOURCE_TAXON_COLUMNS = (
    "source", "taxon_key", "source_taxon_id", "scientific_name", "common_name", "taxon_rank",
    *RANKS,
)  # fmt: skip


@pytest.fixture(scope="session")
def sample_with_authorities(tmp_path_factory, pulled_workspace, sample_pipeline, sample_server):
    """A copy of the pulled sample with the GBIF and COL sample extracts loaded (read only)."""
    root = tmp_path_factory.mktemp("taxa") / "ws"
    shutil.copytree(pulled_workspace.root, root)
    workspace = Workspace(root)
    load_sample_authorities(workspace, sample_pipeline, sample_server.url)
    return workspace


@pytest.fixture
def sample_copy(tmp_path, sample_with_authorities) -> Workspace:
    """A private writable copy of the sample with authorities."""
    root = tmp_path / "ws"
    shutil.copytree(sample_with_authorities.root, root)
    return Workspace(root)


def lineage(*names: str | None) -> dict:
    """Ranks from kingdom down, as many as given."""
    return dict(zip(RANKS, [*names, *[None] * (len(RANKS) - len(names))], strict=True))


def taxon(authority, taxon_id, name, rank, ranks, *, status="accepted", accepted=None, author=None):
    return {
        "authority": authority, "version": "test", "taxon_id": taxon_id, "parent_id": None,
        "accepted_id": accepted, "status": status, "status_raw": status, "rank": rank,
        "scientific_name": f"{name} {author}" if author else name, "canonical_name": name,
        "authorship": author, **ranks,
    }  # fmt: skip


BIRD = ("Animalia", "Chordata", "Aves")
GANNET = lineage(*BIRD, "Suliformes", "Sulidae", "Morus")
MULBERRY = lineage("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus")
TIT = lineage(*BIRD, "Passeriformes", "Paridae", "Cyanistes", "Cyanistes caeruleus")
BEAR = lineage("Animalia", "Chordata", "Mammalia", "Carnivora", "Ursidae", "Ursus")
MINT = lineage("Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", "Lamiaceae", "Mentha")
# GBIF has no class for ray-finned fishes: a hole between phylum and order.
GOLDFISH = lineage("Animalia", "Chordata", None, "Cypriniformes", "Cyprinidae", "Carassius")


def _with(ranks: dict, **changes) -> dict:
    return {**ranks, **changes}


MINI_TAXA = [
    taxon("gbif", "6", "Morus", "genus", GANNET, author="Vieillot, 1816"),
    taxon("gbif", "7", "Morus bassanus", "species", _with(GANNET, species="Morus bassanus")),
    taxon("gbif", "15", "Morus", "genus", MULBERRY, author="L."),
    taxon("gbif", "16", "Morus alba", "species", _with(MULBERRY, species="Morus alba")),
    # A synonym chain: Parus caeruleus -> Cyanistes coeruleus -> Cyanistes caeruleus.
    taxon("gbif", "40", "Parus caeruleus", "species", lineage(), status="synonym", accepted="41"),
    taxon("gbif", "41", "Cyanistes coeruleus", "species", lineage(), status="synonym",
          accepted="42"),
    taxon("gbif", "42", "Cyanistes caeruleus", "species", TIT, author="(Linnaeus, 1758)"),
    taxon("gbif", "50", "Ursus", "genus", BEAR),
    taxon("gbif", "51", "Ursus arctos", "species", _with(BEAR, species="Ursus arctos")),
    taxon("gbif", "60", "Mentha × piperita", "species", _with(MINT, species="Mentha × piperita")),
    taxon("gbif", "70", "Carassius auratus", "species",
          _with(GOLDFISH, species="Carassius auratus")),
    taxon("col", "B1", "Ursus arctos", "species", _with(BEAR, species="Ursus arctos")),
    taxon("col", "N1", "Novus colonly", "species",
          lineage("Metazoa", "Chordata", "Aves", "Passeriformes", "Novidae", "Novus",
                  "Novus colonly")),
]  # fmt: skip
MINI_VERNACULARS = [
    ("gbif", "51", "Grizzly", "en", None),
    ("gbif", "51", "Brown Bear", "en", None),  # tie: alphabetical first wins
    ("gbif", "51", "Ours brun", "fr", True),
    ("gbif", "16", "White Mulberry", "en", False),
    ("gbif", "16", "Silkworm Mulberry", "en", True),  # the preferred name wins
    ("col", "B1", "Brown Bear (COL)", "en", True),
]


def source_taxon(source, key, name, *ranks, common=None, rank=None) -> dict:
    return {
        "source": source, "taxon_key": key, "source_taxon_id": key, "scientific_name": name,
        "common_name": common, "taxon_rank": rank, **lineage(*ranks),
    }  # fmt: skip


MINI_SOURCE_TAXA = [
    source_taxon("s1", "gannet-genus", "Morus", None, None, None, None, "Sulidae", "Morus",
                 rank="genus"),
    source_taxon("s1", "mulberry-genus", "Morus", "Viridiplantae", rank="genus"),
    source_taxon("s1", "bare-morus", "Morus", rank="genus"),
    source_taxon("s1", "chain", "Parus caeruleus Linnaeus, 1758", "Animalia"),
    source_taxon("s1", "misspelt", "Ursus arctus", "Animalia"),
    source_taxon("s1", "hybrid", "Mentha x piperita L.", "Plantae"),
    source_taxon("s1", "html", "<i>Morus  alba</i> L.", None),
    source_taxon("s1", "unknown", "Imaginaria fantastica Smith, 1900", "Metazoa", "Chordata",
                 None, None, "Fooidae", "Imaginaria", "Imaginaria fantastica"),
    source_taxon("s1", "hole", "Carassius auratus", "Animalia", "Chordata", "Actinopterygii"),
    source_taxon("s1", "cf", "Ursus cf. arctos", "Animalia"),
    source_taxon("s1", "sp", "Ursus sp.", "Animalia"),
    source_taxon("s1", "col-only", "Novus colonly", None),
    source_taxon("s1", "new-species", "Ursus newspecies", "Animalia"),
    source_taxon("s1", "wrong-kingdom", "Cyanistes caeruleus", "Plantae", "Tracheophyta"),
    source_taxon("s1", "nameless", None),
    source_taxon("s1", "bare-unknown", "Zzyzx"),
    source_taxon("s1", "own-common", "Ursus arctos", "Animalia", common="Bear"),
    source_taxon("s2", "bear", "Ursus arctos", "Animalia"),
]  # fmt: skip
# Records per source taxon (plus one whose taxon_key names no source taxon).
MINI_RECORDS = {**{(t["source"], t["taxon_key"]): 2 for t in MINI_SOURCE_TAXA},
                ("s1", "dangling"): 1}  # fmt: skip


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    quoted = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' for _ in columns)})"


def build_mini_catalog(root) -> Workspace:
    """A workspace holding MINI_TAXA as authorities and MINI_SOURCE_TAXA as pulled records."""
    workspace = Workspace(root).init()
    with workspace.connect() as con:
        ensure_authority_tables(con)
        con.executemany(
            _insert_sql("authority_taxa", TAXON_COLUMNS),
            [[row[c] for c in TAXON_COLUMNS] for row in MINI_TAXA],
        )
        con.executemany("INSERT INTO authority_vernaculars VALUES (?, ?, ?, ?, ?)",
                        MINI_VERNACULARS)  # fmt: skip
        con.executemany(
            _insert_sql("source_taxa", SOURCE_TAXON_COLUMNS),
            [[row[c] for c in SOURCE_TAXON_COLUMNS] for row in MINI_SOURCE_TAXA],
        )
        con.executemany(
            "INSERT INTO record_rows (source, source_id, taxon_key) VALUES (?, ?, ?)",
            [
                (source, f"{key}-{i}", key)
                for (source, key), count in MINI_RECORDS.items()
                for i in range(count)
            ],
        )
    return workspace


@pytest.fixture
def mini_catalog(tmp_path) -> Workspace:
    return build_mini_catalog(tmp_path / "mini")
