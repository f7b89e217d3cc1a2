"""Open-ended classification over the whole tree (BioCLIP's demo, pybioclip's tree-of-life
classifier): every taxon of a catalog is a class; its text embedding is computed once per
checkpoint and taxa list and cached on disk; each rank's label is aggregated from the
species probabilities, walking down the tree so the ranks agree with the species picked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import torch

from treeoflife.errors import TolError
from treeoflife.evaluate.checkpoints import (
    CheckpointSpec,
    LoadedModel,
    checkpoint_digest,
    load_model,
    parse_checkpoint,
)
from treeoflife.evaluate.tasks import TaxonLabel, class_texts, encode_images, normalise_ranks
from treeoflife.evaluate.templates import TEMPLATE_SETS
from treeoflife.evaluate.zeroshot import class_embeddings, logit_scale
from treeoflife.workspace import RANKS, table_names

log = logging.getLogger(__name__)

_RANK_SQL = ", ".join(f'"{rank}"' for rank in RANKS)


def default_cache_dir() -> Path:
    base = os.environ.get("TOL_CACHE") or Path.home() / ".cache" / "treeoflife"
    return Path(base) / "taxa-embeddings"


# --------------------------------------------------------------------------- taxa


def _distinct_taxa_sql(relation: str, common: str) -> str:
    """Distinct 7-rank paths with any rank filled, each with its most frequent common name."""
    filled = ", ".join(f"NULLIF(trim(\"{rank}\"), '')" for rank in RANKS)
    return f"""
        SELECT {_RANK_SQL}, mode(NULLIF(trim({common}), '')) AS common
        FROM {relation}
        WHERE coalesce({filled}) IS NOT NULL
        GROUP BY ALL
    """


def load_taxa(source: Path) -> list[TaxonLabel]:
    """Distinct 7-rank taxa of a workspace (taxa_resolved, else records), or of a release
    `catalog.csv` / `catalog.parquet`; sorted by their taxonomic path."""
    source = Path(source)
    con = duckdb.connect()
    try:
        if source.is_dir():
            catalog = source / "catalog.duckdb"
            if not catalog.exists():
                for name in ("catalog.parquet", "catalog.csv"):
                    if (source / "release" / name).exists():
                        return load_taxa(source / "release" / name)
                raise TolError(
                    f"{source}: neither a workspace (catalog.duckdb) nor a release folder"
                )
            con.execute(f"ATTACH '{catalog}' AS ws (READ_ONLY)")
            tables = table_names(con, "ws")
            rows = []
            if "taxa_resolved" in tables:
                rows = con.execute(_distinct_taxa_sql("ws.taxa_resolved", "common")).fetchall()
            if not rows:
                log.warning("%s: taxa_resolved is empty; using the source names in records", source)
                rows = con.execute(_distinct_taxa_sql("ws.records", "common_name")).fetchall()
        elif source.suffix == ".parquet":
            rows = con.execute(_distinct_taxa_sql(f"read_parquet('{source}')", "common")).fetchall()
        elif source.suffix == ".csv":
            relation = f"read_csv('{source}', header=true, all_varchar=true)"
            rows = con.execute(_distinct_taxa_sql(relation, "common")).fetchall()
        else:
            raise TolError(f"{source}: give a workspace folder, catalog.csv or catalog.parquet")
    except duckdb.Error as exc:
        raise TolError(
            f"{source}: cannot read taxa ({exc}); it needs columns {', '.join(RANKS)}, common"
        ) from None
    finally:
        con.close()
    by_key: dict[tuple[str, ...], TaxonLabel] = {}
    for *ranks, common in rows:
        normal = normalise_ranks(ranks)
        label = TaxonLabel(name=" ".join(r for r in normal if r), ranks=normal, common=common or "")
        by_key.setdefault(normal, label)
    if not by_key:
        raise TolError(f"{source}: no taxa with any rank filled")
    return [by_key[k] for k in sorted(by_key)]


def taxa_digest(taxa: Sequence[TaxonLabel], text_type: str, templates: Sequence[str]) -> str:
    """sha256 of the taxa list and how it is turned into text."""
    digest = hashlib.sha256(json.dumps([text_type, list(templates)]).encode())
    for taxon in taxa:
        digest.update(("\t".join(taxon.ranks) + "\t" + taxon.common + "\n").encode())
    return digest.hexdigest()


def taxa_classifier(
    loaded: LoadedModel,
    taxa: Sequence[TaxonLabel],
    *,
    text_type: str = "taxon_com",
    templates: Sequence[str] = TEMPLATE_SETS["openai"],
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> tuple[torch.Tensor, Path]:
    """(D, N) text embeddings of every taxon, from the cache when this checkpoint has already
    embedded this taxa list (key: checkpoint sha256 + taxa/text sha256)."""
    cache_dir = cache_dir or default_cache_dir()
    key = f"{checkpoint_digest(loaded.spec)[:20]}-{taxa_digest(taxa, text_type, templates)[:20]}"
    path = cache_dir / f"{key}.npy"
    if path.exists():
        array = np.load(path)
        if array.shape[1] == len(taxa):
            return torch.from_numpy(array), path
        log.warning(
            "%s: cached shape %s does not fit %d taxa; recomputing", path, array.shape, len(taxa)
        )
    on_batch = (
        progress(f"{loaded.spec.label}: embedding {len(taxa)} taxa", len(taxa))
        if progress
        else None
    )
    classifier = (
        class_embeddings(
            loaded.model,
            loaded.tokenizer,
            class_texts(taxa, text_type),
            templates,
            classes_per_batch=max(1, 2560 // len(templates)),
            device=device,
            on_batch=on_batch,
        )
        .float()
        .cpu()
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, classifier.numpy())
    partial.replace(path)
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "checkpoint": asdict(loaded.spec),
                "taxa": len(taxa),
                "text_type": text_type,
                "templates": len(templates),
            },
            indent=2,
        )
    )
    return classifier, path


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class TaxonScore:
    """A candidate taxon and its probability (softmax over all taxa)."""

    ranks: tuple[str, ...]
    common: str
    probability: float

    @property
    def name(self) -> str:
        return TaxonLabel(name="", ranks=self.ranks, common=self.common).scientific


@dataclass(frozen=True)
class RankCall:
    """A label at one rank and the summed probability of all taxa under it."""

    rank: str
    name: str
    probability: float


@dataclass
class Prediction:
    """One image's prediction: the top-k taxa, the lineage picked rank by rank (top-down,
    each rank's label maximising the summed probability under the label picked above it),
    and per rank the top labels by summed probability (pybioclip's per-rank view)."""

    image: str
    top: list[TaxonScore]
    lineage: list[RankCall]
    species: TaxonScore
    by_rank: dict[str, list[RankCall]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "species": {**asdict(self.species), "name": self.species.name},
            "lineage": [asdict(c) for c in self.lineage],
            "top": [{**asdict(t), "name": t.name} for t in self.top],
            "by_rank": {rank: [asdict(c) for c in calls] for rank, calls in self.by_rank.items()},
        }


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (argpartition: no full sort)."""
    k = min(k, len(values))
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]


class TaxonIndex:
    """Integer codes of each taxon's path at every depth, for fast sums by rank label.

    A label's code combines its parent's code with its own name, so homonyms under
    different parents (genus *Morus* in Animalia and Plantae) stay apart.
    """

    def __init__(self, taxa: Sequence[TaxonLabel]):
        self.taxa = list(taxa)
        self.codes: list[np.ndarray] = []
        self.names: list[np.ndarray] = []
        parent = np.zeros(len(self.taxa), dtype=np.int64)
        for depth in range(7):
            name_codes, names = pd.factorize(pd.Series([t.ranks[depth] for t in self.taxa]))
            combined = parent * (len(names) + 1) + name_codes
            codes, uniques = pd.factorize(combined)
            self.codes.append(codes.astype(np.int64))
            self.names.append(np.asarray(names, dtype=object)[uniques % (len(names) + 1)])
            parent = self.codes[-1]

    def decode(self, probabilities: np.ndarray, image: str, top_k: int, rank_k: int) -> Prediction:
        scores = [self._score(i, probabilities[i]) for i in _top(probabilities, top_k)]
        subset = np.arange(len(self.taxa))
        lineage, by_rank = [], {}
        for depth, rank in enumerate(RANKS):
            codes, names = self.codes[depth], self.names[depth]
            if rank_k:
                totals = np.bincount(codes, weights=probabilities, minlength=len(names))
                by_rank[rank] = [
                    RankCall(rank, names[c], float(totals[c])) for c in _top(totals, rank_k)
                ]
            sub_codes = codes[subset]
            within = np.bincount(sub_codes, weights=probabilities[subset], minlength=len(names))
            pick = int(np.argmax(within))
            lineage.append(RankCall(rank, names[pick], float(within[pick])))
            subset = subset[sub_codes == pick]
        leaf = int(subset[0])  # one taxon per 7-rank path
        return Prediction(image, scores, lineage, self._score(leaf, probabilities[leaf]), by_rank)

    def _score(self, index: int, probability: float) -> TaxonScore:
        taxon = self.taxa[index]
        return TaxonScore(taxon.ranks, taxon.common, float(probability))


def predict_features(
    image_features: np.ndarray,
    image_names: Sequence[str],
    taxa: Sequence[TaxonLabel],
    classifier: torch.Tensor,
    scale: float,
    *,
    top_k: int = 5,
    rank_k: int = 3,
) -> list[Prediction]:
    """Predictions from normalised image features and the taxa's (D, N) text embeddings."""
    index = TaxonIndex(taxa)
    logits = scale * (image_features.astype(np.float32) @ classifier.float().numpy())
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return [
        index.decode(p, name, top_k, rank_k)
        for p, name in zip(probabilities, image_names, strict=True)
    ]


def predict_images(
    checkpoint: str | Path | CheckpointSpec,
    model_name: str,
    image_paths: Sequence[str | Path],
    taxa_source: Path | Sequence[TaxonLabel],
    top_k: int = 5,
    *,
    text_type: str = "taxon_com",
    templates: str = "openai",
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> list[Prediction]:
    """Classify images over every taxon of a catalog (workspace, catalog.csv/parquet, or a
    list of TaxonLabel). Text embeddings are cached under `cache_dir`."""
    spec = (
        checkpoint
        if isinstance(checkpoint, CheckpointSpec)
        else parse_checkpoint(checkpoint, model_name)
    )
    if templates not in TEMPLATE_SETS:
        raise TolError(f"templates must be one of {', '.join(TEMPLATE_SETS)}, not {templates!r}")
    paths = [Path(p) for p in image_paths]
    for path in paths:
        if not path.is_file():
            raise TolError(f"{path}: no such image file")
    taxa = load_taxa(taxa_source) if isinstance(taxa_source, (str, Path)) else list(taxa_source)
    loaded = load_model(spec, device)
    classifier, _ = taxa_classifier(
        loaded,
        taxa,
        text_type=text_type,
        templates=TEMPLATE_SETS[templates],
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
    features = encode_images(loaded.model, loaded.preprocess, paths, device=device)
    return predict_features(
        features, [str(p) for p in paths], taxa, classifier, logit_scale(loaded.model), top_k=top_k
    )
