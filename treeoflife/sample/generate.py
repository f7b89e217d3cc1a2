"""Generate the bundled sample of every source, in the sources' exact formats (SOURCES.md).

Writes `files/<host>/<path>` (a `wget --mirror` layout that `tol demo` and the tests serve
over loopback HTTP), `expected.json` (ground truth) and `manifests/sample/*.toml`.
Deterministic: seeded, fixed archive timestamps, so a re-run writes identical bytes.

    python -m treeoflife.sample.generate [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from treeoflife.sample import SAMPLE_EXPECTED, SAMPLE_FILES
from treeoflife.sample.authorities import COL, GBIF, build_gbif, write_col, write_gbif
from treeoflife.sample.bioscan import (
    BIOSCAN1M,
    BIOSCAN5M,
    BIOSCAN5M_CSV,
    write_bioscan_1m,
    write_bioscan_5m,
)
from treeoflife.sample.eol import EOL_DATA, EOL_DH, write_eol
from treeoflife.sample.inat import INAT, INAT21, write_inat21, write_inat_open_data
from treeoflife.sample.ledger import Sampler
from treeoflife.sample.species import (
    GENUS_AUTHORSHIP,
    HOMONYM_GENERA,
    RANKS,
    SOURCES,
    SYNONYMS,
    TAXA,
)

REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "sample"


# ------------------------------------------------------------------ manifests

MANIFESTS: dict[str, dict[str, Any]] = {
    "inat21": {
        "version": "2021-sample",
        "title": "iNaturalist 2021 competition (bundled sample)",
        "homepage": "https://github.com/visipedia/inat_comp/tree/master/2021",
        "license": "Non-commercial research and education only; images may not be redistributed",
        "license_notes": "The iNat2021 terms forbid distributing the images: a release catalogs\n"
        "iNat21 records (file name, class) but ships no iNat21 image bytes. Each image also has\n"
        "its photographer's licence (images[].license -> licenses[]). This sample is synthetic.",
        "base_url": f"https://{INAT21}/",
        "files": {
            "train": ("train.json.tar.gz", {"member": "train.json"}, "pull"),
            "val": ("val.json.tar.gz", {"member": "val.json"}, "pull"),
            "train_images": ("train.tar.gz", {}, "images"),
            "val_images": ("val.tar.gz", {}, "images"),
        },
    },
    "inat-open-data": {
        "version": "20241127-sample",
        "title": "iNaturalist Open Data (bundled sample)",
        "homepage": "https://github.com/inaturalist/inaturalist-open-data",
        "license": "Per photo: CC0, CC-BY, CC-BY-NC, CC-BY-SA, CC-BY-ND, CC-BY-NC-SA, CC-BY-NC-ND",
        "license_notes": "photos.license holds each photo's licence (CC0 is 1.0, the others 4.0).\n"
        "Keep the attribution; NC licences carry the non-commercial restriction; ND licences\n"
        "allow no adaptation (resizing arguably is one). This sample is synthetic.",
        "base_url": f"https://{INAT}/",
        "files": {
            role: (f"{role}.csv.gz", {}, "pull")
            for role in ("photos", "observations", "taxa", "observers")
        },
        "options": {"photo_size": "medium", "image_base_url": f"https://{INAT}/photos/"},
    },
    "bioscan-1m": {
        "version": "2023-06-sample",
        "title": "BIOSCAN-1M Insect dataset (bundled sample)",
        "homepage": "https://github.com/bioscan-ml/BIOSCAN-1M",
        "license": "Per record (copyright_license); CC BY-NC-SA 4.0 where unsure",
        "license_notes": "The cards disagree (CC BY 3.0 on the current HF card, CC BY-NC-SA 4.0\n"
        "on the older one and the TreeOfLife-10M card): read copyright_* per record.\n"
        "This sample is synthetic.",
        "base_url": f"https://{BIOSCAN1M}/",
        "files": {
            "metadata": ("BIOSCAN_Insect_Dataset_metadata.tsv", {}, "pull"),
            "images": (
                "cropped_256.zip",
                {"member_prefix": "bioscan/images/cropped_256/"},
                "images",
            ),
        },
    },
    "bioscan-5m": {
        "version": "2024-sample",
        "title": "BIOSCAN-5M Insect dataset (bundled sample)",
        "homepage": "https://github.com/bioscan-ml/BIOSCAN-5M",
        "license": "CC BY 3.0 Unported (CBG Photography Group, Centre for Biodiversity Genomics)",
        "license_notes": "A dataset-level licence: attribute the CBG Photography Group.\n"
        "This sample is synthetic.",
        "base_url": f"https://{BIOSCAN5M}/",
        "files": {
            "metadata": (
                "BIOSCAN_5M_Insect_Dataset_metadata_MultiTypes.zip",
                {"member": BIOSCAN5M_CSV},
                "pull",
            ),
            "images_train": (
                "BIOSCAN_5M_cropped_256_train.zip",
                {"member_prefix": "bioscan5m/images/cropped_256/"},
                "images",
            ),
            "images_eval": (
                "BIOSCAN_5M_cropped_256_eval.zip",
                {"member_prefix": "bioscan5m/images/cropped_256/"},
                "images",
            ),
        },  # fmt: skip
    },
    "eol": {
        "version": "2024-sample",
        "title": "Encyclopedia of Life media manifest and Dynamic Hierarchy 1.1 (bundled sample)",
        "homepage": "https://opendata.eol.org/dataset/images-list",
        "license": "Per image (the manifest's License Name); the taxonomy files are open data",
        "license_notes": "Keep Copyright Owner, the source URL and the licence link for\n"
        "attribution; drop all-rights-reserved images. This sample is synthetic.",
        "base_url": f"https://{EOL_DATA}/",
        "files": {
            "media_manifest": ("media_manifest.tgz", {"member": "media_manifest_*.csv"}, "pull"),
            "taxon": (f"https://{EOL_DH}", {"member": "taxon.tab"}, "pull"),
            "vernacular_names": ("vernacular_names.csv", {}, "pull"),
            "provider_ids": ("provider_ids.csv.gz", {}, "pull"),
        },
    },
    "gbif-backbone": {
        "version": "2023-08-28-sample",
        "title": "GBIF Backbone Taxonomy (bundled sample extract)",
        "homepage": "https://www.gbif.org/dataset/d7dddbf4-2cf0-4f39-9b2a-bb099caae36c",
        "license": "CC BY 4.0",
        "license_notes": "Cite GBIF Secretariat: GBIF Backbone Taxonomy, doi:10.15468/39omei.",
        "base_url": f"https://{GBIF}/",
        "files": {"backbone": ("backbone.zip", {}, "pull")},
    },
    "col": {
        "version": "2024-sample",
        "title": "Catalogue of Life 2024 Annual Checklist, ColDP (bundled sample extract)",
        "homepage": "https://www.catalogueoflife.org",
        "license": "CC BY 4.0",
        "license_notes": "Cite the Catalogue of Life Checklist (2024 Annual Checklist).",
        "base_url": f"https://{COL}/",
        "files": {"coldp": ("2024_coldp.zip", {}, "pull")},
    },
}


def mirror_path(files: Path, url: str) -> Path:
    """Where `wget --mirror` puts `url` under `files`: `<host>/<path>`."""
    return files / url.split("://", 1)[1]


def write_manifests(files: Path, manifests_dir: Path) -> None:
    """One TOML per sample source, pinning each file's size and sha256."""
    manifests_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in MANIFESTS.items():
        text = json.dumps  # a JSON string is a valid TOML basic string
        lines = ["# Written by `python -m treeoflife.sample.generate`: regenerate, do not edit.",
                 "[source]", f"name = {text(name)}"]  # fmt: skip
        lines += [
            f"{key} = {text(spec[key], ensure_ascii=False)}"
            for key in ("version", "title", "homepage", "license")
        ]
        lines += [
            f'license_notes = """\n{spec["license_notes"]}"""',
            f"base_url = {text(spec['base_url'])}",
        ]
        for role, (path, extra, stage) in spec["files"].items():
            data = mirror_path(
                files, path if "://" in path else spec["base_url"] + path
            ).read_bytes()
            lines += ["", f"[files.{role}]", f"path = {text(path)}"]
            lines += [f"{key} = {text(value)}" for key, value in extra.items()]
            lines += [
                f"size = {len(data)}",
                f'sha256 = "{hashlib.sha256(data).hexdigest()}"',
                f'stage = "{stage}"',
            ]
        if "options" in spec:
            lines += [
                "",
                "[options]",
                *[f"{key} = {text(value)}" for key, value in spec["options"].items()],
            ]
        (manifests_dir / f"{name}.toml").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ expected.json

ABOUT = {
    "generator": "python -m treeoflife.sample.generate",
    "records": "per source, the image records a loader should produce: well-formed rows, one per "
    "source_id, whose references resolve; records with corrupt or missing images count",
    "source_id": "inat21 images[].id; inat-open-data photo_id; bioscan-1m sampleid; bioscan-5m "
    "processid; eol EOL content ID (all as strings)",
    "line": "1-based line in the decompressed file, header included; JSON files give a pointer",
    "ranks": "each record's true [kingdom, phylum, class, order, family, genus, species]; species "
    "is the full name; null below the record's rank, all null where the taxon is unknown",
    "role": "original | exact_duplicate | near_duplicate | corrupt | missing",
    "image": "file: the path under files/ (<host>/<path>); member: the member in that archive",
}


def expected_document(sampler: Sampler) -> dict[str, Any]:
    """Ground truth: counts, planted rows and images, homonyms, synonyms, taxa, records."""

    def records_of(name: str) -> list[dict[str, str]]:
        return [r for source in SOURCES for r in sampler.by_taxon.get((source, name), [])]

    homonyms = []
    for genus in HOMONYM_GENERA:
        taxa = [t for t in TAXA if t.genus == genus]
        homonyms.append({"genus": genus, "taxa": [
            {"kingdom": t.path[0], "family": t.path[4], "species": t.name,
             "authorship": GENUS_AUTHORSHIP[(t.path[0], genus)], "records": records_of(t.name)}
            for t in taxa]})  # fmt: skip
    synonyms = [
        {"name": s.name, "authorship": s.authorship, "accepted": s.accepted,
         "gbif_status": s.gbif_status, "used_by": s.used_by or None,
         "records": sampler.facts[s.used_by]["synonym_records"] if s.used_by else []}
        for s in SYNONYMS
    ]  # fmt: skip
    species = [
        {"name": t.name, "rank": t.rank, "authorship": t.authorship, "common": t.common or None,
         **dict(zip(RANKS, t.ranks7(), strict=True)), "epithet": t.epithet or None,
         "hybrid": t.hybrid, "counts": t.counts}
        for t in TAXA
    ]  # fmt: skip
    sources = {
        source: {
            "records": len(records),
            "bad_rows": sampler.bad_rows[source],
            **sampler.facts[source],
        }
        for source, records in sampler.records.items()
    }
    return {
        "about": ABOUT,
        "rank_order": list(RANKS),
        "sources": sources,
        "exact_duplicate_groups": sampler.exact_groups,
        "near_duplicate_pairs": sampler.near_pairs,
        "corrupt_images": sampler.corrupt,
        "special_images": sampler.special,
        "missing_images": sampler.missing,
        "homonyms": homonyms,
        "synonyms": synonyms,
        "species": species,
        "records": sampler.records,
    }


def dump_expected(document: dict[str, Any]) -> str:
    """Indented JSON, with one line per record so the file stays short and diffable."""
    head = {key: value for key, value in document.items() if key != "records"}
    blocks = []
    for source, records in document["records"].items():
        lines = ",\n".join(f"   {json.dumps(record, ensure_ascii=False)}" for record in records)
        blocks.append(f"  {json.dumps(source)}: [\n{lines}\n  ]")
    text = json.dumps(head, indent=1, ensure_ascii=False)
    return text[:-2] + ',\n "records": {\n' + ",\n".join(blocks) + "\n }\n}\n"


# ------------------------------------------------------------------ entry point


def generate_sample(files: Path, expected_path: Path, manifests_dir: Path) -> dict[str, Any]:
    """Write the sample files, expected.json and the manifests; return the expected document."""
    if files.exists():
        shutil.rmtree(files)
    files.mkdir(parents=True)
    sampler = Sampler()
    write_inat21(files, sampler)
    write_inat_open_data(files, sampler)
    specimens = write_bioscan_1m(files, sampler)
    write_bioscan_5m(files, sampler, specimens)
    gbif_root, gbif_nodes = build_gbif()
    write_eol(files, sampler, gbif_nodes)
    write_gbif(files, gbif_root, gbif_nodes)
    write_col(files)
    write_manifests(files, manifests_dir)
    document = expected_document(sampler)
    expected_path.write_text(dump_expected(document))
    return document


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="write DIR/files, DIR/expected.json and DIR/manifests (default: into the package, "
        "and the manifests into the repository's manifests/sample)",
    )
    args = parser.parse_args(argv)
    if args.out:
        generate_sample(args.out / "files", args.out / "expected.json", args.out / "manifests")
    else:
        generate_sample(SAMPLE_FILES, SAMPLE_EXPECTED, REPO_MANIFESTS)


if __name__ == "__main__":
    main()
