"""`tol train`: BioCLIP-style CLIP training on release shards (one process, or torchrun)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from treeoflife.cli.common import DEFAULT_WORKSPACE, WorkspaceOption, console, fail
from treeoflife.errors import TolError
from treeoflife.train.params import MIXED, PRESETS, TEXT_TYPES, TrainParams, preset_params

if TYPE_CHECKING:
    from treeoflife.train.loop import StepReport

app = typer.Typer()

_DEFAULTS = TrainParams()


def _opt(help_text: str, **kw):  # noqa: ANN202 - typer option factory
    return typer.Option(help=help_text, show_default=False, **kw)


@app.command()
def train(
    shards: Annotated[
        list[str] | None,
        _opt(
            "Training shards: a .tar path, a folder, a glob, a brace pattern "
            "(shard-{000000..000165}.tar), an http(s):// URL or hf://datasets/ORG/NAME/PATH; "
            "repeat the option or join with '::'. [default: WORKSPACE/release/train]"
        ),
    ] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    preset: Annotated[
        str | None,
        _opt(
            f"Start from a named recipe ({', '.join(PRESETS)}); bioclip-b16 is BioCLIP's: "
            "ViT-B-16 from OpenAI weights, lr 1e-4, 1,000 warm-up steps, cosine, wd 0.2, "
            "100 epochs, global batch 32,768, local loss + gathered gradients, gradient "
            "checkpointing. Options given here override it."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        _opt(
            "Run folder: checkpoints, metrics.jsonl, params.json. [default: WORKSPACE/runs/train]"
        ),
    ] = None,
    model: Annotated[
        str | None,
        _opt(f"open_clip model name (tol-tiny is bundled). [default: {_DEFAULTS.model}]"),
    ] = None,
    pretrained: Annotated[
        str | None,
        _opt(
            "Initial weights: a local open_clip checkpoint file, or an open_clip tag such as "
            "'openai' (downloads; needs network). 'none' for random init. [default: none]"
        ),
    ] = None,
    text_types: Annotated[
        str | None,
        _opt(
            f"Comma-separated caption members to train on: {MIXED} (BioCLIP's com, sci, taxon, "
            f"sci_com, taxon_com) or any of {', '.join(TEXT_TYPES)}. [default: {MIXED}]"
        ),
    ] = None,
    text_sampling: Annotated[
        str | None,
        _opt(
            "How a text type is drawn: per-sample (as the BioCLIP paper describes) or "
            "per-batch (one type per step for the whole global batch, as BioCLIP's released "
            "code does). Logged in metrics.jsonl. [default: per-sample]"
        ),
    ] = None,
    batch_size: Annotated[
        int | None, _opt(f"Samples per process per step. [default: {_DEFAULTS.batch_size}]")
    ] = None,
    global_batch_size: Annotated[
        int | None, _opt("Samples per step over all processes (sets the per-process batch).")
    ] = None,
    epochs: Annotated[
        int | None, _opt(f"Passes over --samples-per-epoch. [default: {_DEFAULTS.epochs}]")
    ] = None,
    samples: Annotated[int | None, _opt("Total training samples (overrides --epochs).")] = None,
    steps: Annotated[int | None, _opt("Total optimizer steps (overrides the others).")] = None,
    samples_per_epoch: Annotated[
        int | None,
        _opt("Samples in one epoch. [default: the sum of sizes.json beside the shards]"),
    ] = None,
    lr: Annotated[float | None, _opt(f"Peak learning rate. [default: {_DEFAULTS.lr}]")] = None,
    warmup_steps: Annotated[
        int | None, _opt(f"Linear warm-up steps, then cosine. [default: {_DEFAULTS.warmup_steps}]")
    ] = None,
    weight_decay: Annotated[
        float | None,
        _opt(f"AdamW weight decay (not on gains/biases). [default: {_DEFAULTS.weight_decay}]"),
    ] = None,
    precision: Annotated[
        str | None,
        _opt("fp32, bf16 (autocast) or auto (bf16 on GPU, fp32 on CPU). [default: auto]"),
    ] = None,
    grad_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--grad-checkpointing/--no-grad-checkpointing",
            help="Recompute activations in backward to save memory.",
            show_default=False,
        ),
    ] = None,
    local_loss: Annotated[
        bool | None,
        typer.Option(
            "--local-loss/--global-loss",
            help="Each rank scores its own rows against all gathered features (linear memory).",
            show_default=False,
        ),
    ] = None,
    gather_with_grad: Annotated[
        bool | None,
        typer.Option(
            "--gather-with-grad/--no-gather-with-grad",
            help="Let gradients flow through the cross-rank feature gather.",
            show_default=False,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the model.", show_default=False),
    ] = None,
    resample: Annotated[
        bool | None,
        typer.Option(
            "--resample/--no-resample",
            help="Draw shards with replacement (multi-epoch friendly) or read each shard once "
            "per epoch split over ranks and workers. [default: resample]",
            show_default=False,
        ),
    ] = None,
    shuffle_buffer: Annotated[
        int | None, _opt(f"Sample shuffle buffer. [default: {_DEFAULTS.shuffle_buffer}]")
    ] = None,
    workers: Annotated[
        int | None, _opt(f"Data-loader processes per GPU/process. [default: {_DEFAULTS.workers}]")
    ] = None,
    seed: Annotated[int | None, _opt(f"Random seed. [default: {_DEFAULTS.seed}]")] = None,
    save_every: Annotated[
        int | None,
        _opt(
            f"Steps between periodic checkpoints (0: final only). [default: {_DEFAULTS.save_every}]"
        ),
    ] = None,
    log_every: Annotated[
        int | None, _opt(f"Steps between metrics.jsonl lines. [default: {_DEFAULTS.log_every}]")
    ] = None,
    resume: Annotated[
        str | None,
        _opt(
            "Continue a run: 'latest' (the run folder's newest checkpoint; starts fresh if "
            "none) or a checkpoint path. Restores step, optimizer, schedule, RNG and the "
            "data position."
        ),
    ] = None,
    resume_data: Annotated[
        str | None,
        _opt(
            "On resume: skip (replay the data stream to the saved position, exact when the "
            "layout is unchanged) or reseed (a fresh order for the rest of the epoch). "
            "[default: skip]"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        _opt(
            "torch CPU threads per process (0: torch's default; 1 is often fastest on a "
            "busy or small machine). [default: 0]"
        ),
    ] = None,
    device: Annotated[str | None, _opt("cpu, cuda, cuda:N or auto. [default: auto]")] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Train an open_clip model with the CLIP loss on release shards (BioCLIP's recipe).

    Runs in one process on CPU or GPU, or on many GPUs and nodes under torchrun:
    `torchrun --nproc_per_node 8 -m treeoflife train --preset bioclip-b16 --shards ...`.
    Writes OUTPUT/final.pt (loadable by open_clip.create_model_and_transforms(name,
    pretrained=PATH)), periodic checkpoints, params.json and metrics.jsonl.
    """
    from treeoflife.train.loop import train as run_training

    overrides = dict(
        shards=shards or [str(Path(workspace) / "release" / "train")],
        output_dir=output or Path(workspace) / "runs" / "train",
        model=model,
        pretrained=pretrained,
        text_types=tuple(t.strip() for t in text_types.split(",")) if text_types else None,
        text_sampling=text_sampling,
        batch_size=batch_size,
        global_batch_size=global_batch_size,
        epochs=epochs,
        samples=samples,
        steps=steps,
        samples_per_epoch=samples_per_epoch,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
        local_loss=local_loss,
        gather_with_grad=gather_with_grad,
        compile=compile,
        resample=resample,
        shuffle_buffer=shuffle_buffer,
        workers=workers,
        seed=seed,
        save_every=save_every,
        log_every=log_every,
        resume=resume,
        device=device,
        threads=threads,
        resume_data=resume_data,
    )
    if shuffle_buffer is not None:
        overrides["shuffle_initial"] = min(shuffle_buffer, _DEFAULTS.shuffle_initial)
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        params = preset_params(preset, **overrides)
        if progress and is_main:
            with _progress_bar() as on_step:
                result = run_training(params, on_step)
        else:
            result = run_training(params)
    except TolError as exc:
        fail(exc)
    if is_main:
        console.print(
            f"trained {params.model} for {result.steps} steps "
            f"(from step {result.resumed_from_step}) on {result.world_size} process(es): "
            f"loss {result.final_loss:.3f}, {result.samples_per_s:.1f} samples/s, "
            f"data wait {result.data_wait_share:.0%}; checkpoint {result.checkpoint}"
        )


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[StepReport], None]]:
    """A rich bar over optimizer steps showing the latest logged loss, rate and data wait."""
    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None, status="")

        def on_step(report: StepReport) -> None:
            status = None
            if report.loss is not None:
                status = (
                    f"loss {report.loss:.3f} lr {report.lr:.2e} "
                    f"{report.samples_per_s:.0f} samples/s wait {report.data_wait_share:.0%}"
                )
            bar.update(
                task,
                completed=report.step,
                total=report.total_steps,
                **({"status": status} if status else {}),
            )

        yield on_step
