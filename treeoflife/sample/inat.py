"""The iNat2021 competition files and the iNaturalist open-data dump of the sample."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from treeoflife.sample.archives import (
    gzip_bytes,
    new_uuid,
    tar_gz_bytes,
    tsv_bytes,
    unique_int,
    write,
)
from treeoflife.sample.authorities import Node, allocate_ids, build_tree, ranked_steps
from treeoflife.sample.images import seeded
from treeoflife.sample.ledger import Plant, Sampler, ref
from treeoflife.sample.species import TAXA, TAXA_BY_NAME, Taxon

INAT21 = "ml-inat-competition-datasets.s3.amazonaws.com/2021"
INAT = "inaturalist-open-data.s3.amazonaws.com"
INAT_SNAPSHOT = "inaturalist-open-data-20241127"


# fmt: off
INAT21_LICENSES = [
    {"id": 1, "name": "Attribution-NonCommercial-ShareAlike License", "url": "http://creativecommons.org/licenses/by-nc-sa/4.0/"},  # noqa: E501
    {"id": 2, "name": "Attribution-NonCommercial License", "url": "http://creativecommons.org/licenses/by-nc/4.0/"},  # noqa: E501
    {"id": 3, "name": "Attribution-NonCommercial-NoDerivs License", "url": "http://creativecommons.org/licenses/by-nc-nd/4.0/"},  # noqa: E501
    {"id": 4, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/4.0/"},
    {"id": 5, "name": "Attribution-ShareAlike License", "url": "http://creativecommons.org/licenses/by-sa/4.0/"},  # noqa: E501
    {"id": 6, "name": "Attribution-NoDerivs License", "url": "http://creativecommons.org/licenses/by-nd/4.0/"},  # noqa: E501
    {"id": 7, "name": "Public Domain Dedication", "url": "http://creativecommons.org/publicdomain/zero/1.0/"},  # noqa: E501
]
INAT21_INFO = {"year": 2021, "version": "2021", "contributor": "iNat Competition 2021 organizers",
               "url": "https://github.com/visipedia/inat_comp/tree/master/2021",
               "date_created": "2021-03-01 00:00:00"}
# fmt: on
INAT21_IMAGE_KEYS = (
    "id width height file_name license rights_holder date latitude longitude location_uncertainty"
).split()
INAT21_CATEGORY_KEYS = (
    "id name common_name supercategory kingdom phylum class order family genus "
    "specific_epithet image_dir_name"
).split()
SUPERCATEGORY = {
    "Aves": "Birds",
    "Mammalia": "Mammals",
    "Amphibia": "Amphibians",
    "Insecta": "Insects",
}
RIGHTS_HOLDERS = ["megatherium", "Ken-ichi Ueda", "Sara Rodriguez", "jrlarson", "Chloé Martin"]


def supercategory(taxon: Taxon) -> str:
    kingdom, phylum, cls = taxon.path[:3]
    if kingdom != "Animalia":
        return {"Plantae": "Plants", "Fungi": "Fungi"}[kingdom]
    return "Mollusks" if phylum == "Mollusca" else SUPERCATEGORY.get(cls, "Animalia")


def inat21_image(rng: random.Random, image_id: int, file_name: str, data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    located = rng.random() < 0.8
    day = f"{rng.randint(2008, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    time = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    lat, lon = (round(rng.uniform(-45, 65), 5), round(rng.uniform(-125, 150), 5))
    values = [image_id, width, height, file_name, rng.randint(1, 7), rng.choice(RIGHTS_HOLDERS),
              f"{day} {time}+00:00", lat if located else None, lon if located else None,
              rng.choice([None, 5, 12, 65, 250, 1706]) if located else None]  # fmt: skip
    return dict(zip(INAT21_IMAGE_KEYS, values, strict=True))


def write_inat21(files: Path, sampler: Sampler) -> None:
    """train/val `*.json.tar.gz` (COCO-like) and `*.tar.gz` of `<split>/<dir>/<uuid>.jpg`."""
    rng = seeded("inat21")
    src = "inat21"
    plants = {("Quercus robur", 4): Plant("exact"), ("Amanita muscaria", 1): Plant("near")}
    taxa = sorted((t for t in TAXA if t.count(src)), key=lambda t: t.path)
    categories: list[dict[str, Any]] = []
    images: dict[str, dict[str, tuple[dict[str, Any], bytes]]] = {"train": {}, "val": {}}
    annotations: dict[str, list[dict[str, int]]] = {"train": [], "val": []}
    next_id = {"train": rng.randrange(1000, 30000), "val": 2_686_843}
    for index, taxon in enumerate(taxa):
        cat_id = round(index * 9999 / (len(taxa) - 1))  # 0 … 9999, in taxonomic order
        dir_name = "_".join([f"{cat_id:05d}", *taxon.path])
        values = [cat_id, taxon.name, taxon.common or taxon.name, supercategory(taxon), *taxon.path]
        categories.append(dict(zip(INAT21_CATEGORY_KEYS, [*values, dir_name], strict=True)))
        for n in range(taxon.count(src)):
            split = "val" if n == taxon.count(src) - 1 else "train"  # the last one is val
            image_id = next_id[split]
            next_id[split] += rng.randint(1, 40000 if split == "train" else 900)
            this = ref(src, image_id)
            plant = sampler.resolve(plants.get((taxon.name, n)), src, taxon)
            size = rng.choice([(128, 96), (96, 128), (128, 85), (112, 84)])
            data = sampler.image(this, taxon.key, size, plant) or b""
            file_name = f"{split}/{dir_name}/{new_uuid(rng)}.jpg"
            images[split][file_name] = (inat21_image(rng, image_id, file_name, data), data)
            annotations[split].append({"id": image_id, "image_id": image_id, "category_id": cat_id})
            location = {"file": f"{INAT21}/{split}.tar.gz", "member": file_name}
            sampler.record(this, location, taxon, plant, split=split, category_id=cat_id)
    # Planted in train.json: an image nobody annotates, an annotation naming an unknown
    # category, and an annotation naming an image that does not exist.
    lonely, unlabelled, ghost = (next_id["train"] + step for step in (11, 23, 37))
    for image_id in (lonely, unlabelled):
        file_name = f"train/{categories[3]['image_dir_name']}/{new_uuid(rng)}.jpg"
        data = sampler.bank.fresh("orphan", f"{src}:{image_id}", (128, 96))
        images["train"][file_name] = (inat21_image(rng, image_id, file_name, data), data)
    annotations["train"] += [{"id": unlabelled, "image_id": unlabelled, "category_id": 10000},
                             {"id": ghost, "image_id": 99_999_999, "category_id": 0}]  # fmt: skip
    for split in ("train", "val"):
        metas = sorted((meta for meta, _ in images[split].values()), key=lambda m: m["id"])
        annotations[split].sort(key=lambda a: a["id"])
        info = {**INAT21_INFO, "description": f"iNat2021 {split} (bundled sample)"}
        document = {"info": info, "images": metas, "categories": categories,
                    "annotations": annotations[split], "licenses": INAT21_LICENSES}  # fmt: skip
        json_member = {f"{split}.json": json.dumps(document).encode()}
        write(files, f"{INAT21}/{split}.json.tar.gz", tar_gz_bytes(json_member))
        members = {name: data for name, (_, data) in images[split].items()}
        write(files, f"{INAT21}/{split}.tar.gz", tar_gz_bytes(members))
        if split == "train":
            image_at = {meta["id"]: i for i, meta in enumerate(metas)}
            annotation_at = {a["id"]: i for i, a in enumerate(annotations[split])}
    for reason, pointer in (
        ("image without annotation", f"/images/{image_at[lonely]}"),
        ("annotation category_id not in categories", f"/annotations/{annotation_at[unlabelled]}"),
        ("annotation image_id not in images", f"/annotations/{annotation_at[ghost]}"),
    ):
        sampler.bad(src, "train.json", None, reason, pointer=pointer)


# fmt: off
INAT_KNOWN_IDS = {
    ("stateofmatter", "Life"): 48460, ("kingdom", "Animalia"): 1, ("phylum", "Chordata"): 2,
    ("subphylum", "Vertebrata"): 355675, ("class", "Amphibia"): 20978, ("class", "Aves"): 3,
    ("class", "Mammalia"): 40151, ("kingdom", "Plantae"): 47126, ("kingdom", "Fungi"): 47170,
    ("phylum", "Arthropoda"): 47120, ("subphylum", "Hexapoda"): 372739,
    ("class", "Insecta"): 47158, ("phylum", "Tracheophyta"): 211194,
    ("subphylum", "Angiospermae"): 47125, ("class", "Magnoliopsida"): 47124,
    ("order", "Lepidoptera"): 47157, ("species", "Pseudacris crucifer"): 24268,
}
INAT_RANK_LEVELS = {
    "stateofmatter": 100, "kingdom": 70, "subkingdom": 67, "phylum": 60, "subphylum": 57,
    "class": 50, "order": 40, "zoosubsection": 33.5, "superfamily": 33, "family": 30,
    "subfamily": 27, "tribe": 25, "genus": 20, "species": 10, "hybrid": 10, "subspecies": 5,
    "form": 5,
}
OBSERVERS = [  # login, name: empty, the literal "None", quotes, apostrophes, non-ASCII
    ("tiwane", "Tony Iwane"), ("akjenny", ""), ("marsh_warbler", "None"),
    ("sobrien", "Siobhán O'Brien"), ("beetle_jo", 'Jo "Beetle" Ng'), ("fungi_fan", "Mara Lind"),
    ("k_nakamura", "中村 健"), ("jvdberg", "Jan van den Berg"), ("birdsbyboat", "Ana Costa"),
    ("andrea_mx", "Andrea Ruiz"), ("mossy_rocks", ""), ("pdubois", "Pierre Dubois"),
]
# fmt: on
_PAPILIONOIDEA = [("zoosubsection", "Obtectomera"), ("superfamily", "Papilionoidea")]
INAT_EXTRA_ABOVE = {  # intermediate iNat ranks, inserted above the (rank, name) they sit over
    ("class", "Amphibia"): [("subphylum", "Vertebrata")],
    ("class", "Aves"): [("subphylum", "Vertebrata")],
    ("class", "Mammalia"): [("subphylum", "Vertebrata")],
    ("class", "Insecta"): [("subphylum", "Hexapoda")],
    ("class", "Magnoliopsida"): [("subphylum", "Angiospermae")],
    ("phylum", "Basidiomycota"): [("subkingdom", "Dikarya")],
    ("phylum", "Ascomycota"): [("subkingdom", "Dikarya")],
    ("family", "Pieridae"): _PAPILIONOIDEA,
    ("family", "Nymphalidae"): _PAPILIONOIDEA,
}
INAT_LICENSES = ["CC-BY-NC", "CC-BY", "CC0", "CC-BY-SA", "CC-BY-NC-SA", "CC-BY-ND", "CC-BY-NC-ND"]
OBSERVATION_COLUMNS = (
    "observation_uuid observer_id latitude longitude positional_accuracy taxon_id quality_grade "
    "observed_on anomaly_score"
).split()
PHOTO_COLUMNS = (
    "photo_uuid photo_id observation_uuid observer_id extension license width height position"
).split()
UNKNOWN_TAXON_ID = 99_999_999
GRADES = {"species": "research", "hybrid": "research", "form": "casual"}  # else needs_id


def inat_steps(taxon: Taxon) -> list[tuple[str, str]]:
    """(rank, name) below Life, with iNat's intermediate ranks and its `hybrid` rank."""
    steps = ranked_steps(taxon, INAT_EXTRA_ABOVE)
    return [("hybrid" if taxon.hybrid and rank == "species" else rank, n) for rank, n in steps]


def build_inat_taxa() -> tuple[Node, dict[str, Node], dict[str, Node]]:
    """iNat's taxa: the tree, each sample taxon's node, and the odd nodes planted in it."""
    root = Node("stateofmatter", "Life", None)
    nodes = build_tree(root, inat_steps, (t for t in TAXA if t.count("inat-open-data")))
    paridae = root.add(inat_steps(TAXA_BY_NAME["Cyanistes caeruleus"])[:-2])
    odd = {
        "inactive": paridae.add([("genus", "Parus"), ("species", "Parus caeruleus")]),
        "subspecies": nodes["Danaus plexippus"].add([("subspecies", "Danaus plexippus plexippus")]),
        "apostrophe": nodes["Helianthus annuus"].add([("form", "Helianthus annuus 'Lemon Queen'")]),
        "missing": next(n for n in root.walk() if n.name == "Dikarya"),  # left out of taxa.csv
    }
    ids = allocate_ids(
        root, INAT_KNOWN_IDS, seeded("inat-ids"), lambda r: r.randrange(50_000, 1_600_000)
    )
    for node, taxon_id in ids.items():
        node.id = taxon_id
    return root, nodes, odd


@dataclass
class InatDump:
    """The rows of observations.csv and photos.csv, as they are made."""

    rng: random.Random
    observations: list[list[str]] = field(default_factory=list)
    photos: list[list[str]] = field(default_factory=list)
    photo_ids: set[int] = field(default_factory=set)

    def observation(self, observer_id: int, taxon_id: int, grade: str) -> str:
        rng, obs_uuid = self.rng, new_uuid(self.rng)
        located = rng.random() < 0.85
        lat = f"{rng.uniform(-40, 62):.10f}" if located else ""
        lon = f"{rng.uniform(-124, 153):.10f}" if located else ""
        accuracy = str(rng.choice([4, 10, 31, 120])) if located and rng.random() < 0.6 else ""
        day = f"20{rng.randint(10, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        anomaly = f"{rng.uniform(0.05, 2.5):.4f}" if rng.random() < 0.8 else ""
        self.observations.append(
            [obs_uuid, str(observer_id), lat, lon, accuracy, str(taxon_id), grade, day, anomaly]
        )
        return obs_uuid

    def new_photo_id(self) -> int:
        return unique_int(self.rng, 1_000_000, 400_000_000, self.photo_ids)

    def photo(
        self,
        photo_id: int,
        obs_uuid: str,
        observer_id: int,
        position: int,
        ext: str,
        size: tuple[int, int],
    ) -> None:
        """A photos.csv row; width and height are the original's (the medium one scaled up)."""
        licence = INAT_LICENSES[len(self.photos) % len(INAT_LICENSES)]
        width, height = (str(round(side * 2048 / max(size))) for side in size)
        self.photos.append([new_uuid(self.rng), str(photo_id), obs_uuid, str(observer_id), ext,
                            licence, width, height, str(position)])  # fmt: skip


def picture_size(data: bytes | None, fallback: tuple[int, int]) -> tuple[int, int]:
    """The size a viewer shows (EXIF orientation applied); `fallback` if it does not decode."""
    try:
        with Image.open(io.BytesIO(data or b"")) as image:
            width, height = image.size
            return (
                (height, width) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)
            )
    except OSError:
        return fallback


def write_inat_open_data(files: Path, sampler: Sampler) -> None:
    """The four root `*.csv.gz` TSVs and the same four in the dated metadata tarball."""
    rng = seeded("inat-open-data")
    src = "inat-open-data"
    root, nodes, odd = build_inat_taxa()
    taxa_rows = [["taxon_id", "ancestry", "rank_level", "rank", "name", "active"]]
    for node in sorted(root.walk(), key=lambda n: n.id):
        if node is not odd["missing"]:  # still named in its descendants' ancestry
            ancestry = "/".join(str(a.id) for a in node.ancestors())
            active = "false" if node is odd["inactive"] else "true"
            level = str(INAT_RANK_LEVELS[node.rank])
            taxa_rows.append([str(node.id), ancestry, level, node.rank, node.name, active])
    observers = [(rng.randrange(1000, 9_000_000), login, name) for login, name in OBSERVERS]
    inat21 = partial(sampler.nth, "inat21")
    plants = {
        ("Pieris rapae", 0): Plant("exact", of=inat21("Pieris rapae", 0)),
        ("Helianthus annuus", 0): Plant("exact", of=inat21("Helianthus annuus", 1)),
        ("Taraxacum officinale", 0): Plant("near", of=inat21("Taraxacum officinale", 4)),
        ("Trametes versicolor", 1): Plant("near"),
        ("Bufo bufo", 1): Plant("corrupt", "html-error-page"),
        ("Coccinella septempunctata", 2): Plant("corrupt", "truncated-jpeg"),
        ("Cantharellus cibarius", 3): Plant("missing"),
        ("Pieris japonica", 1): Plant("special", "palette-png-transparent"),
        ("Lutra lutra", 0): Plant("special", "exif-orientation-6"),
    }  # fmt: skip
    jpeg_extension = {("Amanita muscaria", 1), ("Pinus sylvestris", 0), ("Mentha × piperita", 2)}
    first_observation = {
        "Cyanistes caeruleus": odd["inactive"],
        "Danaus plexippus": odd["subspecies"],
        "Helianthus annuus": odd["apostrophe"],
    }
    dump, synonym_records = InatDump(rng), []
    for taxon in (t for t in TAXA if t.count(src)):
        remaining, n = taxon.count(src), 0
        while remaining:
            group = min(remaining, rng.choice([1, 1, 2, 2, 3]))
            remaining -= group
            node = (
                first_observation.get(taxon.name, nodes[taxon.name])
                if n == 0
                else nodes[taxon.name]
            )
            grade = GRADES.get(node.rank, "needs_id")
            observer = rng.choice(observers)
            obs_uuid = dump.observation(observer[0], node.id, grade)
            for position in range(group):
                plant = sampler.resolve(plants.get((taxon.name, n)), src, taxon)
                png = plant is not None and plant.detail == "palette-png-transparent"
                ext = "png" if png else "jpeg" if (taxon.name, n) in jpeg_extension else "jpg"
                size = rng.choice([(128, 96), (96, 128), (120, 90)])
                photo_id = dump.new_photo_id()
                this = ref(src, photo_id)
                location = {"file": f"{INAT}/photos/{photo_id}/medium.{ext}"}
                data = sampler.image(this, taxon.key, size, plant)
                dump.photo(photo_id, obs_uuid, observer[0], position, ext, picture_size(data, size))
                if data is not None:
                    write(files, location["file"], data)
                sampler.record(this, location, taxon, plant, taxon_id=str(node.id))
                if node is odd["inactive"]:
                    synonym_records.append(this)
                n += 1
    # One photo attached to two observations (same photo_id and uuid): two rows, one record.
    shared = dump.photos[3]
    shared_taxon = next(row[5] for row in dump.observations if row[0] == shared[2])
    second_observation = dump.observation(int(shared[3]), int(shared_taxon), "research")
    dump.photos.append([*shared[:2], second_observation, *shared[3:8], "0"])
    # An observation whose taxon is not in taxa.csv: its photo is a record without a taxon.
    observer_id = observers[5][0]
    unknown_observation = dump.observation(observer_id, UNKNOWN_TAXON_ID, "needs_id")
    photo_id = dump.new_photo_id()
    dump.photo(photo_id, unknown_observation, observer_id, 0, "jpg", (128, 96))
    this, location = ref(src, photo_id), {"file": f"{INAT}/photos/{photo_id}/medium.jpg"}
    write(files, location["file"], sampler.image(this, "unknown-taxon", (128, 96), None) or b"")
    sampler.record(this, location, None, None, taxon_id=str(UNKNOWN_TAXON_ID))
    photos = sorted(dump.photos, key=lambda row: int(row[1]))
    stranger = new_uuid(rng)  # an observation_uuid that observations.csv does not have
    bad_photos = [  # (0-based data row, row, reason)
        (9, [new_uuid(rng), "12a45", *photos[0][2:]], "photo_id is not an integer"),
        (30, [new_uuid(rng), "301234567", *photos[1][2:6]], "too few columns (6 of 9)"),
        (61, [new_uuid(rng), "1999999", stranger, *photos[2][3:]], "unknown observation_uuid"),
    ]
    for index, row, reason in bad_photos:
        photos.insert(index, row)
        sampler.bad(src, "photos.csv", index + 2, reason)
    shared_lines = [i + 2 for i, row in enumerate(photos) if row[1] == shared[1]]
    unknown = str(UNKNOWN_TAXON_ID)
    unknown_line = next(i + 2 for i, row in enumerate(dump.observations) if row[5] == unknown)
    dangling = f"taxon_id {unknown} not in taxa.csv: its photo is a record without a taxon"
    sampler.facts[src] = {
        "dangling": [{"file": "observations.csv", "line": unknown_line, "reason": dangling}],
        "duplicate_photo_ids": [
            {"photo_id": shared[1], "file": "photos.csv", "lines": shared_lines,
             "note": "one photo attached to two observations: one image record"}
        ],
        "missing_ancestor": {"taxon_id": odd["missing"].id, "rank": odd["missing"].rank,
                             "name": odd["missing"].name, "note": "in ancestry, not in taxa.csv"},
        "inactive_taxon": {"taxon_id": odd["inactive"].id, "name": odd["inactive"].name},
        "subspecies_taxon": {"taxon_id": odd["subspecies"].id, "name": odd["subspecies"].name},
        "synonym_records": synonym_records,
    }  # fmt: skip
    observer_rows = [
        ["observer_id", "login", "name"],
        *[[str(i), lg, nm] for i, lg, nm in observers],
    ]
    tables = {
        "observations.csv": tsv_bytes([OBSERVATION_COLUMNS, *dump.observations]),
        "observers.csv": tsv_bytes(observer_rows),
        "photos.csv": tsv_bytes([PHOTO_COLUMNS, *photos]),
        "taxa.csv": tsv_bytes(taxa_rows),
    }
    for name, data in tables.items():
        write(files, f"{INAT}/{name}.gz", gzip_bytes(data))
    snapshot = {f"{INAT_SNAPSHOT}/{name}": data for name, data in tables.items()}
    write(files, f"{INAT}/metadata/{INAT_SNAPSHOT}.tar.gz", tar_gz_bytes(snapshot))
