"""Intrinsic evaluation: k-NN taxon agreement in [0, 1] and the t-SNE figure written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from treeoflife.evaluate.checkpoints import parse_checkpoint
from treeoflife.evaluate.embeddings import (
    INTRINSIC_RANKS,
    intrinsic_evaluation,
    neighbour_agreement,
)
from treeoflife.evaluate.tasks import load_task, open_task_data


def test_agreement_is_one_for_separated_clusters_and_near_chance_for_noise():
    rng = np.random.default_rng(0)
    keys = [f"k{i % 3}" for i in range(90)]
    centres = rng.normal(size=(3, 8)) * 10
    clustered = centres[[i % 3 for i in range(90)]] + rng.normal(scale=0.1, size=(90, 8))
    perfect = neighbour_agreement(clustered, keys, k=5)
    assert perfect["score"] == pytest.approx(1.0)
    assert perfect["chance"] == pytest.approx((3 * 30 * 29) / (90 * 89))
    noise = neighbour_agreement(rng.normal(size=(90, 8)), keys, k=5)
    assert 0.0 <= noise["score"] < 0.6
    assert perfect["images"] == 90 and perfect["labels"] == 3


def test_unknown_labels_are_left_out():
    features = np.eye(4)
    result = neighbour_agreement(features, ["a", None, "a", None], k=3)
    assert result["images"] == 2 and result["k"] == 1
    assert result["score"] == 1.0
    assert neighbour_agreement(features, [None] * 4)["score"] is None


def test_intrinsic_evaluation_writes_plots_and_scores(tmp_path, release_root, trained_checkpoint):
    toml = tmp_path / "demo.toml"
    toml.write_text(load_task("demo").path.read_text())
    data = open_task_data(load_task(toml), release_root)
    specs = [
        parse_checkpoint(f"trained={trained_checkpoint}", "tol-tiny"),
        parse_checkpoint("baseline=random", "tol-tiny"),
    ]
    report = intrinsic_evaluation(specs, data, tmp_path / "out", k=5)
    html = (tmp_path / "out" / "embeddings.html").read_text()
    assert "plotly" in html.lower() and "trained: kingdom" in html and "baseline: order" in html
    written = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    assert set(written["models"]) == {"trained", "baseline"}
    for model in report.models:
        assert model.points.shape == (48, 2)
        for rank in INTRINSIC_RANKS:
            score = model.agreement[rank]["score"]
            assert 0.0 <= score <= 1.0
    trained = report.models[0].agreement
    assert (
        trained["kingdom"]["score"] >= trained["order"]["score"] - 1e-9
    )  # coarser ranks agree more
    assert "| trained |" in report.table()
