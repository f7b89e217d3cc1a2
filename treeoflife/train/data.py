"""The training data stream: release shards → (images, tokens, text-type ids, step) batches.

Built from webdataset 1.x stages (tar expansion with its end-of-shard markers, key
grouping, buffered shuffle) plus our own shard order, opener and batching, so that every
batch is a pure function of (seed, epoch, rank, step): a resumed run replays the stream
from its saved step, and per-batch text types agree across ranks without communication.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import braceexpand
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import Compose, Normalize, ToTensor
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander

from treeoflife.errors import TolError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
URL_SCHEMES = ("http", "https", "hf")
HF_PREFIXES = {"datasets": "dataset", "spaces": "space", "models": "model"}
TOKEN_CACHE_SIZE = 50_000  # captions per worker (~30 MB of int64 tokens)
# Shards opened in a row with no usable sample before the stream gives up.
MAX_BARREN_SHARDS = 50


# ---------------------------------------------------------------------------------------
# Shard lists
def is_url(pattern: str) -> bool:
    return urlparse(pattern).scheme in URL_SCHEMES


def hf_resolve_url(url: str) -> str:
    """`hf://datasets/ORG/NAME[@REV]/PATH` → the Hub's `resolve` HTTPS URL (no network)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise TolError(
            f"{url}: hf:// shards are streamed from the Hub but HF_HUB_OFFLINE is set; "
            "download the shards and pass a local path instead"
        )
    from huggingface_hub import hf_hub_url

    rest = url[len("hf://") :]
    kind, _, tail = rest.partition("/")
    repo_type = HF_PREFIXES.get(kind)
    if repo_type is None:
        repo_type, tail = "model", rest
    parts = tail.split("/")
    if len(parts) < 3:
        raise TolError(f"{url}: expected hf://datasets/ORG/NAME[@REVISION]/PATH/TO/shard.tar")
    repo_id, path = "/".join(parts[:2]), "/".join(parts[2:])
    repo_id, _, revision = repo_id.partition("@")
    return hf_hub_url(repo_id, path, repo_type=repo_type, revision=revision or None)


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Every shard the patterns name, in order: `a::b` lists, `{000..009}` braces, globs,
    folders (their `*.tar`), http(s) URLs and hf:// paths (turned into resolve URLs)."""
    urls: list[str] = []
    for pattern in patterns:
        for part in str(pattern).split("::"):
            found: list[str] = []
            for item in braceexpand.braceexpand(part.strip()):
                if item.startswith("hf://"):
                    found.append(hf_resolve_url(item))
                elif is_url(item):
                    found.append(item)
                elif item.startswith("file://"):
                    found.extend(_local(item[len("file://") :]))
                else:
                    found.extend(_local(item))
            if not found:
                raise TolError(
                    f"no shards match {part!r}: give a .tar path, a glob, a brace pattern "
                    "like shard-{000000..000009}.tar, a folder of .tar files or a URL"
                )
            urls.extend(found)
    return urls


def _local(item: str) -> list[str]:
    path = Path(item).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if glob.has_magic(item):
        return sorted(glob.glob(str(path)))
    return [str(path)] if path.is_file() else []


def _read_sizes(folder: str) -> dict[str, int] | None:
    """`sizes.json` of a shard folder (local or URL), or None when there is none."""
    location = f"{folder}/sizes.json"
    try:
        if is_url(location):
            import requests

            response = requests.get(location, timeout=(10, 30))
            if response.status_code != 200:
                return None
            return {str(k): int(v) for k, v in response.json().items()}
        path = Path(location)
        if not path.is_file():
            return None
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", location, exc)
        return None


def count_samples(urls: Sequence[str]) -> int | None:
    """Samples in the shards from the `sizes.json` beside them, None if any is unknown."""
    total = 0
    sizes_by_folder: dict[str, dict[str, int] | None] = {}
    for url in urls:
        folder, _, name = url.rpartition("/")
        if folder not in sizes_by_folder:
            sizes_by_folder[folder] = _read_sizes(folder)
        sizes = sizes_by_folder[folder]
        if sizes is None or name not in sizes:
            return None
        total += sizes[name]
    return total


# ---------------------------------------------------------------------------------------
# Deterministic seeds and text-type choices
def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def choose_text_types(
    seed: int, step: int, rank: int, batch: int, n_types: int, sampling: str
) -> list[int]:
    """Text-type index per sample of one step's batch on one rank.

    per-batch: one type for the whole global batch, seeded by the step only, so every
    rank agrees (BioCLIP's released code); per-sample: one draw per image (the paper).
    """
    if n_types == 1:
        return [0] * batch
    if sampling == "per-batch":
        return [random.Random(mix_seed(seed, "text", step)).randrange(n_types)] * batch
    rng = random.Random(mix_seed(seed, "text", step, rank))
    return [rng.randrange(n_types) for _ in range(batch)]


# ---------------------------------------------------------------------------------------
# Images as uint8 from the workers, normalised on the device
@dataclass(frozen=True)
class PixelNormalizer:
    """The `ToTensor` + `Normalize` tail of an open_clip transform, applied to uint8 batches
    on the training device: 4x less worker-to-main and host-to-GPU traffic than float."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(shape)
        std = torch.tensor(self.std, device=images.device).view(shape)
        return images.float().div_(255).sub_(mean).div_(std)


def split_transform(transform: Callable) -> tuple[Callable, PixelNormalizer] | None:
    """(PIL-only head, normaliser) of a `Compose(..., ToTensor, Normalize)`, else None."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or type(steps[-1]) is not Normalize:
        return None
    if not isinstance(steps[-2], ToTensor):
        return None
    normalize = steps[-1]
    return Compose(steps[:-2]), PixelNormalizer(tuple(normalize.mean), tuple(normalize.std))


def to_uint8(image: Image.Image) -> torch.Tensor:
    """HWC PIL image → CHW uint8 tensor (what ToTensor sees, before its /255)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------
# The stream
@dataclass(frozen=True)
class StreamSpec:
    """What every data worker needs to produce its share of one epoch's batches."""

    urls: tuple[str, ...]
    text_types: tuple[str, ...]  # shard member stems, e.g. ("com", "sci", ...)
    text_sampling: str
    batch_size: int  # per process
    steps_per_epoch: int
    resample: bool
    shuffle_buffer: int
    shuffle_initial: int
    seed: int
    rank: int = 0
    world_size: int = 1
    uint8_images: bool = False  # workers send uint8; the loop normalises on the device


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float (normalised) or uint8 (spec.uint8_images)
    texts: torch.Tensor  # [B, context] token ids
    text_type_ids: torch.Tensor  # [B] index into StreamSpec.text_types
    step: int  # global 1-based optimizer step this batch is for
    keys: list[str]  # sample keys (treeoflife_id), in batch order

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so host-to-GPU copies can be async."""
        return Batch(
            self.images.pin_memory(),
            self.texts.pin_memory(),
            self.text_type_ids,
            self.step,
            self.keys,
        )


class _Errors:
    """Log-and-continue handler for broken shards/samples (counted, first few logged)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        if self.count <= 20:
            log.warning("skipping unreadable data: %s", exc)
        return True


class ShardStream(IterableDataset):
    """One rank's batches for (0-based) steps [start_step, stop_step), across epochs.

    DataLoader hands batches out round-robin over its workers, so worker `w` makes steps
    start+w, start+w+W, ... : those the "virtual worker" v = (start+w) mod W makes in an
    uninterrupted run. Each (epoch, v) has its own seeded shard order and shuffle buffer;
    on resume (`replay`) v skips, without decoding, the samples its earlier steps of the
    current epoch used. Workers live for the whole run (no respawn at epoch boundaries).
    """

    def __init__(
        self,
        spec: StreamSpec,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        start_step: int = 0,
        stop_step: int | None = None,
        replay: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer
        self.start_step = start_step
        self.stop_step = start_step + spec.steps_per_epoch if stop_step is None else stop_step
        self.replay = replay
        self._fields = {f"{t.lower()}.txt" for t in spec.text_types}
        self._tokens: dict[str, torch.Tensor] = {}
        self._head: Callable | None = None  # the PIL part of `transform` in uint8 mode
        if spec.uint8_images:
            split = split_transform(transform)
            if split is None:
                raise TolError(
                    f"cannot send uint8 images: transform {transform} does not end "
                    "in ToTensor + Normalize"
                )
            self._head = split[0]

    # -- shard order ------------------------------------------------------------------
    def _stream_seed(self, epoch: int, virtual: int) -> tuple:
        base = (self.spec.seed, epoch, self.spec.rank, virtual)
        if self.replay or epoch != self.start_step // self.spec.steps_per_epoch:
            return base
        return (*base, "resumed-at", self.start_step)

    def _shard_order(self, epoch: int, virtual: int, workers: int) -> Iterator[str]:
        spec = self.spec
        if spec.resample:
            rng = random.Random(mix_seed(*self._stream_seed(epoch, virtual), "shards"))
            while True:
                yield spec.urls[rng.randrange(len(spec.urls))]
        order = list(spec.urls)
        random.Random(mix_seed(spec.seed, epoch, "shards")).shuffle(order)
        mine = order[spec.rank :: spec.world_size][virtual::workers]
        if not mine:
            raise TolError(
                f"{len(order)} shards cannot feed {spec.world_size} processes x {workers} "
                "workers without resampling: use --resample, fewer workers, or more shards"
            )
        for rounds in count():
            seed = mix_seed(*self._stream_seed(epoch, virtual), "pass", rounds)
            random.Random(seed).shuffle(mine)
            yield from mine

    def _open(self, urls: Iterator[str], errors: _Errors, seen: list[int]) -> Iterator[dict]:
        """Open each shard (local file or streamed HTTP), closing the previous one."""
        client = None
        barren = 0
        for url in urls:
            before = seen[0]
            try:
                if is_url(url):
                    if client is None:
                        from treeoflife.http import HttpClient

                        client = HttpClient()
                    headers = _hub_auth(url)
                    response = client.get(url, headers=headers, stream=True)
                    response.raw.decode_content = True
                    stream = response.raw
                else:
                    stream = open(url, "rb")  # noqa: SIM115 - closed below, after the shard
            except (OSError, TolError) as exc:
                errors(exc)
                barren += 1
                if barren >= MAX_BARREN_SHARDS:
                    raise TolError(
                        f"{barren} shards in a row could not be read; last: {url}: {exc}"
                    ) from None
                continue
            try:
                yield {"url": url, "stream": stream}
            finally:
                stream.close()
            barren = 0 if seen[0] > before else barren + 1
            if barren >= MAX_BARREN_SHARDS:
                raise TolError(
                    f"{barren} shards in a row gave no usable sample (need an image and "
                    f"{', '.join(sorted(self._fields))}); last: {url}"
                )

    def _samples(
        self, epoch: int, virtual: int, workers: int, errors: _Errors
    ) -> Generator[dict, None, None]:
        """Complete raw samples (bytes, not decoded), shuffled, for one virtual worker."""
        wanted = self._fields | set(IMAGE_KEYS)

        def select(name: str) -> bool:
            base = name.rsplit("/", 1)[-1]
            return "." in base and base.split(".", 1)[1].lower() in wanted

        seen = [0]
        opened = self._open(self._shard_order(epoch, virtual, workers), errors, seen)
        files = tar_file_expander(opened, handler=errors, select_files=select)
        grouped = group_by_keys(files, handler=errors)

        def complete() -> Iterator[dict]:
            for sample in grouped:
                if any(k in sample for k in IMAGE_KEYS) and self._fields <= sample.keys():
                    seen[0] += 1
                    yield sample

        rng = random.Random(mix_seed(*self._stream_seed(epoch, virtual), "samples"))
        if self.spec.shuffle_buffer <= 1:
            return complete()
        return _shuffle(complete(), self.spec.shuffle_buffer, self.spec.shuffle_initial, rng=rng)

    # -- decoding ---------------------------------------------------------------------
    def _image(self, sample: dict, sample_seed: int) -> torch.Tensor:
        key = next(k for k in IMAGE_KEYS if k in sample)
        with Image.open(io.BytesIO(sample[key])) as image:
            rgb = image.convert("RGB")
        # Augmentation draws from torch's CPU RNG: seed it per sample so a replayed stream
        # crops exactly as the original did, whatever ran before in this process; then put
        # the generator back. (torch.manual_seed would also queue CUDA seeding, with a
        # stack trace per call: 10% of the loader's time.)
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(sample_seed)
        try:
            return self.transform(rgb) if self._head is None else to_uint8(self._head(rgb))
        finally:
            generator.set_state(saved)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._tokens})
        if missing:
            if len(self._tokens) + len(missing) > TOKEN_CACHE_SIZE:
                self._tokens.clear()
            for text, row in zip(missing, self.tokenizer(missing), strict=True):
                self._tokens[text] = row
        return torch.stack([self._tokens[t] for t in texts])

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        spec = self.spec
        per_epoch = spec.steps_per_epoch
        virtual = (self.start_step + worker) % workers
        errors = _Errors()
        member_of = [f"{t.lower()}.txt" for t in spec.text_types]
        epoch, index = -1, 0
        samples: Generator[dict, None, None] | None = None
        for step0 in range(self.start_step + worker, self.stop_step, workers):
            if step0 // per_epoch != epoch:  # a new epoch: its own shard order and buffer
                if samples is not None:
                    samples.close()
                epoch = step0 // per_epoch
                samples = self._samples(epoch, virtual, workers, errors)
                index = 0  # position in this (epoch, virtual worker) sample stream
                if self.replay:  # drop what this worker's earlier steps of the epoch used
                    done = len(range(epoch * per_epoch + virtual, step0, workers))
                    for _ in range(done * spec.batch_size):
                        next(samples)
                        index += 1
            step = step0 + 1
            type_ids = choose_text_types(
                spec.seed, step, spec.rank, spec.batch_size, len(spec.text_types),
                spec.text_sampling,
            )  # fmt: skip
            images, texts, keys = [], [], []
            while len(images) < spec.batch_size:
                sample = next(samples)
                index += 1
                seed = mix_seed(*self._stream_seed(epoch, virtual), "sample", index)
                try:
                    image = self._image(sample, seed)
                    text = sample[member_of[type_ids[len(images)]]].decode("utf-8").strip()
                except Exception as exc:  # noqa: BLE001 - a bad sample is logged and skipped
                    where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
                    errors(ValueError(f"{where}: {exc}"))
                    continue
                images.append(image)
                texts.append(text)
                keys.append(sample["__key__"])
            yield Batch(
                images=torch.stack(images),
                texts=self._tokenize(texts),
                text_type_ids=torch.tensor(type_ids, dtype=torch.long),
                step=step,
                keys=keys,
            )


def _hub_auth(url: str) -> dict[str, str] | None:
    """The user's Hub token for huggingface.co URLs (private or gated datasets)."""
    if urlparse(url).hostname not in ("huggingface.co", "hf.co"):
        return None
    from huggingface_hub import get_token

    token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else None


def _quiet_worker(_: int) -> None:
    torch.set_num_threads(1)


def batches(
    spec: StreamSpec,
    transform: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    start_step: int = 0,
    stop_step: int | None = None,
    workers: int = 0,
    replay: bool = True,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """One rank's batches for 0-based steps [start_step, stop_step) (default: one epoch),
    from `workers` loader processes (0: in this process, leaving its RNG untouched)."""
    stream = ShardStream(spec, transform, tokenizer, start_step, stop_step, replay)
    if workers == 0:
        return iter(stream)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_quiet_worker,
    )
    return iter(loader)
