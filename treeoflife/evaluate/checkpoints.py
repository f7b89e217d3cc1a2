"""Which models an evaluation compares: `[LABEL=][MODEL@]SOURCE` specs loaded through
open_clip, where SOURCE is a checkpoint file, `random` (untrained baseline) or a pretrained tag.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from treeoflife.errors import TolError

log = logging.getLogger(__name__)

RANDOM_INIT = "random"


@dataclass(frozen=True)
class CheckpointSpec:
    """A model to evaluate: its label in tables, open_clip model name and weights."""

    label: str
    model_name: str
    source: str  # a file path, `random`, or an open_clip pretrained tag (e.g. openai)

    @property
    def is_file(self) -> bool:
        return self.source != RANDOM_INIT and Path(self.source).exists()


def parse_checkpoint(text: str | Path, default_model: str) -> CheckpointSpec:
    """`runs/a/final.pt`, `trained=runs/a/final.pt`, `clip=ViT-B-16@openai`, `base=random`."""
    text = str(text)
    label, sep, rest = text.partition("=")
    if not sep or "/" in label or not label:
        label, rest = "", text
    model, at, source = rest.rpartition("@")
    if not at:
        model, source = stored_model_name(Path(rest)) or default_model, rest
    if not source:
        raise TolError(f"checkpoint {text!r}: give a file, `random` or a pretrained tag")
    if not label:
        label = Path(source).stem if Path(source).exists() else source
        if Path(source).name in ("final.pt", "latest.pt", "epoch_latest.pt"):
            label = f"{Path(source).parent.name}/{Path(source).stem}"
    return CheckpointSpec(label=label, model_name=model or default_model, source=source)


def stored_model_name(path: Path) -> str | None:
    """The open_clip model name a `tol train` checkpoint records (its `model` key), if any."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a zip-format torch file, or not ours: fall back to --model
        return None
    name = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    return name if isinstance(name, str) else None


@dataclass
class LoadedModel:
    spec: CheckpointSpec
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable


def load_model(spec: CheckpointSpec, device: str = "cpu") -> LoadedModel:
    """Build the open_clip model with the spec's weights, in eval mode."""
    import open_clip

    from treeoflife.train.models import register_model_configs

    register_model_configs()
    if spec.model_name not in open_clip.list_models():
        raise TolError(f"unknown open_clip model {spec.model_name!r} for {spec.label}")
    pretrained: str | None = None if spec.source == RANDOM_INIT else spec.source
    if pretrained and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        if pretrained not in tags:
            raise TolError(
                f"checkpoint {spec.source!r} ({spec.label}): no such file, and not a pretrained "
                f"tag of {spec.model_name} ({', '.join(tags) or 'none'})"
            )
    if pretrained is None:
        torch.manual_seed(0)  # the random baseline is the same model every run
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_name, pretrained=pretrained, device=device
        )
    except (RuntimeError, KeyError, OSError) as exc:
        raise TolError(f"cannot load {spec.source} as {spec.model_name}: {exc}") from None
    model.eval()
    return LoadedModel(spec, model, preprocess, open_clip.get_tokenizer(spec.model_name))


def checkpoint_digest(spec: CheckpointSpec) -> str:
    """sha256 of the checkpoint file (or of the spec for random/pretrained tags)."""
    digest = hashlib.sha256()
    if spec.is_file:
        with Path(spec.source).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(f"{spec.model_name}@{spec.source}".encode())
    return digest.hexdigest()
