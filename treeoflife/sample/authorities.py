"""The taxonomy side of the sample: a small tree type shared by every source's taxonomy, and
the GBIF backbone and Catalogue of Life (ColDP) extracts covering the sample's taxa."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeoflife.sample.archives import tsv_bytes, write, zip_bytes
from treeoflife.sample.images import seeded
from treeoflife.sample.species import (
    DOUBTFUL,
    EXTRA_VERNACULARS,
    GENUS_AUTHORSHIP,
    RANKS,
    SYNONYMS,
    TAXA,
    TAXA_BY_NAME,
    Taxon,
)

GBIF = "hosted-datasets.gbif.org/datasets/backbone/2023-08-28"
COL = "download.checklistbank.org/col/annual"


@dataclass(eq=False)
class Node:
    """One taxon of an authority's tree (iNat taxa, GBIF, COL, EOL DH)."""

    rank: str
    name: str
    parent: Node | None
    children: dict[tuple[str, str], Node] = field(default_factory=dict)
    taxon: Taxon | None = None
    id: Any = None

    def ancestors(self) -> list[Node]:
        chain, node = [], self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children.values():
            yield from child.walk()

    def add(self, steps: list[tuple[str, str]]) -> Node:
        node = self
        for rank, name in steps:
            node = node.children.setdefault((rank, name), Node(rank, name, node))
        return node

    def classification(self) -> dict[str, str]:
        return {n.rank: n.name for n in [*self.ancestors(), self] if n.rank in RANKS}


def build_tree(
    root: Node, steps_for: Callable[[Taxon], list[tuple[str, str]]], taxa: Iterable[Taxon] = TAXA
) -> dict[str, Node]:
    """Add the taxa to `root` along `steps_for(taxon)`; returns their nodes by name."""
    nodes = {}
    for taxon in taxa:
        nodes[taxon.name] = root.add(steps_for(taxon))
        nodes[taxon.name].taxon = taxon
    return nodes


def allocate_ids(
    root: Node,
    known: dict[tuple[str, str], Any],
    rng: random.Random,
    make: Callable[[random.Random], Any],
) -> dict[Node, Any]:
    """Each node's known id, or a fresh unique one from `make(rng)`, in walk order."""
    ids: dict[Node, Any] = {}
    used = set(known.values())
    for node in root.walk():
        ids[node] = known.get((node.rank, node.name))
        while ids[node] is None:
            candidate = make(rng)
            ids[node] = None if candidate in used else candidate
        used.add(ids[node])
    return ids


def authorship_of(node: Node) -> str:
    if node.taxon is not None:
        return node.taxon.authorship
    kingdom = node.classification().get("kingdom", "")
    return GENUS_AUTHORSHIP.get((kingdom, node.name), "") if node.rank == "genus" else ""


def ranked_steps(
    taxon: Taxon, extra_above: dict[tuple[str, str], list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """The taxon's lineage plus intermediate ranks: `extra_above` and its subfamily and tribe."""
    steps = []
    for rank, name in taxon.lineage():
        steps += extra_above.get((rank, name), [])
        if rank == "genus":
            steps += [
                (r, n) for r, n in (("subfamily", taxon.subfamily), ("tribe", taxon.tribe)) if n
            ]
        steps.append((rank, name))
    return steps


def vernaculars() -> list[tuple[Taxon, str, str]]:
    """(taxon, ISO-639-1 language, name): each English common name, then the extras."""
    names = [(t, "en", t.common) for t in TAXA if t.common]
    return names + [(TAXA_BY_NAME[n], lang, name) for n, lang, name in EXTRA_VERNACULARS]


# fmt: off
GBIF_KNOWN_IDS = {
    ("kingdom", "Animalia"): 1, ("kingdom", "Plantae"): 6, ("kingdom", "Fungi"): 5,
    ("phylum", "Chordata"): 44, ("phylum", "Arthropoda"): 54, ("phylum", "Annelida"): 42,
    ("phylum", "Mollusca"): 52, ("phylum", "Tracheophyta"): 7707728,
    ("phylum", "Basidiomycota"): 34, ("phylum", "Ascomycota"): 95, ("class", "Aves"): 212,
    ("class", "Mammalia"): 359, ("class", "Amphibia"): 131, ("class", "Insecta"): 216,
    ("class", "Magnoliopsida"): 220, ("class", "Pinopsida"): 194, ("class", "Gastropoda"): 225,
    ("class", "Agaricomycetes"): 186, ("order", "Asterales"): 414, ("family", "Asteraceae"): 3065,
    ("genus", "Helianthus"): 3119134, ("species", "Helianthus annuus"): 9206251,
}
COL_KNOWN_IDS = {
    ("unranked", "Biota"): "5T6MX", ("kingdom", "Animalia"): "N", ("kingdom", "Plantae"): "P",
    ("kingdom", "Fungi"): "F", ("phylum", "Chordata"): "CH2", ("phylum", "Tracheophyta"): "TP",
    ("class", "Magnoliopsida"): "MG",
}
# fmt: on
GBIF_COLUMNS = (
    "taxonID datasetID parentNameUsageID acceptedNameUsageID originalNameUsageID scientificName "
    "scientificNameAuthorship canonicalName genericName specificEpithet infraspecificEpithet "
    "taxonRank nameAccordingTo namePublishedIn taxonomicStatus nomenclaturalStatus taxonRemarks "
    "kingdom phylum class order family genus"
).split()
GBIF_VERNACULAR_COLUMNS = (
    "taxonID vernacularName language country countryCode sex lifeStage source".split()
)
COL_GBIF_DATASET = "7ddf754f-d193-4cc9-b351-99906754a03b"  # COL's dataset key at GBIF
DWC = "http://rs.tdwg.org/dwc/terms/"
DCTERMS, DCTERMS_FIELDS = "http://purl.org/dc/terms/", ("language", "source")
EML_XML = """<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" packageId="d7dddbf4-2cf0-4f39-9b2a-bb099caae36c" system="http://gbif.org" scope="system">
  <dataset>
    <title>GBIF Backbone Taxonomy (bundled sample extract)</title>
    <pubDate>2023-08-28</pubDate>
    <intellectualRights><para>Creative Commons Attribution (CC-BY) 4.0 License</para></intellectualRights>
  </dataset>
</eml:eml>
"""  # noqa: E501
COL_COLUMNS = [f"col:{name}" for name in (
    "ID alternativeID nameAlternativeID sourceID parentID basionymID status scientificName "
    "authorship rank notho originalSpelling uninomial genericName infragenericEpithet "
    "specificEpithet infraspecificEpithet cultivarEpithet combinationAuthorship "
    "combinationAuthorshipID combinationExAuthorship combinationExAuthorshipID "
    "combinationAuthorshipYear basionymAuthorship basionymAuthorshipID basionymExAuthorship "
    "basionymExAuthorshipID basionymAuthorshipYear namePhrase nameReferenceID publishedInYear "
    "publishedInPage publishedInPageLink gender genderAgreement etymology code nameStatus "
    "accordingToID accordingToPage accordingToPageLink referenceID scrutinizer scrutinizerID "
    "scrutinizerDate extinct temporalRangeStart temporalRangeEnd environment species section "
    "subgenus genus subtribe tribe subfamily family superfamily suborder order subclass class "
    "subphylum phylum kingdom ordinal branchLength link nameRemarks remarks"
).split()]  # fmt: skip
COL_VERNACULAR_COLUMNS = [f"col:{name}" for name in (
    "taxonID sourceID name transliteration language preferred country area sex referenceID remarks"
).split()]  # fmt: skip
COL_EXTRA_ABOVE = {("family", "Pieridae"): [("superfamily", "Papilionoidea")],
                   ("family", "Nymphalidae"): [("superfamily", "Papilionoidea")]}  # fmt: skip
ISO639_3 = {"en": "eng", "de": "deu", "fr": "fra"}
COL_METADATA = """key: 299029
doi: 10.48580/dfz8d
title: Catalogue of Life
alias: COL24
description: Bundled sample extract of the 2024 Annual Checklist (treeoflife.sample.generate).
issued: 2024-06-14
version: 2024 Annual Checklist
license: CC BY 4.0
url: https://www.catalogueoflife.org
"""


def _gbif_id(rng: random.Random) -> int:
    return rng.randrange(2_000_000, 12_000_000)


def col_id(rng: random.Random) -> str:
    return "".join(rng.choice("BCDFGHJKLMNPQRSTVWXYZ0123456789") for _ in range(rng.choice([4, 5])))


def build_gbif() -> tuple[Node, dict[str, Node]]:
    """The backbone's tree of the sample taxa (under a nameless root), keys assigned."""
    root = Node("", "", None)
    nodes = build_tree(root, Taxon.lineage)
    for node, key in allocate_ids(root, GBIF_KNOWN_IDS, seeded("gbif-ids"), _gbif_id).items():
        node.id = key
    return root, nodes


def gbif_meta_xml() -> str:
    def fields(columns: list[str]) -> str:
        return "".join(
            f'    <field index="{i}" term="{DCTERMS if c in DCTERMS_FIELDS else DWC}{c}"/>\n'
            for i, c in enumerate(columns)
            if i > 0
        )

    tabs = 'encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"'  # noqa: E501
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n'
        f'  <core {tabs} rowType="{DWC}Taxon">\n'
        '    <files><location>Taxon.tsv</location></files>\n    <id index="0"/>\n'
        f"{fields(GBIF_COLUMNS)}  </core>\n"
        f'  <extension {tabs} rowType="http://rs.gbif.org/terms/1.0/VernacularName">\n'
        '    <files><location>VernacularName.tsv</location></files>\n    <coreid index="0"/>\n'
        f"{fields(GBIF_VERNACULAR_COLUMNS)}  </extension>\n</archive>\n"
    )


def write_gbif(files: Path, root: Node, nodes: dict[str, Node]) -> None:
    """backbone.zip: Taxon.tsv (accepted, synonyms, a doubtful name), VernacularName.tsv."""
    rng = seeded("gbif")
    synonym_ids = {s.name: _gbif_id(rng) for s in SYNONYMS}
    basionyms = {s.accepted: synonym_ids[s.name] for s in SYNONYMS if "homotypic" in s.gbif_status}

    def row(
        key: int,
        name: str,
        author: str,
        rank: str,
        status: str,
        parent: Node | None,
        ranks: dict[str, str],
        accepted: str = "",
    ) -> list[str]:
        words = name.split()
        genus, epithet = (
            (words[0], words[-1]) if rank == "species" else (ranks.get("genus", ""), "")
        )
        parent_id = "" if parent is None or parent is root else str(parent.id)
        original = str(basionyms.get(name, "")) if status == "accepted" else ""
        published = "Syst. Nat. ed. 10" if status == "accepted" and author.endswith("1758)") else ""
        full_name = f"{name} {author}".strip()
        return [str(key), COL_GBIF_DATASET, parent_id, accepted, original, full_name, author, name,
                genus, epithet, "", rank, "", published, status, "", "",
                *[ranks.get(r, "") for r in RANKS[:6]]]  # fmt: skip

    rows = [
        row(n.id, n.name, authorship_of(n), n.rank, "accepted", n.parent, n.classification())
        for n in root.walk()
        if n is not root
    ]
    for synonym in SYNONYMS:
        accepted = nodes[synonym.accepted]
        rows.append(row(synonym_ids[synonym.name], synonym.name, synonym.authorship, "species",
                        synonym.gbif_status, accepted.parent, accepted.classification(),
                        str(accepted.id)))  # fmt: skip
    for name, author, genus_name in DOUBTFUL:
        genus = next(n for n in root.walk() if (n.rank, n.name) == ("genus", genus_name))
        rows.append(
            row(_gbif_id(rng), name, author, "species", "doubtful", genus, genus.classification())
        )
    rows.sort(key=lambda r: int(r[0]))
    countries = {"de": ["Germany", "DE"], "fr": ["France", "FR"]}
    vernacular_rows = [GBIF_VERNACULAR_COLUMNS] + [
        [str(nodes[taxon.name].id), name, lang, *countries.get(lang, ["", ""]), "", "", "ITIS"]
        for taxon, lang, name in vernaculars()
    ]
    members = {
        "Taxon.tsv": tsv_bytes([GBIF_COLUMNS, *rows]),
        "VernacularName.tsv": tsv_bytes(vernacular_rows),
        "meta.xml": gbif_meta_xml().encode(),
        "eml.xml": EML_XML.encode(),
    }
    write(files, f"{GBIF}/backbone.zip", zip_bytes(members))


def write_col(files: Path) -> None:
    """2024_coldp.zip: NameUsage.tsv and VernacularName.tsv with `col:` headers, metadata.yaml."""
    rng = seeded("col")
    root = Node("unranked", "Biota", None)
    nodes = build_tree(root, lambda taxon: ranked_steps(taxon, COL_EXTRA_ABOVE))
    ids = allocate_ids(root, COL_KNOWN_IDS, seeded("col-ids"), col_id)
    synonym_ids = {s.name: col_id(rng) for s in SYNONYMS}
    basionyms = {s.accepted: synonym_ids[s.name] for s in SYNONYMS if "homotypic" in s.gbif_status}
    usages = []
    for node in root.walk():
        ranks = node.classification()
        usage = {
            "ID": ids[node],
            "parentID": ids[node.parent] if node.parent else "",
            "sourceID": str(rng.randint(1000, 2400)) if node.parent else "",
            "status": "accepted",
            "scientificName": node.name,
            "authorship": authorship_of(node),
            "rank": node.rank,
            "code": nomenclatural_code(ranks.get("kingdom")),
        }
        if node.taxon and node.rank == "species":
            taxon = node.taxon
            usage |= {"genericName": taxon.genus, "specificEpithet": taxon.epithet,
                      "nameStatus": "established", "environment": "terrestrial",
                      "basionymID": basionyms.get(node.name, ""),
                      "notho": "species" if taxon.hybrid else ""}  # fmt: skip
            if ranks["kingdom"] == "Fungi":  # the flat rank columns are mostly empty in releases
                usage |= {rank: ranks.get(rank, "") for rank in RANKS[:6]}
        else:
            usage["uninomial"] = node.name
        usages.append(usage)
    for synonym in SYNONYMS:
        accepted = nodes[synonym.accepted]
        genus, epithet = synonym.name.split()
        code = nomenclatural_code(accepted.classification()["kingdom"])
        usages.append({"ID": synonym_ids[synonym.name], "parentID": ids[accepted],
                       "status": "synonym", "scientificName": synonym.name,
                       "authorship": synonym.authorship, "rank": "species", "genericName": genus,
                       "specificEpithet": epithet, "code": code})  # fmt: skip
    name_rows = [
        [str(usage.get(c.removeprefix("col:"), "")) for c in COL_COLUMNS] for usage in usages
    ]
    vernacular_rows = [
        [ids[nodes[taxon.name]], "", name, "", ISO639_3[lang], "true" * (lang == "en"), *[""] * 5]
        for taxon, lang, name in vernaculars()
    ]
    members = {
        "NameUsage.tsv": tsv_bytes([COL_COLUMNS, *name_rows]),
        "VernacularName.tsv": tsv_bytes([COL_VERNACULAR_COLUMNS, *vernacular_rows]),
        "metadata.yaml": COL_METADATA.encode(),
    }
    write(files, f"{COL}/2024_coldp.zip", zip_bytes(members))


def nomenclatural_code(kingdom: str | None) -> str:
    return {None: "", "Animalia": "zoological"}.get(kingdom, "botanical")
