"""Classification metrics as CLIP_benchmark reports them: top-1, top-5 (only with at least
five classes) and mean per-class recall (sklearn's balanced accuracy), all in percent.
"""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of rows whose true class is among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean() * 100.0)


def mean_per_class_recall(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the share of their images predicted right."""
    classes = np.unique(labels)
    recalls = [(predicted[labels == c] == c).mean() for c in classes]
    return float(np.mean(recalls) * 100.0)


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """top1, top5 (None with fewer than 5 classes) and mean_per_class_recall, in percent."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5) if scores.shape[1] >= 5 else None,
        "mean_per_class_recall": mean_per_class_recall(scores.argmax(axis=1), labels),
    }
