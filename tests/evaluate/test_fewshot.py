"""Few-shot: SimpleShot CL2N nearest class mean, checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from treeoflife.evaluate.fewshot import cl2n, few_shot, nearest_centroid_scores, split_support


def test_nearest_centroid_matches_a_hand_computation():
    # Two classes, two support images each, in 2-D.
    support = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 2.0], [0.0, 6.0]])
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[3.0, 1.0], [1.0, 5.0], [2.0, 2.0]])
    # By hand: centre = mean of support = (1.5, 2.0).
    # CL2N support: (0.5,-2)/|.|=(0.2425,-0.9701); (2.5,-2)/3.2016=(0.7809,-0.6247);
    #               (-1.5,0)/1.5=(-1,0); (-1.5,4)/4.2720=(-0.3511,0.9363)
    # centroid 0 = (0.5117, -0.7974); centroid 1 = (-0.6756, 0.4682)
    # query (3,1) -> (1.5,-1)/1.8028 = (0.8321,-0.5547): nearer centroid 0
    # query (1,5) -> (-0.5,3)/3.0414 = (-0.1644,0.9864): nearer centroid 1
    # query (2,2) -> (0.5,0)/0.5 = (1,0): d0 = |(0.4883,0.7974)| = 0.9350,
    #                                     d1 = |(1.6756,-0.4682)| = 1.7398 -> class 0
    scores = nearest_centroid_scores(support, labels, queries, num_classes=2)
    assert scores.argmax(axis=1).tolist() == [0, 1, 0]
    assert -scores[2, 0] == pytest.approx(0.9350, abs=1e-3)
    assert -scores[2, 1] == pytest.approx(1.7398, abs=1e-3)


def test_cl2n_centres_and_normalises():
    x = np.array([[1.0, 1.0], [3.0, 1.0]])
    out = cl2n(x, x.mean(axis=0))
    assert np.allclose(out, [[-1.0, 0.0], [1.0, 0.0]])


def test_split_support_takes_k_per_class_and_is_seeded():
    labels = np.repeat(np.arange(4), 6)
    support, queries = split_support(labels, 5, seed=3)
    assert np.bincount(labels[support]).tolist() == [5, 5, 5, 5]
    assert sorted(np.concatenate([support, queries]).tolist()) == list(range(24))
    again, _ = split_support(labels, 5, seed=3)
    other, _ = split_support(labels, 5, seed=4)
    assert support.tolist() == again.tolist() and support.tolist() != other.tolist()


def _reference_accuracy(features, labels, k, seed):
    """A direct loop version of the protocol, for comparison."""
    support, queries = split_support(labels, k, seed)
    centre = features[support].mean(axis=0)
    norm = lambda v: (v - centre) / np.linalg.norm(v - centre)  # noqa: E731
    classes = sorted(set(labels.tolist()))
    centroids = {
        c: np.mean([norm(features[i]) for i in support if labels[i] == c], axis=0) for c in classes
    }
    hits = 0
    for i in queries:
        q = norm(features[i])
        best = min(classes, key=lambda c: np.linalg.norm(q - centroids[c]))
        hits += best == labels[i]
    return 100.0 * hits / len(queries)


@pytest.mark.parametrize("k", [1, 5])
def test_few_shot_mean_and_std_over_seeds(k):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    labels = np.repeat(np.arange(5), 12)
    features = centres[labels] + rng.normal(scale=1.2, size=(60, 16))
    result = few_shot(features, labels, k, seeds=(0, 1, 2, 3, 4))
    reference = [_reference_accuracy(features, labels, k, seed) for seed in range(5)]
    assert [r["top1"] for r in result.per_seed] == pytest.approx(reference)
    summary = result.summary()
    assert summary["top1"] == pytest.approx(np.mean(reference))
    assert summary["top1_std"] == pytest.approx(np.std(reference))
    assert summary["shots"] == k and summary["seeds"] == 5
    assert summary["top5"] == pytest.approx(100.0)  # 5 classes: top-5 always holds the truth


def test_few_shot_needs_queries():
    with pytest.raises(ValueError, match="no query"):
        few_shot(np.eye(4), np.array([0, 1, 2, 3]), 1)
