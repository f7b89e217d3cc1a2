"""Synthetic release shards for the trainer tests: coloured shapes named as taxa.

Each class is a (colour, shape) pair given a made-up 7-rank taxonomy and a common name
("red circle"), written in the release shard format (jpg + the 10 text members + json,
`sizes.json` per split) with webdataset's TarWriter, so the loader reads what `tol shard`
writes and a tiny CLIP can learn to match pictures to names in a few dozen steps.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image, ImageDraw

from treeoflife.shards.text import sample_texts

COLOURS = {
    "red": ((220, 30, 30), "Rubra"),
    "green": ((30, 180, 40), "Viridis"),
    "blue": ((30, 60, 220), "Caerulea"),
    "yellow": ((230, 210, 20), "Flava"),
}
SHAPES = {"disc": ("Disciformes", "discus"), "ring": ("Anulares", "anulus")}


@dataclass(frozen=True)
class ShapeClass:
    colour: str
    shape: str

    @property
    def common(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def ranks(self) -> dict[str, str]:
        order, epithet = SHAPES[self.shape]
        genus = COLOURS[self.colour][1]
        return {
            "kingdom": "Animalia",
            "phylum": "Chordata",
            "class": "Aves",
            "order": order,
            "family": f"{genus}idae",
            "genus": genus,
            "species": f"{genus} {epithet}",
        }


CLASSES = tuple(ShapeClass(c, s) for c in COLOURS for s in SHAPES)


def draw(cls: ShapeClass, rng: random.Random, size: int = 64) -> Image.Image:
    """The class's shape in its colour, at a random place and size on a noisy grey field."""
    grey = rng.randint(150, 200)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    pen = ImageDraw.Draw(image)
    radius = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(radius, size - radius), rng.randint(radius, size - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    colour = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLOURS[cls.colour][0])
    if cls.shape == "disc":
        pen.ellipse(box, fill=colour)
    else:
        pen.ellipse(box, outline=colour, width=max(2, radius // 4))
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(
    folder: Path,
    *,
    shards: int = 4,
    per_shard: int = 48,
    seed: int = 0,
    size: int = 64,
    drop_member: str | None = None,
) -> list[Path]:
    """Release-format shards `shard-000000.tar`... plus `sizes.json`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths, sizes = [], {}
    for index in range(shards):
        path = folder / f"shard-{index:06d}.tar"
        with wds.TarWriter(str(path), mtime=0) as writer:
            for _ in range(per_shard):
                cls = rng.choice(CLASSES)
                key = str(uuid.UUID(int=rng.getrandbits(128)))
                sample = {"__key__": key, "jpg": jpeg(draw(cls, rng, size))}
                for member, text in sample_texts(cls.ranks, cls.common).items():
                    sample[member] = text
                sample["json"] = {"treeoflife_id": key, "common": cls.common, **cls.ranks}
                if drop_member:
                    sample.pop(drop_member, None)
                writer.write(sample)
        sizes[path.name] = per_shard
        paths.append(path)
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return paths


@pytest.fixture(scope="session")
def shape_shards(tmp_path_factory) -> Path:
    """4 shards x 48 coloured-shape samples in release format (`train/` split folder)."""
    folder = tmp_path_factory.mktemp("shapes") / "release" / "train"
    write_shards(folder)
    return folder
