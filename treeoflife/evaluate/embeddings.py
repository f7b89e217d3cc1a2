"""Intrinsic evaluation (the paper's t-SNE figure): image embeddings of several models laid
out by t-SNE and coloured at each rank from kingdom to order, plus a number per rank saying
how well the space follows the tree (share of nearest neighbours in the same taxon).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from treeoflife.evaluate.checkpoints import CheckpointSpec, load_model
from treeoflife.evaluate.tasks import TaskData, TaxonLabel, encode_task
from treeoflife.workspace import RANKS

INTRINSIC_RANKS = ("kingdom", "phylum", "class", "order")
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173",
)  # fmt: skip


def rank_keys(labels: Sequence[TaxonLabel], rank: str) -> list[str | None]:
    """Each image's taxon at `rank` as a path key (kingdom…rank), None where unknown."""
    depth = RANKS.index(rank) + 1
    return [
        label.key(depth) if label.known and label.ranks[depth - 1] else None for label in labels
    ]


def neighbour_agreement(
    features: np.ndarray, keys: Sequence[str | None], k: int = 10
) -> dict[str, Any]:
    """Share of each image's k nearest neighbours (cosine) with its label, averaged; in [0, 1].

    Only images with a label at the rank take part. `chance` is the share a space with no
    taxonomic structure would give (two random other images sharing a label).
    """
    keep = np.array([key is not None for key in keys])
    labelled = [key for key in keys if key is not None]
    n = len(labelled)
    if n < 2:
        return {"score": None, "chance": None, "images": n, "labels": len(set(labelled)), "k": k}
    _, codes = np.unique(np.array(labelled, dtype=object), return_inverse=True)
    x = features[keep].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    k = min(k, n - 1)
    same = 0
    for start in range(0, n, 1024):  # chunked: an N × N similarity matrix may not fit
        sims = x[start : start + 1024] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        same += int((codes[nearest] == codes[start + rows][:, None]).sum())
    counts = np.bincount(codes).astype(np.float64)
    chance = float((counts * (counts - 1)).sum() / (n * (n - 1)))
    return {
        "score": same / (n * k),
        "chance": chance,
        "images": n,
        "labels": int(len(counts)),
        "k": k,
    }


def tsne_points(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the features (scikit-learn; perplexity capped for small sets)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine"
    )
    return tsne.fit_transform(features.astype(np.float32))


@dataclass
class ModelEmbedding:
    label: str
    points: np.ndarray  # (N, 2)
    agreement: dict[str, dict[str, Any]]  # rank -> neighbour_agreement result


@dataclass
class EmbeddingReport:
    """The t-SNE figure, the per-rank numbers, and where they were written."""

    models: list[ModelEmbedding]
    labels: list[TaxonLabel]
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": len(self.labels),
            "ranks": list(INTRINSIC_RANKS),
            "metric": "share of the k nearest neighbours (cosine) sharing the image's taxon",
            "models": {m.label: m.agreement for m in self.models},
            "files": {kind: str(path) for kind, path in self.files.items()},
        }

    def table(self) -> str:
        """Markdown: one row per model, one column per rank (score, chance in brackets)."""
        header = "| Model | " + " | ".join(r.capitalize() for r in INTRINSIC_RANKS) + " |"
        lines = [header, "|---|" + "---:|" * len(INTRINSIC_RANKS)]
        for m in self.models:
            cells = []
            for rank in INTRINSIC_RANKS:
                a = m.agreement[rank]
                cells.append("–" if a["score"] is None else f"{a['score']:.3f} ({a['chance']:.3f})")
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
        return (
            "\n".join(lines)
            + "\n\nk-NN taxon agreement (chance in brackets); 1 = neighbours share the taxon."
        )


def write_figure(report: EmbeddingReport, path: Path) -> Path:
    """A self-contained plotly HTML: one row per model, one column per rank."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = len(report.models), len(INTRINSIC_RANKS)
    titles = [f"{m.label}: {rank}" for m in report.models for rank in INTRINSIC_RANKS]
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=titles)
    for r, model in enumerate(report.models, start=1):
        for c, rank in enumerate(INTRINSIC_RANKS, start=1):
            depth = RANKS.index(rank)
            names = [
                lab.ranks[depth] if lab.known and lab.ranks[depth] else "unknown"
                for lab in report.labels
            ]
            order = {name: i for i, name in enumerate(sorted(set(names)))}
            colours = [
                "#cccccc" if name == "unknown" else PALETTE[order[name] % len(PALETTE)]
                for name in names
            ]
            score = model.agreement[rank]["score"]
            hover = [
                f"{name}<br>{lab.taxonomic}" for name, lab in zip(names, report.labels, strict=True)
            ]
            figure.add_trace(
                go.Scattergl(
                    x=model.points[:, 0],
                    y=model.points[:, 1],
                    mode="markers",
                    marker={"color": colours, "size": 6},
                    text=hover,
                    hoverinfo="text",
                    name=f"{model.label} {rank} (k-NN {score:.2f})" if score is not None else rank,
                    showlegend=False,
                ),
                row=r,
                col=c,
            )
    figure.update_layout(
        title="t-SNE of image embeddings, coloured by rank (kingdom → order)",
        height=360 * rows,
        width=330 * cols,
        template="plotly_white",
    )
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def intrinsic_evaluation(
    checkpoints: Sequence[CheckpointSpec],
    data: TaskData,
    out_dir: Path,
    *,
    k: int = 10,
    max_images: int | None = 2000,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> EmbeddingReport:
    """Embed the task's images with each checkpoint (trained and baseline), lay them out by
    t-SNE, score each rank, and write `embeddings.html` and `embeddings.json` to out_dir.

    `max_images` keeps t-SNE affordable: a seeded random subset when the task is larger.
    """
    models, labels = [], None
    for spec in checkpoints:
        loaded = load_model(spec, device)
        on_batch = progress(f"{spec.label}: images", None) if progress else None
        features = encode_task(
            loaded.model,
            loaded.preprocess,
            data,
            batch_size=batch_size,
            device=device,
            on_batch=on_batch,
        )
        image_labels = [features.classes[i] for i in features.labels]
        chosen = np.arange(len(image_labels))
        if max_images and len(chosen) > max_images:
            chosen = np.sort(
                np.random.default_rng(seed).choice(len(chosen), max_images, replace=False)
            )
        x = features.features[chosen]
        labels = [image_labels[i] for i in chosen]
        agreement = {
            rank: neighbour_agreement(x, rank_keys(labels, rank), k) for rank in INTRINSIC_RANKS
        }
        models.append(ModelEmbedding(spec.label, tsne_points(x, seed), agreement))
    report = EmbeddingReport(models=models, labels=labels or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    report.files["html"] = write_figure(report, out_dir / "embeddings.html")
    report.files["json"] = out_dir / "embeddings.json"
    report.files["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
