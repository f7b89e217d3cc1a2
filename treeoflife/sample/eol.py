"""The Encyclopedia of Life files of the sample: the media manifest and its images, the
Dynamic Hierarchy (dh21.zip taxon.tab), vernacular names and provider ids."""

from __future__ import annotations

import hashlib
import random
from functools import partial
from pathlib import Path

from treeoflife.sample.archives import (
    csv_bytes,
    gzip_bytes,
    new_uuid,
    tar_gz_bytes,
    tsv_bytes,
    unique_int,
    write,
    zip_bytes,
)
from treeoflife.sample.authorities import (
    Node,
    allocate_ids,
    authorship_of,
    build_tree,
    col_id,
    vernaculars,
)
from treeoflife.sample.images import seeded
from treeoflife.sample.inat import INAT
from treeoflife.sample.ledger import Plant, Sampler, ref
from treeoflife.sample.species import SYNONYMS, TAXA, TAXA_BY_NAME, Taxon

EOL_DATA = "eol.org/data"
EOL_CONTENT = "content.eol.org"
EOL_DH = "editors.eol.org/uploaded_resources/00a/db4/dh21.zip"


EOL_MANIFEST_COLUMNS = ["EOL content ID", "EOL page ID", "Medium Source URL",
                        "EOL Full-Size Copy URL", "License Name", "Copyright Owner"]  # fmt: skip
EOL_LICENSES = [
    "cc-by-nc-sa-3.0", "cc-by-3.0", "cc-publicdomain", "cc-by-nc-3.0",
    "No known copyright restrictions", "cc-by-sa-3.0", "cc-by-4.0", "cc-by-nc-4.0", "cc-0-1.0",
    "cc-by-sa-2.0", "public domain", "cc-by-2.5", "all rights reserved",
]  # fmt: skip
NO_OWNER_LICENSES = {
    "cc-publicdomain",
    "No known copyright restrictions",
    "cc-0-1.0",
    "public domain",
}
EOL_OWNERS = ["2012 Eric White", "Smith, Jane", "Natural History Museum, London", 'The "Bug" Lab',
              "Siobhán O'Brien", "Biodiversity Heritage Library"]  # fmt: skip
EOL_MANIFEST_1_ROWS = 50  # data rows in media_manifest_1.csv; the rest go to _2
DH_COLUMNS = (
    "taxonID source furtherInformationURL acceptedNameUsageID parentNameUsageID scientificName "
    "taxonRank taxonomicStatus datasetID canonicalName authority eolID Landmark "
    "higherClassification"
).split()
DH_PREFIX = {  # the non-Linnaean top of the Dynamic Hierarchy ("" = no rank)
    "Animalia": [("", "Opisthokonta"), ("kingdom", "Metazoa"), ("", "Bilateria")],
    "Fungi": [("", "Opisthokonta"), ("kingdom", "Fungi"), ("", "Dikarya")],
    "Plantae": [("kingdom", "Archaeplastida"), ("", "Embryophytes")],
}
DH_SKIPPED_RANK = {"Cornu aspersum": "order"}  # the chain jumps from Gastropoda to Helicidae
DH_LANDMARK = {"kingdom": "3", "phylum": "2", "class": "2", "order": "1"}
EOL_KNOWN_PAGES = {("", "Life"): 2913056, ("species", "Lutra lutra"): 46559121}
VERNACULAR_COLUMNS = (
    "page_id canonical_form vernacular_string language_code resource_name "
    "is_preferred_by_resource is_preferred_by_eol"
).split()
VERNACULAR_RESOURCES = ["Wikidata", "Integrated Taxonomic Information System (ITIS)",
                        "iNaturalist, common names"]  # fmt: skip


def dh_steps(taxon: Taxon) -> list[tuple[str, str]]:
    steps = [("", "Cellular Organisms"), ("", "Eukaryota"), *DH_PREFIX[taxon.path[0]]]
    return steps + [(r, n) for r, n in taxon.lineage()[1:] if DH_SKIPPED_RANK.get(taxon.name) != r]


def dh_provenance(rng: random.Random, node: Node) -> tuple[str, str, str]:
    """(source, furtherInformationURL, datasetID) of a DH row."""
    if node.parent is None:
        return "trunk:4038af35-41da-469e-8806-40e60241bb58", "", "trunk"
    if node.rank in ("", "kingdom", "phylum"):
        return f"trunk:{new_uuid(rng)}", "", "trunk"
    if rng.random() < 0.6:
        key = col_id(rng)
        return f"COL:{key}", f"https://www.catalogueoflife.org/data/taxon/{key}", "COL-2019"
    ncbi = rng.randint(1000, 2_000_000)
    return (
        f"NCBI:{ncbi}",
        f"https://www.ncbi.nlm.nih.gov/Taxonomy/Browser/wwwtax.cgi?id={ncbi}",
        "NCBI",
    )


def medium_source_url(rng: random.Random, plant: Plant | None) -> str:
    """The provider's URL: calphotos, flickr, wikimedia, iNat, or empty."""
    if plant and plant.of and plant.of["source"] == "inat-open-data":  # EOL harvested it from iNat
        return f"https://{INAT}/photos/{plant.of['source_id']}/original.jpg"
    digest, n = hashlib.md5(rng.randbytes(8)).hexdigest(), rng.randint(1000, 9999)
    flickr_id = f"{rng.randint(10**9, 10**10)}_{digest[:10]}"
    return [
        f"http://calphotos.berkeley.edu/imgs/512x768/0000_0000/{n:04d}/{n // 3:04d}.jpeg",
        f"https://farm{n % 9 + 1}.staticflickr.com/{n}/{flickr_id}_o.jpg",
        f"https://upload.wikimedia.org/wikipedia/commons/{digest[0]}/{digest[:2]}/Specimen_{n}.jpg",
        f"https://static.inaturalist.org/photos/{rng.randint(10**6, 3 * 10**8)}/original.jpeg",
        "",
    ][rng.randrange(5)]


def write_eol(files: Path, sampler: Sampler, gbif_nodes: dict[str, Node]) -> None:
    """dh21.zip (taxon.tab), media_manifest.tgz with its images, vernaculars, provider ids."""
    rng = seeded("eol")
    src = "eol"
    root = Node("", "Life", None)
    nodes = build_tree(root, dh_steps, (t for t in TAXA if t.count(src) and t.in_eol_dh))
    root_ids = allocate_ids(
        root, {("", "Life"): 1}, seeded("dh-ids"), lambda r: r.randrange(2, 3_000_000)
    )
    dh_ids = {node: f"EOL-{number:012d}" for node, number in root_ids.items()}
    pages = allocate_ids(
        root, EOL_KNOWN_PAGES, seeded("eol-pages"), lambda r: r.randrange(1000, 52_000_000)
    )
    used_pages = set(pages.values())
    fallback_page, lost_page = (unique_int(rng, 1000, 52_000_000, used_pages) for _ in range(2))
    page_of = {name: pages[node] for name, node in nodes.items()}
    page_of["Bellis perennis"] = fallback_page  # its page exists; the DH lacks the taxon
    # --- dh21.zip: taxon.tab
    dh_rows = [DH_COLUMNS]
    for node in root.walk():
        source, url, dataset = dh_provenance(rng, node)
        author, parent = authorship_of(node), dh_ids[node.parent] if node.parent else ""
        landmark = "3" if node.parent is None else DH_LANDMARK.get(node.rank, "")
        higher = "|".join(a.name for a in node.ancestors())
        dh_rows.append([dh_ids[node], source, url, "", parent, f"{node.name} {author}".strip(),
                        node.rank, "accepted", dataset, node.name, author, str(pages[node]),
                        landmark, higher])  # fmt: skip
    for synonym in (s for s in SYNONYMS if s.accepted in nodes):
        source, url, dataset = dh_provenance(rng, nodes[synonym.accepted])
        dh_rows.append([f"EOL-{rng.randrange(3_000_000, 4_000_000):012d}", source, url,
                        dh_ids[nodes[synonym.accepted]], "", f"{synonym.name} {synonym.authorship}",
                        "species", "not accepted", dataset, synonym.name, synonym.authorship,
                        "", "", ""])  # fmt: skip
    write(files, EOL_DH, zip_bytes({"taxon.tab": tsv_bytes(dh_rows)}))
    # --- media_manifest.tgz, and each image at content.eol.org
    inat = partial(sampler.nth, "inat-open-data")
    plants = {
        ("Morus bassanus", 0): Plant("exact", of=inat("Morus bassanus", 2)),
        ("Helianthus annuus", 0): Plant("exact", of=inat("Helianthus annuus")),
        ("Lutra lutra", 1): Plant("exact"),
        ("Acer saccharum", 1): Plant("near"),
        ("Morus alba", 0): Plant("near", of=sampler.nth("inat21", "Morus alba")),
        ("Boletus edulis", 2): Plant("corrupt", "empty"),
        ("Pinus sylvestris", 1): Plant("corrupt", "random-bytes"),
        ("Quercus robur", 0): Plant("special", "cmyk-jpeg"),
    }  # fmt: skip
    rows, content_ids = [], set()
    jobs: list[tuple[Taxon | None, int]] = [(t, n) for t in TAXA for n in range(t.count(src))]
    for taxon, n in [*jobs, (None, 0)]:  # the last one's page is in no EOL file
        this = ref(src, unique_int(rng, 1_000_000, 30_000_000, content_ids))
        plant = sampler.resolve(plants.get((taxon.name, n)) if taxon else None, src, taxon)
        size = rng.choice([(120, 90), (90, 120), (128, 96)])
        data = sampler.image(this, taxon.key if taxon else "unresolvable", size, plant) or b""
        folders = "/".join(f"{rng.randrange(256):02x}" for _ in range(3))
        path = f"data/media/{folders}/{rng.randint(1, 99)}.{hashlib.md5(data).hexdigest()}.jpg"
        write(files, f"{EOL_CONTENT}/{path}", data)
        licence = EOL_LICENSES[len(rows) % len(EOL_LICENSES)]
        owner = "" if licence in NO_OWNER_LICENSES else rng.choice(EOL_OWNERS)
        page = str(page_of[taxon.name] if taxon else lost_page)
        rows.append([this["source_id"], page, medium_source_url(rng, plant),
                     f"https://{EOL_CONTENT}/{path}", licence, owner])  # fmt: skip
        sampler.record(this, {"file": f"{EOL_CONTENT}/{path}"}, taxon, plant, page_id=page)
    rows.sort(key=lambda row: int(row[0]))
    first, second = [EOL_MANIFEST_COLUMNS, *rows[:EOL_MANIFEST_1_ROWS]], rows[EOL_MANIFEST_1_ROWS:]
    second.insert(6, ["29999999", str(page_of["Lutra lutra"]), "", "cc-by-3.0"])
    sampler.bad(src, "media_manifest_2.csv", 7, "too few columns (4 of 6)")
    manifests = {
        "media_manifest_1.csv": csv_bytes(first),
        "media_manifest_2.csv": csv_bytes(second),
    }
    write(files, f"{EOL_DATA}/media_manifest.tgz", tar_gz_bytes(manifests))
    # --- vernacular_names.csv and provider_ids.csv.gz
    vernacular_rows, seen = [VERNACULAR_COLUMNS], set()
    extra_english = (TAXA_BY_NAME["Lutra lutra"], "en", "European Otter")
    for taxon, language, name in [*vernaculars(), extra_english]:
        if taxon.name in page_of:
            form = f"<i>{taxon.name}</i>" if taxon.rank in ("genus", "species") else taxon.name
            first_name = (taxon.name, language) not in seen
            seen.add((taxon.name, language))
            flags = [
                "preferred" if first_name else "",
                "preferred" if first_name and language == "en" else "",
            ]
            vernacular_rows.append([str(page_of[taxon.name]), form, name, language,
                                    rng.choice(VERNACULAR_RESOURCES), *flags])  # fmt: skip
    write(files, f"{EOL_DATA}/vernacular_names.csv", csv_bytes(vernacular_rows))
    providers = [
        ["node_id", "resource_pk", "resource_id", "page_id", "preferred_canonical_for_page"]
    ]
    providers += [[dh_ids[node], "724", str(pages[node]), node.name] for node in root.walk()]
    species_pages = [
        (n, p) for n, p in sorted(page_of.items()) if TAXA_BY_NAME[n].rank == "species"
    ]
    providers += [
        [str(gbif_nodes[name].id), "767", str(page), name] for name, page in species_pages
    ]
    provider_rows = [providers[0]] + [
        [str(rng.randrange(40_000_000, 60_000_000)), *row] for row in providers[1:]
    ]
    write(files, f"{EOL_DATA}/provider_ids.csv.gz", gzip_bytes(csv_bytes(provider_rows)))
    sampler.facts[src] = {
        "manifest_files": {"media_manifest_1.csv": {"lines": len(first), "header": True},
                           "media_manifest_2.csv": {"lines": len(second), "header": False}},
        "kingdom_names": {"Metazoa": "Animalia", "Archaeplastida": "Plantae", "Fungi": "Fungi"},
        "unresolvable_pages": [{"page_id": str(lost_page),
                                "note": "in no EOL file: a record without a taxon"}],
        "fallback_pages": [{"page_id": str(fallback_page), "name": "Bellis perennis",
                            "note": "not in taxon.tab; in provider_ids.csv.gz and vernaculars"}],
        "missing_ranks": [{"taxon": name, "rank": rank, "note": "the DH chain skips this rank"}
                          for name, rank in DH_SKIPPED_RANK.items()],
        "html_in_names": "vernacular_names.csv canonical_form wraps genera and species in <i>…</i>",
    }  # fmt: skip
