"""Benchmark tasks: their TOML descriptions in `manifests/benchmarks/`, their class names per
text type, and their images read from an ImageFolder tree, CLIP_benchmark webdataset shards,
or treeoflife release shards; plus turning those images into model features.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import tarfile
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from treeoflife.errors import TolError
from treeoflife.manifest import repo_dir
from treeoflife.workspace import RANKS

log = logging.getLogger(__name__)

TEXT_TYPES = ("asis", "sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")
LAYOUTS = ("auto", "imagefolder", "wds", "release")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
WDS_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")
PUBLISHED_KINDS = ("zero_shot", "one_shot", "five_shot")


# --------------------------------------------------------------------------- class names


def normalise_ranks(values: Sequence[str | None]) -> tuple[str, ...]:
    """Seven rank names, '' where unknown; `species` holds the epithet alone (a binomial
    given as species is split, as TreeOfLife's catalog does)."""
    ranks = [(v or "").strip() for v in list(values)[:7]]
    ranks += [""] * (7 - len(ranks))
    genus, species = ranks[5], ranks[6]
    parts = species.split()
    if len(parts) >= 2 and (not genus or parts[0] == genus):
        ranks[5] = genus or parts[0]
        ranks[6] = " ".join(parts[1:])
    return tuple(ranks)


@dataclass(frozen=True)
class TaxonLabel:
    """A class: its name as the dataset gives it, and its ranks and common name if known."""

    name: str
    ranks: tuple[str, ...] = ()
    common: str = ""

    @property
    def known(self) -> bool:
        return any(self.ranks)

    @property
    def scientific(self) -> str:
        """`Genus epithet`, else the deepest known rank's name, else the dataset's name."""
        if not self.known:
            return self.name
        if self.ranks[5] and self.ranks[6]:
            return f"{self.ranks[5]} {self.ranks[6]}"
        return next(r for r in reversed(self.ranks) if r)

    @property
    def taxonomic(self) -> str:
        return " ".join(r for r in self.ranks if r) if self.known else self.name

    @property
    def tagged(self) -> str:
        if not self.known:
            return self.name
        return " ".join(f"{rank} {r}" for rank, r in zip(RANKS, self.ranks, strict=True) if r)

    def key(self, depth: int = 7) -> str:
        """A path key down to rank `depth` (1 = kingdom): homonyms in two kingdoms differ."""
        return "|".join(self.ranks[:depth]) if self.known else self.name

    def text(self, text_type: str) -> str:
        """The class string zero-shot puts in the templates (BioCLIP's eval text types)."""
        common = self.common or self.scientific
        with_common = (lambda s: f"{s} with common name {self.common}") if self.common else str
        match text_type:
            case "asis":
                return self.name
            case "sci":
                return self.scientific
            case "com":
                return common
            case "taxon":
                return self.taxonomic
            case "taxonTag":
                return self.tagged
            case "sci_com":
                return with_common(self.scientific)
            case "taxon_com":
                return with_common(self.taxonomic)
            case "taxonTag_com":
                return with_common(self.tagged)
        raise TolError(f"unknown text type {text_type!r}; choose one of {', '.join(TEXT_TYPES)}")


def class_texts(classes: Sequence[TaxonLabel], text_type: str) -> list[str]:
    """Each class's string for a text type; classes without ranks fall back to their name."""
    if text_type not in TEXT_TYPES:
        raise TolError(f"unknown text type {text_type!r}; choose one of {', '.join(TEXT_TYPES)}")
    missing = [c.name for c in classes if not c.known and text_type not in ("asis", "com")]
    if missing:
        log.warning(
            "%d of %d classes have no ranks (e.g. %r); text type %s uses their names as given",
            len(missing),
            len(classes),
            missing[0],
            text_type,
        )
    return [c.text(text_type) for c in classes]


# --------------------------------------------------------------------------- task specs


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task as its TOML describes it."""

    name: str
    title: str
    column: str
    order: int
    source: str
    url: str
    num_classes: int | None
    num_images: int | None
    layout: str
    data_dir: str
    split: str
    text_type: str
    templates: str
    classes: tuple[TaxonLabel, ...] = ()
    name_separator: str = ""  # class names that spell the 7 ranks, e.g. iNat21's `_`
    classes_url: str = ""
    notes: str = ""
    # published[model][kind] = top-1 % (kind: zero_shot, one_shot, five_shot)
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    published_source: str = ""
    path: Path | None = None


def benchmarks_dir() -> Path:
    return repo_dir("manifests") / "benchmarks"


def _taxon_from_table(entry: dict[str, Any], where: str) -> TaxonLabel:
    if "name" not in entry:
        raise TolError(f"{where}: a [[classes]] entry lacks `name`")
    ranks = [entry.get(rank, "") for rank in RANKS]
    return TaxonLabel(
        name=str(entry["name"]),
        ranks=normalise_ranks(ranks) if any(ranks) else (),
        common=str(entry.get("common", "")),
    )


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A task by name (`fungi` → manifests/benchmarks/fungi.toml) or by TOML path."""
    path = Path(name_or_path)
    if not path.exists():
        path = benchmarks_dir() / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(list_task_names()) or "none"
        raise TolError(f"no benchmark task {name_or_path!r}: known tasks are {known}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TolError(f"{path}: invalid TOML: {exc}") from None
    task, data = doc.get("task", {}), doc.get("data", {})
    if "name" not in task:
        raise TolError(f"{path}: [task] needs a `name`")
    layout = data.get("layout", "auto")
    if layout not in LAYOUTS:
        raise TolError(f"{path} [data]: layout must be one of {', '.join(LAYOUTS)}")
    text_type = task.get("text_type", "asis")
    if text_type not in TEXT_TYPES:
        raise TolError(f"{path} [task]: text_type must be one of {', '.join(TEXT_TYPES)}")
    published_doc = doc.get("published", {})
    published: dict[str, dict[str, float]] = {}
    for kind in PUBLISHED_KINDS:
        for model, value in published_doc.get(kind, {}).items():
            published.setdefault(model, {})[kind] = float(value)
    classes = tuple(
        _taxon_from_table(entry, f"{path} [[classes]] #{i + 1}")
        for i, entry in enumerate(doc.get("classes", []))
    )
    return TaskSpec(
        name=task["name"],
        title=task.get("title", task["name"]),
        column=task.get("column", task["name"]),
        order=int(task.get("order", 100)),
        source=task.get("source", ""),
        url=task.get("url", ""),
        num_classes=task.get("num_classes"),
        num_images=task.get("num_images"),
        layout=layout,
        data_dir=data.get("dir", task["name"]),
        split=data.get("split", "test"),
        text_type=text_type,
        templates=task.get("templates", "openai"),
        classes=classes,
        name_separator=data.get("ranks_in_name", ""),
        classes_url=task.get("classes_url", ""),
        notes=task.get("notes", ""),
        published=published,
        published_source=published_doc.get("source", ""),
        path=path,
    )


def list_task_names() -> list[str]:
    folder = benchmarks_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def bioclip_suite() -> list[TaskSpec]:
    """The 10 tasks of BioCLIP's table, in its column order (tasks with order < 100)."""
    specs = [load_task(name) for name in list_task_names()]
    return sorted((s for s in specs if s.order < 100), key=lambda s: s.order)


def expand_task_names(names: Sequence[str | Path]) -> list[str | Path]:
    """`bioclip` → the paper's 10 tasks, `all` → every TOML; other names and paths as given."""
    out: list[str | Path] = []
    for name in names:
        if name == "bioclip":
            out += [spec.name for spec in bioclip_suite()]
        elif name == "all":
            out += list_task_names()
        else:
            out.append(name)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Example:
    """One evaluation image: its bytes (or file) and its class."""

    image: bytes | Path
    label: TaxonLabel


@dataclass
class TaskData:
    """A task's images, readable again and again, and its class list if declared up front."""

    spec: TaskSpec
    root: Path
    layout: str
    iter_examples: Callable[[], Iterator[Example]]
    classes: list[TaxonLabel] | None = None
    templates: tuple[str, ...] | None = None  # the dataset's own templates, if it ships them


def _detect_layout(root: Path, split: str) -> str:
    if (root / split / "nshards.txt").exists():
        return "wds"
    if (root / split / "sizes.json").exists() or list((root / split).glob("shard-*.tar")):
        return "release"
    if (root / split).is_dir() or root.is_dir():
        return "imagefolder"
    raise TolError(f"no dataset at {root}: expected {root / split} (ImageFolder or shards)")


def _class_metadata(root: Path, spec: TaskSpec) -> dict[str, TaxonLabel]:
    """Ranks and common names per class name: the TOML's [[classes]] then `classes.csv`."""
    known = {c.name: c for c in spec.classes}
    csv_path = root / "classes.csv"
    if csv_path.exists():
        with csv_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("name"):
                    raise TolError(f"{csv_path}: every row needs a `name` column value")
                known[row["name"]] = _taxon_from_table(row, str(csv_path))
    return known


def ranks_from_name(name: str, separator: str) -> tuple[str, ...]:
    """Ranks spelled in a class name (`00000_Animalia_..._Genus_species`, Rare Species'
    `Animalia-Chordata-...`), split at any character of `separator`; a leading number is
    dropped; () unless 7 parts remain."""
    parts = [p for p in re.split(f"[{re.escape(separator)}]", name) if p]
    if parts and parts[0].isdigit():
        parts = parts[1:]
    if len(parts) != 7:
        return ()
    ranks = [p.capitalize() for p in parts[:6]] + [parts[6].lower()]
    return normalise_ranks(ranks)


def _with_metadata(
    names: Sequence[str], known: dict[str, TaxonLabel], separator: str = ""
) -> list[TaxonLabel]:
    labels = []
    for name in names:
        label = known.get(name)
        if label is None:
            ranks = ranks_from_name(name, separator) if separator else ()
            label = TaxonLabel(name=name, ranks=ranks)
        labels.append(label)
    return labels


def open_task_data(spec: TaskSpec, data_root: Path) -> TaskData:
    """Find a task's images under `data_root/<data.dir>` in the layout its TOML names."""
    root = (Path(data_root) / spec.data_dir).resolve()
    if not root.exists():
        hint = f" (download it from {spec.url})" if spec.url else ""
        raise TolError(f"task {spec.name}: no data at {root}{hint}; pass --data-root")
    layout = spec.layout if spec.layout != "auto" else _detect_layout(root, spec.split)
    known = _class_metadata(root, spec)
    if layout == "imagefolder":
        return _imagefolder(spec, root, known)
    if layout == "wds":
        return _clip_benchmark_wds(spec, root, known)
    return _release_shards(spec, root)


def _imagefolder(spec: TaskSpec, root: Path, known: dict[str, TaxonLabel]) -> TaskData:
    base = root / spec.split if (root / spec.split).is_dir() else root
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir())
    if not class_dirs:
        raise TolError(f"{base}: an ImageFolder tree needs one sub-folder per class")
    classes = _with_metadata([d.name for d in class_dirs], known, spec.name_separator)

    def examples() -> Iterator[Example]:
        for label, folder in zip(classes, class_dirs, strict=True):
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield Example(path, label)

    return TaskData(spec, root, "imagefolder", examples, classes=classes)


def _tar_samples(paths: Sequence[Path]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, members grouped by the key before the first dot."""
    for path in paths:
        current, members = None, {}
        try:
            with tarfile.open(path) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    name = info.name.rsplit("/", 1)[-1]
                    key, _, ext = name.partition(".")
                    if key != current:
                        if current is not None:
                            yield current, members
                        current, members = key, {}
                    members[ext] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError) as exc:
            raise TolError(f"{path}: cannot read shard: {exc}") from None
        if current is not None:
            yield current, members


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _clip_benchmark_wds(spec: TaskSpec, root: Path, known: dict[str, TaxonLabel]) -> TaskData:
    """CLIP_benchmark's layout: split/nshards.txt, split/0.tar…, classnames.txt, templates."""
    split_dir = root / spec.split
    try:
        nshards = int((split_dir / "nshards.txt").read_text().strip())
    except (OSError, ValueError) as exc:
        raise TolError(f"{split_dir / 'nshards.txt'}: unreadable ({exc})") from None
    names_path = root / "classnames.txt"
    if not names_path.exists():
        raise TolError(f"{names_path}: missing; CLIP_benchmark shards need classnames.txt")
    classes = _with_metadata(_read_lines(names_path), known, spec.name_separator)
    templates_path = root / "zeroshot_classification_templates.txt"
    templates = None
    if templates_path.exists():
        templates = tuple(t.replace("{c}", "{}") for t in _read_lines(templates_path))
    shards = [split_dir / f"{i}.tar" for i in range(nshards)]

    def examples() -> Iterator[Example]:
        for key, members in _tar_samples(shards):
            image = next((members[k] for k in WDS_IMAGE_KEYS if k in members), None)
            if image is None or "cls" not in members:
                raise TolError(f"{split_dir}: sample {key} lacks an image or a cls member")
            index = int(members["cls"].decode().strip())
            if not 0 <= index < len(classes):
                raise TolError(f"{split_dir}: sample {key} has class {index}, outside classnames")
            yield Example(image, classes[index])

    return TaskData(spec, root, "wds", examples, classes=classes, templates=templates)


def _parse_tagged(text: str) -> tuple[str, ...]:
    """Ranks from a taxonTag caption: 'a photo of kingdom Animalia ... species hudsonia.'"""
    words = text.strip().removeprefix("a photo of ").rstrip(".").split(" with common name ")[0]
    tokens, ranks = words.split(), dict.fromkeys(RANKS, "")
    i = 0
    while i < len(tokens):
        if tokens[i] in ranks:
            j = i + 1
            while j < len(tokens) and tokens[j] not in ranks:
                j += 1
            ranks[tokens[i]] = " ".join(tokens[i + 1 : j])
            i = j
        else:
            i += 1
    return normalise_ranks([ranks[r] for r in RANKS])


def release_label(members: dict[str, bytes]) -> TaxonLabel:
    """A release sample's taxon: from `<key>.json` ranks, else its taxonTag caption."""
    record: dict[str, Any] = {}
    if "json" in members:
        record = json.loads(members["json"])
        for nested in ("taxonomy", "taxon", "ranks"):  # the release writer nests "taxonomy"
            if isinstance(record.get(nested), dict):
                record = {**record, **record[nested]}
    ranks: tuple[str, ...] = ()
    if any(record.get(rank) for rank in RANKS):
        ranks = normalise_ranks([record.get(rank) for rank in RANKS])
    elif "taxonTag.txt" in members:
        ranks = _parse_tagged(members["taxonTag.txt"].decode())
    if not any(ranks):
        raise TolError("release sample has neither ranks in its json nor a taxonTag.txt")
    common = record.get("common") or ""
    if not common and "common_name.txt" in members:
        common = members["common_name.txt"].decode().strip()
    label = TaxonLabel(name="", ranks=ranks, common=common)
    return TaxonLabel(name=label.taxonomic, ranks=ranks, common=common)


def _release_shards(spec: TaskSpec, root: Path) -> TaskData:
    """treeoflife/TreeOfLife-10M release shards: classes are the taxa found in the split."""
    split_dir = root / spec.split
    shards = sorted(split_dir.glob("*.tar"))
    if not shards:
        raise TolError(f"{split_dir}: no .tar shards for task {spec.name}")

    def examples() -> Iterator[Example]:
        for key, members in _tar_samples(shards):
            image = next((members[k] for k in ("jpg", "jpeg", "png", "webp") if k in members), None)
            if image is None:
                raise TolError(f"{split_dir}: sample {key} has no image member")
            try:
                label = release_label(members)
            except (TolError, ValueError) as exc:
                raise TolError(f"{split_dir}: sample {key}: {exc}") from None
            yield Example(image, label)

    return TaskData(spec, root, "release", examples)


# --------------------------------------------------------------------------- features


@dataclass
class TaskFeatures:
    """L2-normalised image features of a task's images and their class indices."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64 index into classes
    classes: list[TaxonLabel]


def load_image(image: bytes | Path) -> Image.Image:
    try:
        opened = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else Image.open(image)
        return opened.convert("RGB")
    except OSError as exc:
        where = image if isinstance(image, Path) else "shard member"
        raise TolError(f"cannot decode image {where}: {exc}") from None


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Iterator[bytes | Path] | Sequence[bytes | Path],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised `encode_image` features, in input order."""
    model.eval()
    chunks, batch = [], []

    def flush() -> None:
        pixels = torch.stack(batch).to(device)
        chunks.append(model.encode_image(pixels, normalize=True).float().cpu().numpy())
        if on_batch:
            on_batch(len(batch))
        batch.clear()

    for image in images:
        batch.append(preprocess(load_image(image)))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not chunks:
        raise TolError("no images to encode")
    return np.concatenate(chunks)


def encode_task(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    data: TaskData,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> TaskFeatures:
    """Every image of a task through the image tower; classes in declared or taxonomic order."""
    labels: list[TaxonLabel] = []

    def images() -> Iterator[bytes | Path]:
        for example in data.iter_examples():
            labels.append(example.label)
            yield example.image

    features = encode_images(
        model, preprocess, images(), batch_size=batch_size, device=device, on_batch=on_batch
    )
    classes = data.classes
    if classes is None:  # release shards: the taxa found, in taxonomic order
        by_key = {label.key(): label for label in labels}
        classes = [by_key[k] for k in sorted(by_key)]
        index = {label.key(): i for i, label in enumerate(classes)}
        indices = [index[label.key()] for label in labels]
    else:  # declared classes: two classes may share a taxon (PlantVillage diseases)
        index = {label.name: i for i, label in enumerate(classes)}
        indices = [index[label.name] for label in labels]
    return TaskFeatures(
        features=features, labels=np.array(indices, dtype=np.int64), classes=classes
    )
