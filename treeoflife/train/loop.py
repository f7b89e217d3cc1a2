"""`train(params)`: the CLIP contrastive training loop on release shards.

Single process on CPU or one process per GPU under `torchrun` (DDP; gloo on CPU, nccl on
GPU), open_clip's ClipLoss with optional local loss and gradient-carrying feature gather,
bf16 autocast, gradient checkpointing, torch.compile, warm-up + cosine LR, AdamW without
decay on gains/biases, a JSONL metrics log, periodic/final checkpoints and exact resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from treeoflife.errors import TolError
from treeoflife.train import checkpoint as ckpt
from treeoflife.train.data import (
    Batch,
    PixelNormalizer,
    StreamSpec,
    batches,
    count_samples,
    expand_shards,
    split_transform,
)
from treeoflife.train.params import TrainParams, steps_per_epoch

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PARAMS_FILE = "params.json"
MAX_LOGIT_SCALE = math.log(100)


@dataclass
class StepReport:
    """What the progress callback sees after each optimizer step (rank 0 only)."""

    step: int
    total_steps: int
    epoch: int
    lr: float
    loss: float | None  # mean over the last log window; None between log steps
    samples_per_s: float | None
    data_wait_share: float | None


@dataclass
class TrainResult:
    checkpoint: Path  # final.pt
    final_loss: float  # mean loss of the last log window
    steps: int
    samples_per_s: float  # whole run, this invocation (excludes start-up)
    data_wait_share: float  # share of step time spent waiting for the loader
    run_dir: Path
    metrics_path: Path
    resumed_from_step: int = 0
    world_size: int = 1
    text_type_counts: dict[str, int] = field(default_factory=dict)  # rank 0's samples


# ---------------------------------------------------------------------------------------
# Pure pieces the tests call directly
def lr_at(
    step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    """open_clip's schedule: linear warm-up to `base_lr`, then cosine down to `min_lr`.
    `step` counts from 0 (the LR used for the first optimizer step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: gains, biases, norms and logit_scale are exempt
    (open_clip's exclusion rule)."""

    def exempt(name: str, param: torch.nn.Parameter) -> bool:
        return (
            param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        ) or "logit_scale" in name

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if exempt(name, param) else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size, target)


# ---------------------------------------------------------------------------------------
@dataclass
class _Setup:
    params: TrainParams
    env: Distributed
    run_dir: Path
    spec: StreamSpec
    total_steps: int
    global_batch: int
    model: torch.nn.Module  # wrapped (DDP / compiled) for forward
    bare: torch.nn.Module
    transform: Callable
    tokenizer: Callable
    optimizer: torch.optim.Optimizer
    loss: torch.nn.Module
    start_step: int = 0
    replay: bool = True
    normalizer: PixelNormalizer | None = None  # set when workers send uint8 images


def train(params: TrainParams, on_step: Callable[[StepReport], None] | None = None) -> TrainResult:
    """Train (or resume) one run; every rank calls this, rank 0 writes the run folder."""
    params.validate()
    threads = torch.get_num_threads()
    if params.threads:
        torch.set_num_threads(params.threads)
    env = init_distributed(params.device)
    try:
        setup = _prepare(params, env)
        return _run(setup, on_step)
    finally:
        torch.set_num_threads(threads)
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _prepare(params: TrainParams, env: Distributed) -> _Setup:
    import open_clip

    from treeoflife.train.models import register_model_configs

    register_model_configs()
    run_dir = params.output_dir
    resume_path = ckpt.find_resume(run_dir, params.resume)
    if resume_path is None and ckpt.resolve_latest(run_dir) is not None:
        raise TolError(
            f"{run_dir} already holds checkpoints: pass --resume latest to continue that run, "
            "or choose another --output folder"
        )
    urls = expand_shards(params.shards)
    batch = params.per_process_batch(env.world_size)
    global_batch = batch * env.world_size
    samples_per_epoch = params.samples_per_epoch or count_samples(urls)
    if samples_per_epoch is None:
        if params.steps is None and params.samples is None:
            raise TolError(
                f"cannot tell how many samples {params.shards[0]} holds (no sizes.json beside "
                "the shards): pass --samples-per-epoch, --samples or --steps"
            )
        samples_per_epoch = global_batch * params.total_steps(global_batch, global_batch)
    total_steps = params.total_steps(global_batch, samples_per_epoch)
    types = params.caption_types
    spec = StreamSpec(
        urls=tuple(urls),
        text_types=types,
        text_sampling=params.text_sampling,
        batch_size=batch,
        steps_per_epoch=steps_per_epoch(samples_per_epoch, global_batch),
        resample=params.resample,
        shuffle_buffer=params.shuffle_buffer,
        shuffle_initial=params.shuffle_initial,
        seed=params.seed,
        rank=env.rank,
        world_size=env.world_size,
    )
    if not params.resample and len(urls) < env.world_size * max(1, params.workers):
        raise TolError(
            f"{len(urls)} shards < {env.world_size} processes x {params.workers} workers: "
            "use --resample (the default) or fewer --workers"
        )

    state = ckpt.load_checkpoint(resume_path) if resume_path is not None else None
    if state is not None and state.get("model", params.model) != params.model:
        raise TolError(
            f"{resume_path} holds a {state['model']} model, not {params.model}: "
            "resume with the same --model"
        )
    torch.manual_seed(params.seed)
    # A resumed run takes its weights from the checkpoint: no download of --pretrained.
    initial = params.pretrained if state is None else None
    try:
        model, transform, _ = open_clip.create_model_and_transforms(
            params.model, pretrained=initial, output_dict=True, device=env.device
        )
    except RuntimeError as exc:
        raise TolError(
            f"cannot build model {params.model!r} with weights {params.pretrained!r}: {exc} "
            "(a pretrained tag needs network access; a local checkpoint file works offline)"
        ) from None
    tokenizer = open_clip.get_tokenizer(params.model)
    # On a GPU, workers send uint8 pixels and the device normalises (4x less traffic).
    uint8 = params.uint8_transfer
    if uint8 is None:
        uint8 = env.device.type == "cuda"
    split = split_transform(transform) if uint8 else None
    if split is not None:
        spec = dataclasses.replace(spec, uint8_images=True)
    if params.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(
        param_groups(model, params.weight_decay),
        lr=params.lr,
        betas=(params.beta1, params.beta2),
        eps=params.eps,
        **({"fused": True} if env.device.type == "cuda" else {}),
    )

    start_step, replay = 0, True
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"])
        start_step = int(state["step"])
        replay = _can_replay(state.get("data", {}), spec, params)
        if params.resume_data == "reseed" or not replay:
            replay = False
            log.warning("resuming at step %d with a fresh data order (reseeded)", start_step)
        log.info("resumed %s at step %d", resume_path, start_step)

    bare = model
    wrapped: torch.nn.Module = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if params.compile:
        wrapped = torch.compile(wrapped, backend=params.compile_backend)
    loss = open_clip.ClipLoss(
        local_loss=params.local_loss,
        gather_with_grad=params.gather_with_grad,
        cache_labels=True,
        rank=env.rank,
        world_size=env.world_size,
    )
    return _Setup(
        params=params,
        env=env,
        run_dir=run_dir,
        spec=spec,
        total_steps=total_steps,
        global_batch=global_batch,
        model=wrapped,
        bare=bare,
        transform=transform,
        tokenizer=tokenizer,
        optimizer=optimizer,
        loss=loss,
        start_step=start_step,
        replay=replay,
        normalizer=split[1] if split is not None else None,
    )


def _can_replay(saved: dict[str, Any], spec: StreamSpec, params: TrainParams) -> bool:
    """The saved data position can be replayed only with the same stream layout."""
    now = _data_position(spec, params, step=0)
    same = all(saved.get(k) == now[k] for k in ("layout",))
    if not same:
        log.warning(
            "data layout changed since the checkpoint (%s -> %s): cannot replay the stream",
            saved.get("layout"),
            now["layout"],
        )
    return same


def _data_position(spec: StreamSpec, params: TrainParams, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": max(0, step - 1) // spec.steps_per_epoch if step else 0,
        "layout": {
            "shards": len(spec.urls),
            "shards_digest": _digest(spec.urls),
            "world_size": spec.world_size,
            "workers": params.workers,
            "batch_size": spec.batch_size,
            "steps_per_epoch": spec.steps_per_epoch,
            "seed": spec.seed,
            "resample": spec.resample,
            "shuffle": [spec.shuffle_buffer, spec.shuffle_initial],
            "text_types": list(spec.text_types),
            "text_sampling": spec.text_sampling,
        },
    }


def _digest(urls: tuple[str, ...]) -> str:
    from treeoflife.train.data import mix_seed

    return f"{mix_seed(*urls):016x}"


# ---------------------------------------------------------------------------------------
class _Metrics:
    """metrics.jsonl (and TensorBoard when installed) on rank 0."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.board = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():
            # Lines past the checkpoint belong to steps that will be trained again.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board is not None and "loss" in record:
            for key in ("loss", "lr", "samples_per_s", "data_wait_share", "logit_scale"):
                if record.get(key) is not None:
                    self.board.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _run_batches(setup: _Setup) -> Iterator[Batch]:
    """Batches from the resume point to the end of the run (one loader for all epochs)."""
    return batches(
        setup.spec,
        setup.transform,
        setup.tokenizer,
        start_step=setup.start_step,
        stop_step=setup.total_steps,
        workers=setup.params.workers,
        replay=setup.replay,
        pin_memory=setup.env.device.type == "cuda",
    )


def _run(setup: _Setup, on_step: Callable[[StepReport], None] | None) -> TrainResult:
    params, env = setup.params, setup.env
    run_dir = setup.run_dir
    metrics = _Metrics(run_dir, env.is_main, setup.start_step, params.tensorboard)
    precision = params.precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" else "fp32"
    autocast = (
        torch.autocast(env.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else nullcontext()
    )
    types = setup.spec.text_types
    if env.is_main:
        (run_dir / PARAMS_FILE).write_text(json.dumps(params.to_dict(), indent=2) + "\n")
        metrics.write(
            {
                "event": "start",
                "step": setup.start_step,
                "resumed": setup.start_step > 0,
                "total_steps": setup.total_steps,
                "steps_per_epoch": setup.spec.steps_per_epoch,
                "global_batch": setup.global_batch,
                "world_size": env.world_size,
                "text_types": list(types),
                "text_sampling": params.text_sampling,
                "precision": precision,
                "device": str(env.device),
            }
        )
    log.info(
        "training %s for %d steps, global batch %d, text types %s sampled %s",
        params.model,
        setup.total_steps,
        setup.global_batch,
        ",".join(types),
        params.text_sampling,
    )
    schedule = {
        "base_lr": params.lr,
        "warmup_steps": params.warmup_steps,
        "total_steps": setup.total_steps,
        "min_lr": params.min_lr,
    }
    type_counts = torch.zeros(len(types), dtype=torch.long)
    window_types = torch.zeros(len(types), dtype=torch.long)
    window_loss = torch.zeros((), device=env.device)
    window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()
    run_wait, run_start = 0.0, time.perf_counter()
    last_loss = float("nan")
    step = setup.start_step
    epoch = step // setup.spec.steps_per_epoch
    final_path = run_dir / ckpt.FINAL

    def save(path: Path) -> Path:
        return ckpt.save_checkpoint(
            path,
            model=setup.bare,
            model_name=params.model,
            optimizer=setup.optimizer,
            step=step,
            epoch=epoch,
            schedule=schedule,
            data=_data_position(setup.spec, params, step),
            params=params.to_dict(),
        )

    setup.model.train()
    loader = _run_batches(setup)
    try:
        while step < setup.total_steps:
            waited = time.perf_counter()
            batch = next(loader)
            wait = time.perf_counter() - waited
            if batch.step != step + 1:
                raise TolError(f"data stream out of order: got step {batch.step}, want {step + 1}")
            lr = lr_at(step, **schedule)
            for group in setup.optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(env.device, non_blocking=True)
            if setup.normalizer is not None:
                images = setup.normalizer(images)
            texts = batch.texts.to(env.device, non_blocking=True)
            setup.optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = setup.model(images, texts)
                loss = setup.loss(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            if params.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(setup.bare.parameters(), params.grad_clip_norm)
            setup.optimizer.step()
            with torch.no_grad():
                setup.bare.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            epoch = (step - 1) // setup.spec.steps_per_epoch
            counts = torch.bincount(batch.text_type_ids, minlength=len(types))
            type_counts += counts
            window_types += counts
            window_loss += loss.detach().float()
            window_steps += 1
            window_wait += wait
            run_wait += wait

            report_loss = rate = share = None
            if step % params.log_every == 0 or step == setup.total_steps:
                mean_loss = window_loss / window_steps
                if env.world_size > 1:
                    dist.all_reduce(mean_loss)
                    mean_loss /= env.world_size
                elapsed = time.perf_counter() - window_start
                last_loss = report_loss = float(mean_loss)
                if not math.isfinite(report_loss):
                    raise TolError(f"loss became {report_loss} by step {step}: lower --lr")
                rate = setup.global_batch * window_steps / max(elapsed, 1e-9)
                share = window_wait / max(elapsed, 1e-9)
                metrics.write(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": report_loss,
                        "lr": lr,
                        "samples_per_s": rate,
                        "data_wait_s": window_wait,
                        "data_wait_share": share,
                        "logit_scale": float(setup.bare.logit_scale.detach().exp()),
                        "text_type_counts": dict(zip(types, window_types.tolist(), strict=True)),
                    }
                )
                window_loss.zero_()
                window_types.zero_()
                window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()
            if env.is_main:
                if params.save_every and step % params.save_every == 0 and step < setup.total_steps:
                    path = save(ckpt.periodic_path(run_dir, step))
                    ckpt.point_latest(run_dir, path)
                    ckpt.prune_periodic(run_dir, params.keep_checkpoints)
                if on_step is not None:
                    on_step(
                        StepReport(step, setup.total_steps, epoch, lr, report_loss, rate, share)
                    )
        if env.is_main:
            save(final_path)
            ckpt.point_latest(run_dir, final_path)
    finally:
        del loader  # stops the loader workers
        metrics.close()
    if env.world_size > 1:
        dist.barrier()
    elapsed = time.perf_counter() - run_start
    steps_run = step - setup.start_step
    result = TrainResult(
        checkpoint=final_path,
        final_loss=last_loss,
        steps=step,
        samples_per_s=setup.global_batch * steps_run / max(elapsed, 1e-9),
        data_wait_share=run_wait / max(elapsed, 1e-9),
        run_dir=run_dir,
        metrics_path=metrics.path,
        resumed_from_step=setup.start_step,
        world_size=env.world_size,
        text_type_counts=dict(zip(types, type_counts.tolist(), strict=True)),
    )
    metrics.write({"event": "end", "step": step, **_summary(result)})
    return result


def _summary(result: TrainResult) -> dict[str, Any]:
    return {
        "final_loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "data_wait_share": result.data_wait_share,
        "checkpoint": str(result.checkpoint),
        "text_type_counts": result.text_type_counts,
    }
