"""Zero-shot classification: one text embedding per class (the mean of its L2-normalised
prompt embeddings over the templates, renormalised), and image-to-class cosine logits.
Matches open_clip's `build_zero_shot_classifier` (tests check it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from treeoflife.evaluate.metrics import classification_metrics
from treeoflife.evaluate.templates import render


@torch.no_grad()
def class_embeddings(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    classes_per_batch: int = 10,
    device: str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(D, C) classifier: column c is class c's template-averaged, normalised text embedding."""
    columns = []
    for start in range(0, len(class_names), classes_per_batch):
        batch = class_names[start : start + classes_per_batch]
        texts = [prompt for name in batch for prompt in render(templates, name)]
        tokens = tokenizer(texts).to(device)
        embedded = model.encode_text(tokens, normalize=True)
        mean = embedded.reshape(len(batch), len(templates), -1).mean(dim=1)
        columns.append((mean / mean.norm(dim=1, keepdim=True)).T)
        if on_batch:
            on_batch(len(batch))
    return torch.cat(columns, dim=1)


def logit_scale(model: torch.nn.Module) -> float:
    """The model's learned temperature (exp of logit_scale), 100 if it has none."""
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp()) if scale is not None else 100.0


def zero_shot_scores(
    image_features: np.ndarray, classifier: torch.Tensor, scale: float
) -> np.ndarray:
    """(N, C) logits: scale × cosine similarity of normalised images and class embeddings."""
    return scale * image_features @ classifier.float().cpu().numpy()


def zero_shot_metrics(
    image_features: np.ndarray, labels: np.ndarray, classifier: torch.Tensor, scale: float
) -> dict[str, float | None]:
    return classification_metrics(zero_shot_scores(image_features, classifier, scale), labels)
