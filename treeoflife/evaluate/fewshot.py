"""Few-shot classification as BioCLIP reports it: SimpleShot CL2N nearest class mean.

Per seed, each class's images are shuffled; the first k are the support set, the rest the
queries. Support and query features are centred by the support mean and L2-normalised;
each query takes the class whose support centroid is nearest (Euclidean). Reported as
mean ± standard deviation (population, as BioCLIP's numpy std) over the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treeoflife.evaluate.metrics import classification_metrics

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def cl2n(features: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Centre, then scale each row to unit length."""
    centred = features - centre
    return centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-12)


def nearest_centroid_scores(
    support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, num_classes: int
) -> np.ndarray:
    """(Q, C) scores = minus the distance from each CL2N query to each class's CL2N centroid.

    Classes without support get -inf. The centre is the mean of the support features.
    """
    centre = support.mean(axis=0)
    support_n, queries_n = cl2n(support, centre), cl2n(queries, centre)
    centroids = np.zeros((num_classes, support.shape[1]), dtype=np.float64)
    present = np.zeros(num_classes, dtype=bool)
    for c in np.unique(support_labels):
        centroids[c] = support_n[support_labels == c].mean(axis=0)
        present[c] = True
    # |q - c|² = |q|² + |c|² - 2 q·c: no (Q, C, D) temporary (Rare Species: 10K × 400 × 512)
    squared = (
        (queries_n**2).sum(axis=1)[:, None]
        + (centroids**2).sum(axis=1)[None, :]
        - 2.0 * queries_n @ centroids.T
    )
    scores = -np.sqrt(squared.clip(min=0.0))
    scores[:, ~present] = -np.inf
    return scores


def split_support(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of support and query images: per class, shuffle and take the first `shots`."""
    rng = np.random.default_rng(seed)
    support, queries = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        support.extend(members[:shots])
        queries.extend(members[shots:])
    return np.array(support, dtype=np.int64), np.array(queries, dtype=np.int64)


@dataclass
class FewShotResult:
    shots: int
    per_seed: list[dict[str, float | None]]

    def summary(self) -> dict[str, float | None]:
        """Mean and std of each metric over the seeds (`top1`, `top1_std`, ...)."""
        out: dict[str, float | None] = {"shots": self.shots, "seeds": len(self.per_seed)}
        for metric in self.per_seed[0]:
            values = [r[metric] for r in self.per_seed if r[metric] is not None]
            out[metric] = float(np.mean(values)) if values else None
            out[f"{metric}_std"] = float(np.std(values)) if values else None
        return out


def few_shot(
    features: np.ndarray,
    labels: np.ndarray,
    shots: int,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
) -> FewShotResult:
    """k-shot CL2N nearest-centroid metrics per seed; classes with ≤ k images give no queries."""
    num_classes = int(labels.max()) + 1
    per_seed = []
    for seed in seeds:
        support, queries = split_support(labels, shots, seed)
        if len(queries) == 0:
            raise ValueError(f"{shots}-shot leaves no query images (every class has ≤ {shots})")
        scores = nearest_centroid_scores(
            features[support].astype(np.float64),
            labels[support],
            features[queries].astype(np.float64),
            num_classes,
        )
        scores[np.isneginf(scores)] = -1e9
        per_seed.append(classification_metrics(scores, labels[queries]))
    return FewShotResult(shots=shots, per_seed=per_seed)
