"""Evaluation results: the BioCLIP paper's table layout (one column per task, then the mean)
as Markdown, with the published BioCLIP/CLIP/OpenCLIP rows beside the runs', and as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from treeoflife.evaluate.checkpoints import CheckpointSpec
from treeoflife.evaluate.tasks import TaskSpec

SECTIONS = (("zero_shot", "Zero-shot"), ("one_shot", "One-shot"), ("five_shot", "Five-shot"))
SHOT_SECTIONS = {1: "one_shot", 5: "five_shot"}
PUBLISHED_ORDER = ("CLIP ViT-B/16", "OpenCLIP ViT-B/16", "BioCLIP", "iNat21 Only")


@dataclass
class TaskResult:
    """One checkpoint on one task; metrics in percent."""

    task: str
    num_images: int = 0
    num_classes: int = 0
    text_type: str = ""
    num_templates: int = 0
    zero_shot: dict[str, float | None] | None = None
    few_shot: dict[str, dict[str, Any]] = field(default_factory=dict)  # "1" -> summary
    error: str | None = None

    def value(self, section: str, metric: str = "top1") -> float | None:
        if section == "zero_shot":
            return self.zero_shot.get(metric) if self.zero_shot else None
        shots = {v: str(k) for k, v in SHOT_SECTIONS.items()}.get(section)
        summary = self.few_shot.get(shots) if shots else None
        return summary.get(metric) if summary else None

    def std(self, section: str, metric: str = "top1") -> float | None:
        return self.value(section, f"{metric}_std") if section != "zero_shot" else None


@dataclass
class RunResult:
    checkpoint: CheckpointSpec
    tasks: dict[str, TaskResult] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Every checkpoint on every task, with the settings used."""

    tasks: list[TaskSpec]
    runs: list[RunResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "tasks": [
                {
                    "name": t.name,
                    "column": t.column,
                    "source": t.source,
                    "url": t.url,
                    "published": t.published,
                    "published_source": t.published_source,
                }
                for t in self.tasks
            ],
            "runs": [
                {
                    "checkpoint": asdict(run.checkpoint),
                    "tasks": {name: asdict(result) for name, result in run.tasks.items()},
                    "mean": {
                        section: _mean([r.value(section) for r in run.tasks.values()])
                        for section, _ in SECTIONS
                    },
                }
                for run in self.runs
            ],
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _mean(values: list[float | None]) -> float | None:
    """Mean over tasks, only when every task has a value (as the paper's Mean column)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ± {std:.1f}" if std is not None else f"{value:.1f}"


def _published_models(tasks: list[TaskSpec], section: str) -> list[str]:
    found = {m for t in tasks for m, kinds in t.published.items() if section in kinds}
    return [m for m in PUBLISHED_ORDER if m in found] + sorted(found - set(PUBLISHED_ORDER))


def format_section(result: EvalResult, section: str, metric: str = "top1") -> str | None:
    """One Markdown table (zero_shot, one_shot or five_shot), or None if nothing to show."""
    tasks = result.tasks
    run_rows = []
    for run in result.runs:
        per_task = [run.tasks.get(t.name) for t in tasks]
        values = [r.value(section, metric) if r else None for r in per_task]
        if all(v is None for v in values):
            continue
        stds = [r.std(section, metric) if r else None for r in per_task]
        cells = [_cell(v, s) for v, s in zip(values, stds, strict=True)]
        run_rows.append([f"**{run.checkpoint.label}**", *cells, _cell(_mean(values))])
    if not run_rows:
        return None
    rows = []
    for model in _published_models(tasks, section) if metric == "top1" else []:
        values = [t.published.get(model, {}).get(section) for t in tasks]
        rows.append([f"{model} (published)", *map(_cell, values), _cell(_mean(values))])
    rows += run_rows
    header = ["Model", *(t.column for t in tasks), "Mean"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    title = dict(SECTIONS)[section]
    return (
        f"**{title} top-1 accuracy (%)**\n\n" + "\n".join(lines)
        if metric == "top1"
        else (f"**{title} {metric} (%)**\n\n" + "\n".join(lines))
    )


def format_table(result: EvalResult, metric: str = "top1") -> str:
    """The paper's tables (zero-, one-, five-shot) as Markdown, published rows first."""
    sections = [format_section(result, section, metric) for section, _ in SECTIONS]
    notes = sorted({t.published_source for t in result.tasks if t.published_source})
    text = "\n\n".join(s for s in sections if s)
    if notes:
        text += "\n\nPublished figures: " + "; ".join(notes)
    errors = [
        f"{run.checkpoint.label} / {name}: {r.error}"
        for run in result.runs
        for name, r in run.tasks.items()
        if r.error
    ]
    if errors:
        text += "\n\nSkipped: " + "; ".join(errors)
    return text
