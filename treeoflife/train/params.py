"""Every `tol train` option and its default in one dataclass, plus named presets.

`TrainParams` is what the CLI builds, `train()` runs, and every checkpoint stores (as a
JSON-able dict), so a run can be repeated or resumed from its own record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from treeoflife.errors import TolError

# The text members of a release shard that can serve as captions (shard member stem).
TEXT_TYPES = (
    "sci",
    "com",
    "taxon",
    "taxonTag",
    "sci_com",
    "taxon_com",
    "taxonTag_com",
    "scientific_name",
    "taxonomic_name",
    "common_name",
)
# BioCLIP's "mixed text types": the five the paper and `--text_type random` sample from.
MIXED = "mixed"
MIXED_TYPES = ("com", "sci", "taxon", "sci_com", "taxon_com")

TextSampling = Literal["per-sample", "per-batch"]
Precision = Literal["auto", "fp32", "bf16"]
ResumeData = Literal["skip", "reseed"]
TEXT_SAMPLINGS = ("per-sample", "per-batch")
PRECISIONS = ("auto", "fp32", "bf16")
RESUME_DATA = ("skip", "reseed")


@dataclass
class TrainParams:
    """One training run. Defaults follow open_clip's trainer unless a preset says otherwise."""

    # data
    shards: list[str] = field(default_factory=list)  # globs, {a..b} braces, http(s)://, hf://
    samples_per_epoch: int | None = None  # None: sum of sizes.json beside the shards
    resample: bool = True  # draw shards with replacement (webdataset's resampled mode)
    shuffle_buffer: int = 5000  # samples held for in-stream shuffling (open_clip: 5000)
    shuffle_initial: int = 1000  # samples buffered before the first one is yielded
    text_types: tuple[str, ...] = (MIXED,)  # any subset of TEXT_TYPES, or `mixed`
    text_sampling: TextSampling = "per-sample"  # paper: per sample; BioCLIP code: per batch
    workers: int = 4  # data-loader processes per training process (0: in-process)
    # model
    model: str = "ViT-B-16"
    pretrained: str | None = None  # a local open_clip checkpoint, or a tag (needs network)
    # length (steps > samples > epochs)
    epochs: int = 1
    samples: int | None = None  # total training samples; overrides epochs
    steps: int | None = None  # total optimizer steps; overrides samples and epochs
    batch_size: int = 256  # per process, as open_clip's --batch-size
    global_batch_size: int | None = None  # if set: batch_size = this / world size
    # optimisation
    lr: float = 5e-4
    warmup_steps: int = 1000
    min_lr: float = 0.0  # the cosine ends here
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float | None = None
    # speed and memory
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    grad_checkpointing: bool = False
    local_loss: bool = False  # each rank scores its own rows against all gathered features
    gather_with_grad: bool = False  # let gradients flow through the feature all-gather
    compile: bool = False  # torch.compile the model
    compile_backend: str = "inductor"
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    threads: int = 0  # torch CPU threads per process (0: torch's default)
    # Workers send uint8 pixels, normalised on the device (None: on GPU only).
    uint8_transfer: bool | None = None
    # run bookkeeping
    output_dir: Path = Path("runs/train")
    save_every: int = 1000  # steps between periodic checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # periodic checkpoints kept on disk (final.pt always kept)
    resume: str | None = None  # `latest` or a checkpoint path
    resume_data: ResumeData = "skip"  # skip: replay the data stream to the saved position
    log_every: int = 10  # steps between metrics.jsonl lines
    tensorboard: bool = True  # also write TensorBoard events when it is installed
    seed: int = 0

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.text_types = tuple(self.text_types)
        self.shards = list(self.shards)

    # ------------------------------------------------------------------------------------
    @property
    def caption_types(self) -> tuple[str, ...]:
        """The text types to sample from, with `mixed` expanded to BioCLIP's five."""
        types: list[str] = []
        for name in self.text_types:
            for member in MIXED_TYPES if name == MIXED else (name,):
                if member not in types:
                    types.append(member)
        return tuple(types)

    def validate(self) -> TrainParams:
        """Raise TolError naming the first bad option; returns self for chaining."""
        if not self.shards:
            raise TolError(
                "no training shards given: pass --shards PATTERN (a glob, braces or URL)"
            )
        unknown = [t for t in self.text_types if t != MIXED and t not in TEXT_TYPES]
        if unknown or not self.text_types:
            raise TolError(
                f"unknown text type(s) {', '.join(unknown) or '(none)'}: choose from "
                f"{MIXED}, {', '.join(TEXT_TYPES)}"
            )
        choices = {
            "text_sampling": TEXT_SAMPLINGS,
            "precision": PRECISIONS,
            "resume_data": RESUME_DATA,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TolError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "log_every": self.log_every,
        }
        for name in ("steps", "samples", "samples_per_epoch", "global_batch_size"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if value < 1:
                raise TolError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("workers", "warmup_steps", "save_every", "keep_checkpoints", "threads"):
            if getattr(self, name) < 0:
                raise TolError(f"--{name.replace('_', '-')} must be >= 0")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr and self.weight_decay >= 0):
            raise TolError(f"need lr > 0, 0 <= min_lr <= lr, weight_decay >= 0 (got {self.lr})")
        if self.shuffle_initial > self.shuffle_buffer:
            raise TolError("--shuffle-initial must not exceed --shuffle-buffer")
        return self

    def per_process_batch(self, world_size: int) -> int:
        """Batch each process draws: global / world when a global batch is set."""
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % world_size:
            raise TolError(
                f"global batch {self.global_batch_size} does not split over {world_size} "
                "processes: change --global-batch-size or give --batch-size per process"
            )
        return self.global_batch_size // world_size

    def total_steps(self, global_batch: int, samples_per_epoch: int) -> int:
        """Optimizer steps for the whole run (steps, else samples, else epochs)."""
        if self.steps is not None:
            return self.steps
        if self.samples is not None:
            return max(1, math.ceil(self.samples / global_batch))
        return max(1, self.epochs * steps_per_epoch(samples_per_epoch, global_batch))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (and torch `weights_only`-loadable) copy of every option."""
        out = dataclasses.asdict(self)
        out["output_dir"] = str(self.output_dir)
        out["text_types"] = list(self.text_types)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def steps_per_epoch(samples_per_epoch: int, global_batch: int) -> int:
    """Whole global batches in one nominal epoch (at least one)."""
    return max(1, samples_per_epoch // global_batch)


# BioCLIP (CVPR 2024, Imageomics/bioclip slurm/train.sh + model card): ViT-B/16 from OpenAI
# CLIP, AdamW lr 1e-4, 1,000 warm-up steps, cosine, wd 0.2, 100 epochs, 4,096 x 8 GPUs =
# 32,768 global batch, --local-loss --gather-with-grad --grad-checkpointing, resampled shards,
# --text_type random (one type per batch, seeded by step). It trained in fp16 AMP; bf16
# autocast is the modern equivalent on A100/H100.
PRESETS: dict[str, dict[str, Any]] = {
    "bioclip-b16": dict(
        model="ViT-B-16",
        pretrained="openai",
        lr=1e-4,
        warmup_steps=1000,
        weight_decay=0.2,
        epochs=100,
        global_batch_size=32768,
        local_loss=True,
        gather_with_grad=True,
        grad_checkpointing=True,
        resample=True,
        text_types=(MIXED,),
        text_sampling="per-batch",
        precision="bf16",
        workers=8,
        seed=42,
    ),
    # BioCLIP 2 (Imageomics/bioclip-2 slurm/train.sh) without its LAION experience replay.
    "bioclip2-l14": dict(
        model="ViT-L-14",
        pretrained="laion2b_s32b_b82k",
        lr=1e-4,
        warmup_steps=1875,
        weight_decay=0.2,
        epochs=30,
        global_batch_size=90112,
        local_loss=True,
        gather_with_grad=True,
        grad_checkpointing=True,
        resample=True,
        text_types=(MIXED,),
        text_sampling="per-batch",
        precision="bf16",
        compile=True,
        workers=8,
        seed=42,
    ),
    # The bundled 64-px model: seconds per hundred steps on a laptop CPU (tests, `tol demo`).
    "tiny": dict(
        model="tol-tiny",
        lr=1e-3,
        warmup_steps=20,
        weight_decay=0.1,
        batch_size=32,
        precision="fp32",
        workers=0,
        shuffle_buffer=500,
        shuffle_initial=100,
        save_every=100,
        log_every=5,
    ),
}


def preset_params(name: str | None, **overrides: Any) -> TrainParams:
    """`TrainParams` from a preset (or the defaults) with explicit options on top."""
    values: dict[str, Any] = {}
    if name:
        if name not in PRESETS:
            raise TolError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
        values.update(PRESETS[name])
    if overrides.get("batch_size") is not None and "global_batch_size" not in overrides:
        values.pop("global_batch_size", None)  # an explicit per-process batch wins
    values.update({k: v for k, v in overrides.items() if v is not None})
    if str(values.get("pretrained", "")).lower() in ("none", "random"):
        values["pretrained"] = None  # `--pretrained none` undoes a preset's weights
    return TrainParams(**values)
