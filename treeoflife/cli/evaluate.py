"""`tol eval` (benchmark tables, `--embeddings` for the t-SNE figure) and `tol predict`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from treeoflife.cli.common import DEFAULT_WORKSPACE, console, fail
from treeoflife.errors import TolError

app = typer.Typer()

CheckpointsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Models to compare, each `[LABEL=][MODEL@]SOURCE`: SOURCE is a checkpoint file "
        "(as `tol train` writes), `random` (untrained baseline) or an open_clip pretrained tag "
        "(e.g. `clip=ViT-B-16@openai`, needs the weights cached or a network).",
        show_default=False,
    ),
]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="open_clip model name for checkpoints that do not name theirs (by a MODEL@ "
        "prefix, or by the `model` key `tol train` stores in the file).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, mps.")]


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """A factory of rich progress bars: `factory(label, total)` gives an `advance(n)`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:

        def factory(label: str, total: int | None) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield factory


@app.command("eval")
def eval_command(
    checkpoints: CheckpointsArgument,
    task: Annotated[
        list[str],
        typer.Option(
            "--task",
            "-t",
            help="Task name in manifests/benchmarks/ or a TOML path; repeat it. `bioclip` = the "
            "paper's 10 tasks, `all` = every TOML there.",
        ),
    ] = ["bioclip"],  # noqa: B006
    model: ModelOption = "ViT-B-16",
    data_root: Annotated[
        Path,
        typer.Option(
            help="Folder holding each task's data under its [data] dir (ImageFolder tree, "
            "CLIP_benchmark shards or release shards).",
            envvar="TOL_EVAL_DATA",
        ),
    ] = Path("eval-data"),
    split: Annotated[
        str | None,
        typer.Option(help="Read this split of every task instead of its TOML's (e.g. val)."),
    ] = None,
    text_type: Annotated[
        str | None,
        typer.Option(
            help="Class-name text: asis, sci, com, taxon, sci_com, taxon_com, taxonTag, "
            "taxonTag_com (default: each task's; BioCLIP uses taxon_com on Rare Species)."
        ),
    ] = None,
    templates: Annotated[
        str | None,
        typer.Option(help="Prompts: openai (the 80 CLIP ImageNet ones), single, dataset."),
    ] = None,
    shots: Annotated[
        str, typer.Option(help="Few-shot k values, comma-separated; '' for none.")
    ] = "1,5",
    seeds: Annotated[
        int, typer.Option(help="Few-shot seeds (folds) per k; mean ± std over them.")
    ] = 5,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot/--no-zero-shot", help="Run zero-shot.")
    ] = True,
    skip_missing: Annotated[
        bool, typer.Option(help="Report tasks whose data is missing as skipped instead of failing.")
    ] = False,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings",
            help="Intrinsic evaluation instead: t-SNE plots of image embeddings coloured "
            "kingdom…order and k-NN taxon agreement per rank, for each checkpoint and --baseline.",
        ),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="With --embeddings: a baseline plotted beside them (default: random init)."
        ),
    ] = "baseline=random",
    max_images: Annotated[
        int, typer.Option(help="With --embeddings: images sampled for t-SNE.")
    ] = 2000,
    neighbours: Annotated[
        int, typer.Option("--k", help="With --embeddings: neighbours per image.")
    ] = 10,
    out: Annotated[
        Path, typer.Option(help="Folder for results.json, table.md (and embeddings.*).")
    ] = Path("runs/eval"),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: DeviceOption = "cpu",
) -> None:
    """Benchmark checkpoints zero-shot and few-shot on BioCLIP's tasks; print the paper's table.

    Zero-shot wraps each class name (in the chosen text type) in the prompt templates and
    picks the nearest class text embedding; one- and five-shot use SimpleShot (CL2N nearest
    class mean) over 5 seeds. Prints top-1 tables with the published BioCLIP / CLIP /
    OpenCLIP rows beside the run's, and writes results.json and table.md to --out.
    """
    from treeoflife.evaluate import evaluate, format_table
    from treeoflife.evaluate.checkpoints import parse_checkpoint
    from treeoflife.evaluate.tasks import expand_task_names, load_task

    try:
        names = [str(name) for name in expand_task_names(task)]
        if embeddings:
            specs = [parse_checkpoint(c, model) for c in checkpoints]
            if baseline:
                specs.append(parse_checkpoint(baseline, model))
            task_spec = load_task(names[0])
            task_spec = dataclasses.replace(task_spec, split=split) if split else task_spec
            _run_embeddings(
                specs,
                task_spec,
                data_root,
                out,
                max_images,
                neighbours,
                batch_size,
                device,
            )
            return
        k_values = [int(k) for k in shots.split(",") if k.strip()]
        with progress_bars() as bars:
            result = evaluate(
                checkpoints,
                names,
                model_name=model,
                data_root=data_root,
                split=split,
                text_type=text_type,
                templates=templates,
                shots=k_values,
                seeds=tuple(range(seeds)),
                zero_shot=zero_shot,
                batch_size=batch_size,
                device=device,
                skip_missing=skip_missing,
                progress=bars,
            )
    except TolError as exc:
        fail(exc)
    except ValueError as exc:
        fail(TolError(f"bad option value: {exc}"))
    table = format_table(result)
    Console().print(Markdown(table))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    path = result.write_json(out / "results.json")
    console.print(f"wrote {path} and {out / 'table.md'}")


def _run_embeddings(specs, spec, data_root, out, max_images, k, batch_size, device) -> None:
    from treeoflife.evaluate.embeddings import intrinsic_evaluation
    from treeoflife.evaluate.tasks import open_task_data

    data = open_task_data(spec, data_root)
    with progress_bars() as bars:
        report = intrinsic_evaluation(
            specs,
            data,
            out,
            k=k,
            max_images=max_images,
            batch_size=batch_size,
            device=device,
            progress=bars,
        )
    Console().print(Markdown(report.table()))
    console.print(f"wrote {report.files['html']} and {report.files['json']}")


@app.command("predict")
def predict_command(
    images: Annotated[
        list[Path], typer.Argument(help="Image files to classify.", show_default=False)
    ],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", "-c", help="Model: a checkpoint file or `[MODEL@]TAG`.")
    ],
    model: ModelOption = "ViT-B-16",
    taxa: Annotated[
        Path,
        typer.Option(
            help="Where the candidate taxa come from: a workspace (taxa_resolved), or a release "
            "catalog.csv / catalog.parquet.",
            envvar="TOL_WORKSPACE",
        ),
    ] = DEFAULT_WORKSPACE,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Taxa listed per image.")] = 5,
    text_type: Annotated[
        str,
        typer.Option(help="How each taxon is written (as in tol eval): taxon_com, sci, com, ..."),
    ] = "taxon_com",
    templates: Annotated[
        str, typer.Option(help="openai (80 prompts, as BioCLIP) or single.")
    ] = "openai",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Text-embedding cache (default ~/.cache/treeoflife/taxa-embeddings, $TOL_CACHE)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Classify images over every taxon of a catalog: top-k taxa and the label at each rank.

    Each taxon's text embedding is computed once per checkpoint and taxa list and cached.
    Rank labels are chosen top-down from summed taxon probabilities, so they always agree
    with the species picked at the bottom.
    """
    from treeoflife.evaluate.predict import predict_images

    try:
        with progress_bars() as bars:
            predictions = predict_images(
                checkpoint,
                model,
                images,
                taxa,
                top_k,
                text_type=text_type,
                templates=templates,
                cache_dir=cache_dir,
                device=device,
                progress=bars,
            )
    except TolError as exc:
        fail(exc)
    if as_json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    out = Console()
    for prediction in predictions:
        lineage = Table(title=f"{prediction.image}", show_header=True)
        for column in ("rank", "label", "probability"):
            lineage.add_column(column)
        for call in prediction.lineage:
            lineage.add_row(call.rank, call.name or "–", f"{call.probability:.3f}")
        top = Table(title=f"top {top_k} taxa", show_header=True)
        for column in ("#", "taxon", "common name", "probability"):
            top.add_column(column)
        for i, score in enumerate(prediction.top, start=1):
            top.add_row(str(i), score.name, score.common, f"{score.probability:.3f}")
        out.print(lineage)
        out.print(top)
