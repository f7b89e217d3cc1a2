"""Metrics: top-1, top-5 only with ≥ 5 classes, mean per-class recall = balanced accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from treeoflife.evaluate.metrics import classification_metrics, mean_per_class_recall, topk_accuracy


def test_topk_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.4, 0.35, 0.25]])
    labels = np.array([0, 0, 1, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(50.0)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(50.0)  # row 1: 0 is third
    assert topk_accuracy(scores, labels, 3) == pytest.approx(100.0)


def test_top5_needs_five_classes():
    scores = np.random.default_rng(0).normal(size=(20, 4))
    labels = np.arange(20) % 4
    assert classification_metrics(scores, labels)["top5"] is None
    scores5 = np.random.default_rng(0).normal(size=(20, 6))
    assert classification_metrics(scores5, np.arange(20) % 6)["top5"] is not None


def test_mean_per_class_recall_equals_balanced_accuracy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, size=200)
    labels[:50] = 0  # unbalanced
    predicted = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 7, size=200))
    expected = 100 * balanced_accuracy_score(labels, predicted)
    assert mean_per_class_recall(predicted, labels) == pytest.approx(expected)
