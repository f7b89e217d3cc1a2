"""Fixtures for the evaluation tests: a synthetic tree of taxa whose images are coloured
shapes, those images in the three dataset layouts (ImageFolder, CLIP_benchmark webdataset,
release shards), and a `tol-tiny` checkpoint trained a few steps to tell the taxa apart.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from treeoflife.evaluate.tasks import TaxonLabel
from treeoflife.evaluate.templates import OPENAI_IMAGENET_TEMPLATES

# Two kingdoms, three phyla, ... six species: each a colour and a shape.
# kingdom phylum class order family genus epithet | common name | colour | shape
_TAXA_TABLE = """
Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia | black-billed magpie | 220 30 30|circle
Animalia Chordata Aves Passeriformes Paridae Cyanistes caeruleus | blue tit | 30 30 220|circle
Animalia Chordata Mammalia Carnivora Canidae Vulpes vulpes | red fox | 240 140 20|square
Animalia Arthropoda Insecta Lepidoptera Nymphalidae Danaus plexippus | monarch | 240 220 30|tri
Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus robur | english oak | 30 160 40|square
Plantae Tracheophyta Magnoliopsida Asterales Asteraceae Helianthus annuus |sunflower|150 60 200|tri
"""
IMAGES_PER_TAXON = 8
RANK_NAMES = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
TRAIN_TEXT_TYPES = ("taxon_com", "sci", "com", "taxon", "sci_com")


@dataclass(frozen=True)
class SyntheticTaxon:
    ranks: tuple[str, ...]
    common: str
    colour: tuple[int, int, int]
    shape: str

    @property
    def label(self) -> TaxonLabel:
        return TaxonLabel(
            name=f"{self.ranks[5]} {self.ranks[6]}", ranks=self.ranks, common=self.common
        )

    @property
    def folder(self) -> str:
        return f"{self.ranks[5]}_{self.ranks[6]}"


def synthetic_taxa() -> list[SyntheticTaxon]:
    taxa = []
    for line in _TAXA_TABLE.strip().splitlines():
        ranks, common, colour, shape = (part.strip() for part in line.split("|"))
        rgb = tuple(int(c) for c in colour.split())
        taxa.append(SyntheticTaxon(tuple(ranks.split()), common, rgb, shape))  # type: ignore[arg-type]
    return taxa


def draw(taxon: SyntheticTaxon, rng: random.Random, size: int = 64) -> Image.Image:
    """The taxon's shape in its colour (jittered) on a grey noisy background."""
    background = tuple(rng.randint(90, 150) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in taxon.colour)
    r = rng.randint(16, 26)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if taxon.shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif taxon.shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def taxa() -> list[SyntheticTaxon]:
    return synthetic_taxa()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, taxa) -> Path:
    """ImageFolder tree: root/test/<Genus_species>/<n>.jpg, plus classes.csv with ranks."""
    root = tmp_path_factory.mktemp("imagefolder") / "synthetic"
    rows = ["name,kingdom,phylum,class,order,family,genus,species,common"]
    for t in taxa:
        folder = root / "test" / t.folder
        folder.mkdir(parents=True)
        rng = random.Random(f"eval-{t.folder}")
        for i in range(IMAGES_PER_TAXON):
            (folder / f"{i}.jpg").write_bytes(jpeg(draw(t, rng)))
        rows.append(",".join([t.folder, *t.ranks, t.common]))
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def clip_benchmark_wds(tmp_path_factory, taxa) -> Path:
    """CLIP_benchmark layout: test/nshards.txt, test/0.tar, test/1.tar, classnames.txt."""
    root = tmp_path_factory.mktemp("wds") / "synthetic"
    (root / "test").mkdir(parents=True)
    samples = []
    for index, t in enumerate(taxa):
        rng = random.Random(f"eval-{t.folder}")
        samples += [(jpeg(draw(t, rng)), index) for _ in range(IMAGES_PER_TAXON)]
    half = len(samples) // 2
    for shard, chunk in enumerate((samples[:half], samples[half:])):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for j, (image, index) in enumerate(chunk):
                key = f"s{shard * half + j:07d}"
                add_member(tar, f"{key}.jpg", image)
                add_member(tar, f"{key}.cls", str(index).encode())
    (root / "test" / "nshards.txt").write_text("2\n")
    (root / "classnames.txt").write_text("\n".join(t.folder for t in taxa) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text(
        "a photo of a {c}.\nitap of a {c}.\n"
    )
    return root


def release_members(t: SyntheticTaxon, image: bytes, key: str) -> dict[str, bytes]:
    """A release sample in ARCHITECTURE.md's format (json ranks, BioCLIP's text files)."""
    sci = f"{t.ranks[5]} {t.ranks[6]}"
    taxonomic = " ".join(t.ranks)
    tagged = " ".join(f"{r} {v}" for r, v in zip(RANK_NAMES, t.ranks, strict=True))
    record = {
        "treeoflife_id": key,
        "source": "synthetic",
        "taxonomy": dict(zip(RANK_NAMES, [*t.ranks[:6], sci], strict=True)),  # species: binomial
        "common": t.common,
    }
    return {
        "jpg": image,
        "sci.txt": f"a photo of {sci}.".encode(),
        "com.txt": f"a photo of {t.common}.".encode(),
        "taxon.txt": f"a photo of {taxonomic}.".encode(),
        "taxonTag.txt": f"a photo of {tagged}.".encode(),
        "sci_com.txt": f"a photo of {sci} with common name {t.common}.".encode(),
        "taxon_com.txt": f"a photo of {taxonomic} with common name {t.common}.".encode(),
        "taxonTag_com.txt": f"a photo of {tagged} with common name {t.common}.".encode(),
        "scientific_name.txt": sci.encode(),
        "taxonomic_name.txt": taxonomic.encode(),
        "common_name.txt": t.common.encode(),
        "json": json.dumps(record).encode(),
    }  # fmt: skip


@pytest.fixture(scope="session")
def release_root(tmp_path_factory, taxa) -> Path:
    """release/val/shard-000000.tar … with uuid-like keys and sizes.json."""
    root = tmp_path_factory.mktemp("release") / "release"
    (root / "val").mkdir(parents=True)
    sizes = {}
    for shard in range(2):
        name = f"shard-{shard:06d}.tar"
        with tarfile.open(root / "val" / name, "w") as tar:
            count = 0
            for t in taxa:
                rng = random.Random(f"release-{shard}-{t.folder}")
                for i in range(IMAGES_PER_TAXON // 2):
                    key = f"{shard:02d}{t.folder.lower()}{i:04d}".replace("_", "-")
                    for ext, data in release_members(t, jpeg(draw(t, rng)), key).items():
                        add_member(tar, f"{key}.{ext}", data)
                    count += 1
        sizes[name] = count
    (root / "val" / "sizes.json").write_text(json.dumps(sizes))
    return root


def train_tiny(path: Path, taxa: list[SyntheticTaxon], steps: int = 80, seed: int = 0) -> Path:
    """Train `tol-tiny` with open_clip's ClipLoss to match shapes with their taxon captions."""
    import open_clip

    from treeoflife.train.models import TINY_MODEL, register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, preprocess, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    loss_fn = open_clip.ClipLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        # Every taxon once per batch: ClipLoss's off-diagonal pairs are then true negatives.
        chosen = [t for _ in range(3) for t in rng.sample(taxa, len(taxa))][: len(taxa)]
        pixels = torch.stack([preprocess(draw(t, rng)) for t in chosen])
        texts = [
            rng.choice(OPENAI_IMAGENET_TEMPLATES).format(t.label.text(rng.choice(TRAIN_TEXT_TYPES)))
            for t in chosen
        ]
        image_features, text_features, scale = model(pixels, tokenizer(texts))
        loss = loss_fn(image_features, text_features, scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, taxa) -> Path:
    return train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", taxa)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """An untrained tol-tiny saved as a checkpoint file (a baseline)."""
    import open_clip

    from treeoflife.train.models import TINY_MODEL, register_model_configs

    register_model_configs()
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def chance_margin(num_classes: int) -> float:
    return 100.0 / num_classes


np_random = np.random.default_rng
