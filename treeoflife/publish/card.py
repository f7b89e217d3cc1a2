"""The dataset card, `release/README.md`: YAML front matter the Hub reads (licence, task,
size, per-split `configs`) and a body generated from the catalog and manifest.

Validated with huggingface_hub's own `DatasetCard`/`DatasetCardData`, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from huggingface_hub import DatasetCard, DatasetCardData

from treeoflife.errors import TolError
from treeoflife.shards import text

CARD_NAME = "README.md"
# Licence ids the Hub knows (subset that sources use); anything else goes as `other`.
HUB_LICENSES = {
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
}
SPLIT_NAMES = {"train": "train", "val": "validation"}
SIZE_BINS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
SOURCE_CITATIONS = {
    "inat21": "Van Horn et al., *Benchmarking Representation Learning for Natural World "
    "Image Collections*, CVPR 2021 (iNat2021).",
    "inat-open-data": "iNaturalist contributors, iNaturalist Open Data "
    "(https://github.com/inaturalist/inaturalist-open-data).",
    "bioscan-1m": "Gharaee et al., *A Step Towards Worldwide Biodiversity Assessment: "
    "The BIOSCAN-1M Insect Dataset*, NeurIPS 2023 Datasets and Benchmarks.",
    "bioscan-5m": "Gharaee et al., *BIOSCAN-5M: A Multimodal Dataset for Insect "
    "Biodiversity*, NeurIPS 2024 Datasets and Benchmarks.",
    "eol": "Encyclopedia of Life (https://eol.org), media and Dynamic Hierarchy.",
}
BIOCLIP_BIBTEX = """@inproceedings{stevens2024bioclip,
  title     = {{BioCLIP}: A Vision Foundation Model for the Tree of Life},
  author    = {Samuel Stevens and Jiaman Wu and Matthew J Thompson and Elizabeth G Campolongo
               and Chan Hee Song and David Edward Carlyn and Li Dong and Wasila M Dahdul
               and Charles Stewart and Tanya Berger-Wolf and Wei-Lun Chao and Yu Su},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year      = {2024}
}"""


def size_category(samples: int) -> str:
    for bound, label in SIZE_BINS:
        if samples < bound:
            return label
    return "n>1T"


def _table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def card_data(manifest: dict, licenses: list[str], hosted: int) -> DatasetCardData:
    """Front matter: licence, tasks, size, and one config per hosted split set."""
    hosted_splits = set(manifest["splits"])
    if len(licenses) == 1 and licenses[0] in HUB_LICENSES:
        license_fields: dict = {"license": licenses[0]}
    else:
        license_fields = {
            "license": "other",
            "license_name": "per-image",
            "license_link": "licenses.csv",
        }
    configs = []
    default_files = [
        {"split": SPLIT_NAMES[split], "path": f"{split}/*.tar"}
        for split in ("train", "val")
        if split in hosted_splits
    ]
    if default_files:
        configs.append({"config_name": "default", "data_files": default_files})
    if "train_small" in hosted_splits:
        configs.append(
            {
                "config_name": "train_small",
                "data_files": [{"split": "train", "path": "train_small/*.tar"}],
            }
        )
    return DatasetCardData(
        language=["en"],
        pretty_name="TreeOfLife (regenerated)",
        size_categories=[size_category(hosted)],
        task_categories=["image-classification", "zero-shot-image-classification"],
        tags=["biology", "tree-of-life", "taxonomy", "webdataset", "bioclip"],
        configs=configs,
        **license_fields,
    )


def build_card(release_dir: Path) -> DatasetCard:
    """The card for a release folder (needs manifest.json and catalog.parquet)."""
    manifest_path = release_dir / "manifest.json"
    catalog_path = release_dir / "catalog.parquet"
    for path in (manifest_path, catalog_path):
        if not path.is_file():
            raise TolError(f"{path} is missing: run `tol shard` to build the release first")
    manifest = json.loads(manifest_path.read_text())
    con = duckdb.connect()
    try:
        quoted = str(catalog_path).replace("'", "''")
        con.execute(
            f"CREATE TEMP VIEW images AS SELECT * FROM read_parquet('{quoted}') "
            "WHERE split <> 'train_small'"
        )
        body = _body(con, manifest)
        licenses = [
            row[0]
            for row in con.execute(
                "SELECT DISTINCT license FROM images WHERE hosted ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    data = card_data(manifest, licenses, manifest["counts"]["hosted"])
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return card


def _body(con: duckdb.DuckDBPyConnection, manifest: dict) -> str:
    counts = manifest["counts"]
    sources = con.execute(
        "SELECT source, count(*) FILTER (WHERE hosted), count(*) FILTER (WHERE NOT hosted), "
        "count(DISTINCT concat_ws('|', kingdom, phylum, class, \"order\", family, genus, species)) "
        "FROM images GROUP BY 1 ORDER BY 1"
    ).fetchall()
    rank_rows = []
    total = max(con.execute("SELECT count(*) FROM images").fetchall()[0][0], 1)
    for rank in text.RANKS:
        known, distinct = con.execute(
            f'SELECT count("{rank}"), count(DISTINCT "{rank}") FROM images'
        ).fetchall()[0]
        rank_rows.append((rank, distinct, known, f"{100 * known / total:.1f}%"))
    licenses = con.execute(
        "SELECT license, count(*) FILTER (WHERE hosted), count(*) FILTER (WHERE NOT hosted) "
        "FROM images GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    status = con.execute(
        "SELECT coalesce(resolution_status, 'unknown'), count(*) FROM images "
        "GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    example = con.execute(
        'SELECT kingdom, phylum, class, "order", family, genus, species, common '
        "FROM images WHERE hosted ORDER BY species IS NULL, treeoflife_id LIMIT 1"
    ).fetchall()
    split_rows = [
        (split, totals["samples"], totals["shards"], f"{totals['bytes'] / 1e6:.1f} MB")
        for split, totals in manifest["splits"].items()
    ]
    excluded = sorted(counts.get("excluded", {}).items())
    last_train = max(manifest["splits"].get("train", {}).get("shards", 1) - 1, 0)
    parts = [
        "# TreeOfLife (regenerated)",
        "",
        "Images of organisms with 7-rank taxonomic labels and BioCLIP's text types, built by "
        "the treeoflife toolkit (`tol shard`) in the TreeOfLife-10M layout: "
        "webdataset shards whose samples are keyed by `treeoflife_id` (a UUIDv5 of source "
        "and source id), a `catalog.csv` with the published TreeOfLife-10M columns, and a "
        "`catalog.parquet` adding licence, rights holder, source URL, sha256 and phash.",
        "",
        "## Splits",
        "",
        _table(["split", "images", "shards", "size"], split_rows),
        "",
        "`train_small` is a uniform subset of `train` (its samples repeat in both). "
        "Images of one observation or specimen never straddle `train` and `val`.",
        "",
        "## Sources",
        "",
        _table(["source", "images in shards", "catalog only", "taxa"], sources),
        "",
        f"{counts['records']} source records; {counts['released']} released, "
        f"{counts['hosted']} of them in the shards and {counts['catalog_only']} listed in "
        "the catalog only (their licence forbids re-hosting: fetch them from `source_url`).",
        "",
        _table(["excluded because", "records"], excluded) if excluded else "Nothing excluded.",
        "",
        "## Taxa per rank (coverage)",
        "",
        _table(["rank", "distinct names", "images with rank", "coverage"], rank_rows),
        "",
        _table(["resolution status", "images"], status),
        "",
        "## Licences",
        "",
        "Every image keeps its own licence; `licenses.csv` gives it with the rights holder "
        "and source URL per image. Attribute the rights holder when you reuse an image.",
        "",
        _table(["licence", "in shards", "catalog only"], licenses),
        "",
        "## Text types",
        "",
        "Each sample holds `<id>.jpg`, `<id>.json` (the full record with provenance) and:",
        "",
    ]
    if example:
        row = dict(zip(list(text.RANKS) + ["common"], example[0], strict=True))
        texts = text.sample_texts(row, row["common"])
        parts.append(_table(["member", "example"], [(f"`{k}`", v) for k, v in texts.items()]))
    parts += [
        "",
        "## Loading",
        "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("train/shard-{{000000..{last_train:06d}}}.tar", shardshuffle=100)',
        'ds = ds.decode("pil").to_tuple("jpg", "taxon_com.txt")',
        "# webdataset lower-cases field names: read taxonTag.txt as taxontag.txt",
        "",
        "from datasets import load_dataset",
        'ds = load_dataset("webdataset", data_files={"train": "train/*.tar"}, split="train")',
        "```",
        "",
        "Each split folder holds `sizes.json` (samples per shard, read by open_clip) and "
        "`wids.json` (a `wids.ShardListDataset` spec for indexed access); `manifest.json` "
        "lists every shard's sha256. Check a download with `tol verify RELEASE_DIR`.",
        "",
        "## Citation",
        "",
        "Please cite BioCLIP, whose TreeOfLife-10M this release follows:",
        "",
        "```bibtex",
        BIOCLIP_BIBTEX,
        "```",
        "",
        "and the sources the images come from:",
        "",
    ]
    parts += [f"- {SOURCE_CITATIONS.get(src, src)}" for src, *_ in sources]
    return "\n".join(parts) + "\n"


def write_card(release_dir: Path) -> Path:
    """Write (or rewrite) `release/README.md`; returns its path."""
    card = build_card(release_dir)
    path = release_dir / CARD_NAME
    partial = release_dir / f".{CARD_NAME}.partial"
    partial.write_text(str(card))
    partial.replace(path)
    return path
