"""BioCLIP's benchmark: zero-shot and SimpleShot few-shot evaluation of open_clip checkpoints
on tasks described in `manifests/benchmarks/`, the paper's table, intrinsic embedding plots,
and open-ended tree-of-life prediction (`tol eval`, `tol eval --embeddings`, `tol predict`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from treeoflife.errors import TolError
from treeoflife.evaluate.checkpoints import CheckpointSpec, load_model, parse_checkpoint
from treeoflife.evaluate.fewshot import DEFAULT_SEEDS, few_shot
from treeoflife.evaluate.report import EvalResult, RunResult, TaskResult, format_table
from treeoflife.evaluate.tasks import (
    TaskData,
    TaskSpec,
    class_texts,
    encode_task,
    expand_task_names,
    load_task,
    open_task_data,
)
from treeoflife.evaluate.templates import TEMPLATE_SETS
from treeoflife.evaluate.zeroshot import class_embeddings, logit_scale, zero_shot_metrics

__all__ = ["EvalResult", "evaluate", "format_table", "parse_checkpoint"]

log = logging.getLogger(__name__)

# progress(label, total) -> advance(n); the CLI passes rich bars, library callers nothing.
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


def _no_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def task_templates(spec: TaskSpec, data: TaskData, override: str | None) -> tuple[str, ...]:
    """`openai` (80 prompts, BioCLIP's choice), `single`, or `dataset` (its own file)."""
    choice = override or spec.templates
    if choice == "dataset":
        if not data.templates:
            raise TolError(f"task {spec.name}: its data ships no zero-shot templates file")
        return data.templates
    if choice not in TEMPLATE_SETS:
        raise TolError(f"templates must be openai, single or dataset, not {choice!r}")
    return TEMPLATE_SETS[choice]


def evaluate(
    checkpoints: Sequence[str | Path | CheckpointSpec],
    tasks: Sequence[str | Path | TaskSpec],
    *,
    model_name: str = "ViT-B-16",
    data_root: Path = Path("eval-data"),
    split: str | None = None,
    text_type: str | None = None,
    templates: str | None = None,
    shots: Sequence[int] = (1, 5),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    zero_shot: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    skip_missing: bool = False,
    progress: ProgressFactory | None = None,
) -> EvalResult:
    """Zero-shot and k-shot top-1/top-5/mean-per-class-recall of each checkpoint on each task.

    Checkpoints are `[LABEL=][MODEL@]SOURCE` strings (see `parse_checkpoint`); tasks are names
    in manifests/benchmarks/ (`bioclip` = the paper's 10, `all`) or TOML paths; each task's
    data is looked up under `data_root`, in the TOML's split unless `split` overrides it.
    With `skip_missing`, a task whose data is absent is reported as skipped, not an error.
    """
    progress = progress or _no_progress
    specs = [
        c if isinstance(c, CheckpointSpec) else parse_checkpoint(c, model_name) for c in checkpoints
    ]
    task_specs = [
        spec
        for task in tasks
        for spec in (
            [task] if isinstance(task, TaskSpec) else map(load_task, expand_task_names([task]))
        )
    ]
    if split:
        task_specs = [dataclasses.replace(spec, split=split) for spec in task_specs]
    opened: dict[str, TaskData | TolError] = {}
    for spec in task_specs:
        try:
            opened[spec.name] = open_task_data(spec, data_root)
        except TolError as exc:
            if not skip_missing:
                raise
            opened[spec.name] = exc
    runs = []
    for checkpoint in specs:
        loaded = load_model(checkpoint, device)
        run = RunResult(checkpoint)
        for spec in task_specs:
            data = opened[spec.name]
            if isinstance(data, TolError):
                run.tasks[spec.name] = TaskResult(spec.name, error=str(data))
                continue
            run.tasks[spec.name] = _evaluate_task(
                loaded,
                spec,
                data,
                text_type=text_type or spec.text_type,
                templates=task_templates(spec, data, templates),
                shots=shots,
                seeds=tuple(seeds),
                zero_shot=zero_shot,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
        runs.append(run)
    settings = {
        "model_name": model_name,
        "data_root": str(data_root),
        "split": split or "task default",
        "text_type": text_type or "task default",
        "templates": templates or "task default",
        "shots": list(shots),
        "seeds": list(seeds),
        "metric_units": "percent",
        "few_shot": "SimpleShot CL2N nearest class mean; mean ± population std over seeds",
    }
    return EvalResult(tasks=task_specs, runs=runs, settings=settings)


def _evaluate_task(loaded, spec, data, *, text_type, templates, shots, seeds, zero_shot,
                   batch_size, device, progress) -> TaskResult:  # fmt: skip
    label = loaded.spec.label
    features = encode_task(
        loaded.model,
        loaded.preprocess,
        data,
        batch_size=batch_size,
        device=device,
        on_batch=progress(f"{label} · {spec.column}: images", spec.num_images),
    )
    result = TaskResult(
        spec.name,
        num_images=len(features.labels),
        num_classes=len(features.classes),
        text_type=text_type,
        num_templates=len(templates),
    )
    if spec.num_classes and spec.num_classes != len(features.classes):
        log.warning(
            "task %s: %d classes found, the TOML says %d",
            spec.name,
            len(features.classes),
            spec.num_classes,
        )
    if zero_shot:
        names = class_texts(features.classes, text_type)
        classifier = class_embeddings(
            loaded.model,
            loaded.tokenizer,
            names,
            templates,
            device=device,
            on_batch=progress(f"{label} · {spec.column}: class texts", len(names)),
        )
        result.zero_shot = zero_shot_metrics(
            features.features, features.labels, classifier, logit_scale(loaded.model)
        )
    for k in shots:
        try:
            result.few_shot[str(k)] = few_shot(
                features.features, features.labels, k, seeds
            ).summary()
        except ValueError as exc:
            log.warning("task %s: %s", spec.name, exc)
    return result
