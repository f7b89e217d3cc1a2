"""Zero-shot: the classifier equals open_clip's own, and a trained model beats chance."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES as OPEN_CLIP_TEMPLATES

from treeoflife.evaluate import evaluate
from treeoflife.evaluate.checkpoints import load_model, parse_checkpoint
from treeoflife.evaluate.tasks import class_texts, load_task
from treeoflife.evaluate.templates import OPENAI_IMAGENET_TEMPLATES, from_clip_benchmark, render
from treeoflife.evaluate.zeroshot import class_embeddings


def test_templates_are_openais_80_as_open_clip_ships_them():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t.format("X") for t in OPENAI_IMAGENET_TEMPLATES] == [
        t("X") for t in OPEN_CLIP_TEMPLATES
    ]
    assert render(("a photo of {}.",), "Pica hudsonia") == ["a photo of Pica hudsonia."]
    assert from_clip_benchmark(["a photo of a {c}.", ""]) == ("a photo of a {}.",)


@pytest.mark.parametrize(
    ("checkpoint", "text_type"),
    [
        ("random_checkpoint", "taxon_com"),
        ("trained_checkpoint", "taxon_com"),
        ("trained_checkpoint", "com"),
    ],
)
def test_classifier_matches_open_clips_build_zero_shot_classifier(
    request, taxa, checkpoint, text_type
):
    loaded = load_model(parse_checkpoint(request.getfixturevalue(checkpoint), "tol-tiny"))
    names = class_texts([t.label for t in taxa], text_type)
    ours = class_embeddings(
        loaded.model, loaded.tokenizer, names, OPENAI_IMAGENET_TEMPLATES, classes_per_batch=4
    )
    theirs = open_clip.build_zero_shot_classifier(
        loaded.model,
        tokenizer=loaded.tokenizer,
        classnames=names,
        templates=OPEN_CLIP_TEMPLATES,
        num_classes_per_batch=10,
        device="cpu",
    )
    assert ours.shape == theirs.shape == (64, len(taxa))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_trained_model_beats_chance_by_a_wide_margin(
    tmp_path, image_folder, trained_checkpoint, taxa
):
    toml = tmp_path / "synthetic.toml"
    toml.write_text(
        f'[task]\nname = "synthetic"\ntext_type = "taxon_com"\n'
        f'[data]\ndir = "{image_folder.name}"\n'
    )
    result = evaluate(
        [f"trained={trained_checkpoint}", "untrained=random"],
        [load_task(toml)],
        model_name="tol-tiny",
        data_root=image_folder.parent,
        shots=(1,),
        seeds=(0, 1),
    )
    chance = 100 / len(taxa)
    trained, untrained = (run.tasks["synthetic"] for run in result.runs)
    assert trained.num_classes == len(taxa) and trained.num_templates == 80
    assert trained.zero_shot["top1"] >= 3 * chance
    assert trained.zero_shot["top5"] is not None
    assert trained.zero_shot["top1"] > untrained.zero_shot["top1"]
