"""The BIOSCAN-1M and BIOSCAN-5M metadata and image packages of the sample."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from treeoflife.sample.archives import csv_bytes, tsv_bytes, write, zip_bytes
from treeoflife.sample.images import encode, paint, palette_for, seeded
from treeoflife.sample.ledger import Plant, Sampler, ref
from treeoflife.sample.species import RANKS, TAXA, Taxon

BIOSCAN1M = "zenodo.org/records/8030065/files"
BIOSCAN5M = "zenodo.org/records/11973457/files"
BIOSCAN5M_CSV = "bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv"


BIOSCAN1M_COLUMNS = (
    "sampleid processid uri name phylum class order family subfamily tribe genus species "
    "subspecies nucraw image_file large_diptera_family medium_diptera_family "
    "small_diptera_family large_insect_order medium_insect_order small_insect_order "
    "chunk_number copyright_license copyright_holder copyright_institution copyright_contact "
    "photographer author"
).split()
BIOSCAN5M_COLUMNS = (
    "processid sampleid taxon phylum class order family subfamily genus species dna_bin "
    "dna_barcode country province_state coord-lat coord-lon image_measurement_value "
    "area_fraction scale_factor inferred_ranks split index_bioscan_1M_insect chunk"
).split()
BOLD_PREFIXES = ["ACGAZ", "BCGAZ", "MLFBF", "GMOKH", "CNGBA", "UPCCB", "AACTA", "YGEN"]
BIOSCAN_LICENCES = ["CreativeCommons - Attribution Non-Commercial Share-Alike",
                    "CreativeCommons - Attribution"]  # fmt: skip
BIOSCAN_RIGHTS = [  # copyright_holder, _institution, _contact, photographer, author
    "CBG Photography Group", "Centre for Biodiversity Genomics", "ccdbcurator@gmail.com",
    "CBG Robotic Imager", "CBG Photography Group",
]  # fmt: skip
BIOSCAN_SPLITS = ["train", "validation", "test", "no_split"]
PLACES = [("Canada", "Ontario", 43.53, -80.22), ("Costa Rica", "Guanacaste", 10.84, -85.61),
          ("South Africa", "Western Cape", -33.93, 18.86), ("Pakistan", "Punjab", 31.52, 74.35),
          ("Thailand", "Chiang Mai", 18.79, 98.98)]  # fmt: skip
SPECIES_SPLITS = ["train", "train", "val", "train", "test", "train"]  # 5M, species-labelled


@dataclass(frozen=True)
class Specimen:
    """A BIOSCAN-1M specimen that BIOSCAN-5M publishes again (same ids, same image bytes)."""

    sampleid: str
    processid: str
    dna_bin: str
    barcode: str
    taxon: Taxon
    index: int  # its 0-based data row in the 1M metadata
    this: dict[str, str]


def barcode(rng: random.Random) -> str:
    bases = "".join(rng.choice("ACGT") for _ in range(rng.choice([658, 658, 680, 712])))
    return bases[:-12] + "N" * 12 if rng.random() < 0.3 else bases


def bold_ids(rng: random.Random) -> tuple[str, str, str]:
    """A (sampleid, processid, BIN) triple in BOLD's styles."""
    well = f"{rng.choice('ABCDEFGH')}{rng.randint(1, 12):02d}"
    processid = f"{rng.choice(BOLD_PREFIXES)}{rng.randint(100, 9999)}-{rng.randint(19, 22)}"
    bin_letters = rng.choice("ABCDE") + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
    return (
        f"BIOUG{rng.randint(10000, 99999)}-{well}",
        processid,
        f"BOLD:A{bin_letters}{rng.randint(1000, 9999)}",
    )


def write_bioscan_1m(files: Path, sampler: Sampler) -> list[Specimen]:
    """The metadata TSV (`not_classified` gaps), cropped_256.zip, and an evil zip."""
    rng = seeded("bioscan-1m")
    src = "bioscan-1m"
    plants = {("Cecidomyiidae", 2): Plant("corrupt", "truncated-jpeg")}
    rows, members, specimens = [BIOSCAN1M_COLUMNS], {}, []
    jobs = [(t, n) for t in TAXA for n in range(t.count(src))]
    for taxon, n in jobs:
        sampleid, processid, dna_bin = bold_ids(rng)
        chunk = 113 if (taxon, n) == jobs[-1] else rng.randint(1, 112)
        if (taxon.name, n) == ("Sciaridae", 0):  # as in the TreeOfLife-10M catalog
            sampleid, chunk = "BIOUG71436-B05", 97
        names = dict(zip(RANKS, taxon.ranks7(), strict=True))
        ranks = [names["order"], names["family"], taxon.subfamily, taxon.tribe, names["genus"],
                 names["species"], None]  # fmt: skip
        diptera = names["order"] == "Diptera"
        splits = [rng.choice(BIOSCAN_SPLITS) if diptera else "no_split" for _ in range(3)]
        splits += [rng.choice(BIOSCAN_SPLITS) for _ in range(3)]
        licence = BIOSCAN_LICENCES[n == 1 and not diptera]
        sequence = barcode(rng)
        rows.append([sampleid, processid, dna_bin, taxon.name, "Arthropoda", "Insecta",
                     *[name or "not_classified" for name in ranks], sequence, f"{sampleid}.jpg",
                     *splits, str(chunk), licence, *BIOSCAN_RIGHTS])  # fmt: skip
        this, plant = ref(src, sampleid), plants.get((taxon.name, n))
        data = sampler.image(this, taxon.key, rng.choice([(114, 86), (86, 114)]), plant) or b""
        member = f"bioscan/images/cropped_256/part{chunk}/{sampleid}.jpg"
        members[member] = data
        location = {"file": f"{BIOSCAN1M}/cropped_256.zip", "member": member}
        sampler.record(this, location, taxon, plant, chunk_number=chunk)
        if plant is None:
            specimens.append(
                Specimen(sampleid, processid, dna_bin, sequence, taxon, len(rows) - 2, this)
            )
    rows.append([*bold_ids(rng), "Sciaridae", "Arthropoda", "Insecta", "Diptera", "Sciaridae"])
    sampler.bad(src, "BIOSCAN_Insect_Dataset_metadata.tsv", len(rows), "too few columns (8 of 28)")
    write(files, f"{BIOSCAN1M}/BIOSCAN_Insect_Dataset_metadata.tsv", tsv_bytes(rows))
    write(files, f"{BIOSCAN1M}/cropped_256.zip", zip_bytes(members))
    harmless = encode(paint(palette_for("evil"), seeded("evil"), (64, 48)))
    evil = ["../escape.jpg", "/abs/path.jpg", "bioscan/images/cropped_256/part1/BIOUG00001-A01.jpg"]
    write(
        files,
        f"{BIOSCAN1M}/evil_members.zip",
        zip_bytes(dict.fromkeys(evil, harmless), folders=False),
    )
    return specimens


def bioscan5m_chunk(split: str, processid: str) -> str:
    digest = hashlib.md5(processid.encode()).hexdigest()
    return {"pretrain": digest[:2], "train": digest[:1], "other_heldout": digest[:1]}.get(split, "")


def write_bioscan_5m(files: Path, sampler: Sampler, specimens: list[Specimen]) -> None:
    """The metadata CSV in its MultiTypes zip, and the train (pretrain+train) and eval zips."""
    rng = seeded("bioscan-5m")
    src = "bioscan-5m"
    near = {("Gnamptogenys sulcata", 1): Plant("near")}
    jobs: list[tuple[Taxon, int, Specimen | None]] = [
        (t, n, None) for t in TAXA for n in range(t.count(src))
    ]
    jobs += [(s.taxon, -1, s) for s in specimens[1:10:3]]  # specimens the 1M dataset has too
    rows, members, labelled = [], {"train": {}, "eval": {}}, 0
    for taxon, n, specimen in jobs:
        sampleid, processid, dna_bin = bold_ids(rng)
        sequence, index = barcode(rng), ""
        if specimen:
            sampleid, processid, dna_bin = specimen.sampleid, specimen.processid, specimen.dna_bin
            sequence, index = specimen.barcode, str(specimen.index)
        names = {rank: name or "" for rank, name in zip(RANKS, taxon.ranks7(), strict=True)}
        species, extra = names["species"], {}
        if (taxon.name, n) == ("Bradysia", 1):  # a placeholder ("novel species") name
            species, split = "Bradysia malaise2719", "other_heldout"
            extra["placeholder_species"] = species
        elif species:
            split, labelled = SPECIES_SPLITS[labelled % len(SPECIES_SPLITS)], labelled + 1
        else:
            split = "pretrain"
        chunk = bioscan5m_chunk(split, processid)
        country, province, lat, lon = rng.choice(PLACES)
        located = rng.random() < 0.85
        coords = [f"{c + rng.uniform(-0.3, 0.3):.4f}" if located else "" for c in (lat, lon)]
        measures = [str(rng.randint(2000, 60000)), f"{rng.uniform(0.05, 0.6):.4f}",
                    f"{rng.uniform(1.0, 4.0):.4f}", str(rng.randint(0, 3))]  # fmt: skip
        rows.append([processid, sampleid, species or taxon.name, "Arthropoda", "Insecta",
                     names["order"], names["family"], taxon.subfamily, names["genus"], species,
                     dna_bin, sequence, country, province, *coords, *measures, split, index,
                     chunk])  # fmt: skip
        this = ref(src, processid)
        plant = (
            Plant("exact", of=specimen.this)
            if specimen
            else sampler.resolve(near.get((taxon.name, n)), src, taxon)
        )
        data = sampler.image(this, taxon.key, rng.choice([(114, 86), (128, 96)]), plant) or b""
        package = "train" if split in ("pretrain", "train") else "eval"
        member = (
            f"bioscan5m/images/cropped_256/{split}/{chunk + '/' if chunk else ''}{processid}.jpg"
        )
        members[package][member] = data
        location = {"file": f"{BIOSCAN5M}/BIOSCAN_5M_cropped_256_{package}.zip", "member": member}
        sampler.record(this, location, taxon, plant, split=split, **extra)
    rng.shuffle(rows)
    rows.insert(17, [*bold_ids(rng)[1::-1], "Cecidomyiidae", "Arthropoda", "Insecta", "Diptera"])
    rows.insert(0, BIOSCAN5M_COLUMNS)
    sampler.bad(src, "BIOSCAN_5M_Insect_Dataset_metadata.csv", 19, "too few columns (6 of 23)")
    metadata = zip_bytes({BIOSCAN5M_CSV: csv_bytes(rows)})
    write(files, f"{BIOSCAN5M}/BIOSCAN_5M_Insect_Dataset_metadata_MultiTypes.zip", metadata)
    for package, package_members in members.items():
        write(
            files, f"{BIOSCAN5M}/BIOSCAN_5M_cropped_256_{package}.zip", zip_bytes(package_members)
        )
