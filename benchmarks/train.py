"""Trainer benchmark: `tol train` against `open_clip_train.main` on the same synthetic shards.

Measures, in separate child processes with the same model, batch, workers, precision and
shards: training samples/s (median over log windows after the first) and the share of
step time spent waiting for data; and, in this process, the data loader alone (samples/s
of `treeoflife.train.data.batches`). Contenders alternate `--repeats` times (default 3)
and the best run of each is reported, since shared machines are noisy.

  GPU (CUDA available): ViT-B-16, 224 px, bf16, batch 256 per GPU, 8 workers; goal
      >= 1.0x open_clip_train, >= 1,000 samples/s on one H100, data wait ~0.
  CPU (no CUDA): tol-tiny, 64 px, fp32, batch 64, 1 worker, one torch thread; the
      same comparison at a size a laptop runs in a minute.

open_clip_train needs webdataset <= 0.2.86 (1.x crashes it with KeyError: 'fname'), so it
runs from its own virtualenv, by default /work/bench-venvs/open_clip_train (see --help).

    .venv/bin/python benchmarks/train.py [--quick] [--steps N] [--batch N] [--workers N]
                                         [--repeats N] [--baseline-python PATH]
                                         [--no-baseline] [--compile]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image, ImageDraw

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / ".data"
RESULTS = BENCH_DIR / "results" / "train.json"
DEFAULT_BASELINE = Path("/work/bench-venvs/open_clip_train/bin/python")
NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple")
RGB = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 20),
    "cyan": (20, 200, 210),
    "magenta": (210, 30, 200),
    "orange": (240, 140, 20),
    "purple": (110, 40, 160),
}

GPU_CONFIG = dict(model="ViT-B-16", image=224, precision="bf16", batch=256, workers=8)
CPU_CONFIG = dict(model="tol-tiny", image=64, precision="fp32", batch=64, workers=1)


# ---------------------------------------------------------------------------------------
# Synthetic release shards (jpg + the caption members + `txt` for open_clip_train)
def _write_shard(args: tuple[Path, int, int, int]) -> tuple[str, int]:
    path, index, count, size = args
    rng = random.Random(index)
    with wds.TarWriter(str(path), mtime=0) as writer:
        for _ in range(count):
            name = rng.choice(NAMES)
            image = Image.new("RGB", (size, size), tuple(rng.randint(120, 200) for _ in "rgb"))
            pen = ImageDraw.Draw(image)
            r = rng.randint(size // 6, size // 3)
            x, y = rng.randint(r, size - r), rng.randint(r, size - r)
            pen.ellipse((x - r, y - r, x + r, y + r), fill=RGB[name])
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            genus = name.capitalize() + "ia"
            taxon = f"Animalia Chordata Aves Passeriformes {genus}idae {genus} {name}"
            writer.write(
                {
                    "__key__": str(uuid.UUID(int=rng.getrandbits(128))),
                    "jpg": buffer.getvalue(),
                    "txt": f"a photo of {name} bird.",
                    "com.txt": f"a photo of {name} bird.",
                    "sci.txt": f"a photo of {genus} {name}.",
                    "taxon.txt": f"a photo of {taxon}.",
                    "sci_com.txt": f"a photo of {genus} {name} with common name {name} bird.",
                    "taxon_com.txt": f"a photo of {taxon} with common name {name} bird.",
                }
            )
    return path.name, count


def synthetic_shards(size: int, shards: int, per_shard: int) -> Path:
    """`DATA_DIR/train-<size>px-<shards>x<per_shard>/` (reused when complete)."""
    folder = DATA_DIR / f"train-{size}px-{shards}x{per_shard}"
    if (folder / "sizes.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"shard-{i:06d}.tar", i, per_shard, size) for i in range(shards)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        sizes = dict(pool.map(_write_shard, jobs))
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return folder


# ---------------------------------------------------------------------------------------
def loader_rate(shards: Path, cfg: dict, batches_to_read: int) -> float:
    """Samples/s of the treeoflife data stream alone (decode, augment, tokenize, batch)."""
    import open_clip

    from treeoflife.train.data import StreamSpec, batches, expand_shards
    from treeoflife.train.models import register_model_configs
    from treeoflife.train.params import MIXED_TYPES

    register_model_configs()
    _, transform, _ = open_clip.create_model_and_transforms(cfg["model"])
    tokenizer = open_clip.get_tokenizer(cfg["model"])
    spec = StreamSpec(
        urls=tuple(expand_shards([str(shards)])),
        text_types=MIXED_TYPES,
        text_sampling="per-sample",
        batch_size=cfg["batch"],
        steps_per_epoch=batches_to_read + 2,
        resample=True,
        shuffle_buffer=1000,
        shuffle_initial=100,
        seed=0,
    )
    stream = batches(spec, transform, tokenizer, workers=cfg["workers"])
    next(stream)  # start-up (worker spawn, first shard) is not throughput
    started = time.perf_counter()
    for _ in range(batches_to_read):
        next(stream)
    return cfg["batch"] * batches_to_read / (time.perf_counter() - started)


def _env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_ours(shards: Path, cfg: dict, steps: int, log_every: int, out: Path, threads) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "treeoflife", "train",
        "--shards", str(shards), "--model", cfg["model"], "--pretrained", "none",
        "--steps", str(steps), "--batch-size", str(cfg["batch"]),
        # one epoch, as open_clip_train's --train-num-samples below: the same work
        "--samples-per-epoch", str(steps * cfg["batch"]),
        "--workers", str(cfg["workers"]), "--precision", cfg["precision"],
        "--lr", "5e-4", "--warmup-steps", "10", "--save-every", "0",
        "--log-every", str(log_every), "--output", str(out), "--no-progress",
    ]  # fmt: skip
    if cfg.get("compile"):
        command.append("--compile")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env(threads))
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"tol train failed:\n{done.stderr[-4000:]}")
    windows = [
        json.loads(x)
        for x in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x and '"event"' not in x
    ]
    steady = windows[1:] or windows  # the first window holds start-up
    return {
        "samples_per_s": statistics.median(w["samples_per_s"] for w in steady),
        "data_wait_share": statistics.median(w["data_wait_share"] for w in steady),
        "steps": steps,
        "wall_s": wall,
        "final_loss": windows[-1]["loss"],
    }


BATCH_LINE = re.compile(r"Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


def run_open_clip(
    python: Path, shards: Path, cfg: dict, steps: int, log_every: int, out: Path, threads
) -> dict:
    """`open_clip_train.main` (webdataset 0.2.86 venv) on the same shards and settings."""
    shutil.rmtree(out, ignore_errors=True)
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    pattern = f"{shards}/shard-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = {"bf16": "amp_bf16", "fp32": "fp32"}[cfg["precision"]]
    args = [
        "--train-data", pattern, "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(steps * cfg["batch"]), "--epochs", "1",
        "--batch-size", str(cfg["batch"]), "--workers", str(cfg["workers"]),
        "--model", cfg["model"], "--precision", precision, "--device", device,
        "--lr", "5e-4", "--warmup", "10", "--wd", "0.2",
        "--log-every-n-steps", str(log_every), "--zeroshot-frequency", "0",
        "--save-frequency", "0", "--logs", str(out), "--name", "bench", "--seed", "0",
    ]  # fmt: skip
    if cfg.get("compile"):
        args.append("--torchcompile")
    # tol-tiny is treeoflife's config: register it, then run open_clip_train's own main().
    code = (
        "import sys, open_clip; "
        f"open_clip.add_model_config({str(REPO / 'treeoflife/train/model_configs')!r}); "
        "from open_clip_train.main import main; main(sys.argv[1:])"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", code, *args], capture_output=True, text=True, env=_env(threads)
    )
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"open_clip_train failed:\n{output[-4000:]}")
    windows = [(float(d), float(b)) for d, b in BATCH_LINE.findall(output)]
    steady = windows[1:] or windows  # the first window holds start-up
    return {
        "samples_per_s": statistics.median(cfg["batch"] / b for _, b in steady),
        "data_wait_share": statistics.median(d / b for d, b in steady),
        "steps": steps,
        "wall_s": wall,
    }


def webdataset_version(python: Path) -> str | None:
    done = subprocess.run(
        [str(python), "-c", "import webdataset; print(webdataset.__version__)"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: few steps.")
    parser.add_argument("--steps", type=int, help="Training steps per contender.")
    parser.add_argument("--batch", type=int, help="Batch per process.")
    parser.add_argument("--workers", type=int, help="Data-loader workers.")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models.")
    parser.add_argument(
        "--baseline-python",
        type=Path,
        default=DEFAULT_BASELINE,
        help="Python of a venv with open_clip_torch[training] and webdataset==0.2.86.",
    )
    parser.add_argument("--no-baseline", action="store_true", help="Skip open_clip_train.")
    parser.add_argument(
        "--repeats",
        type=int,
        help="Runs per contender, alternating; the best is reported (shared machines are "
        "noisy). [default: 3, 1 with --quick]",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="Where to write the JSON.")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    cfg = dict(GPU_CONFIG if gpu else CPU_CONFIG)
    cfg["compile"] = args.compile
    cfg["batch"] = args.batch or cfg["batch"]
    cfg["workers"] = args.workers if args.workers is not None else cfg["workers"]
    steps = args.steps or (10 if args.quick else (200 if gpu else 80))
    log_every = max(1, steps // 8)
    threads = None if gpu else 1
    if gpu:
        shards = synthetic_shards(224, 8 if args.quick else 32, 1000)
    else:
        shards = synthetic_shards(64, 4 if args.quick else 8, 256)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; shards: {shards}; config: {cfg}; steps: {steps}")

    repeats = args.repeats or (1 if args.quick else 3)
    work = DATA_DIR / "runs"
    baseline_note = None
    with_baseline = not args.no_baseline and args.baseline_python.is_file()
    if not args.no_baseline and not with_baseline:
        baseline_note = f"baseline skipped: no {args.baseline_python}"
    runs: dict[str, list[dict]] = {"tol train": [], "open_clip_train.main": []}
    loader_runs = []
    for _ in range(repeats):  # alternate contenders so both see the same machine load
        loader_runs.append(loader_rate(shards, cfg, batches_to_read=5 if args.quick else 20))
        runs["tol train"].append(run_ours(shards, cfg, steps, log_every, work / "ours", threads))
        if with_baseline:
            runs["open_clip_train.main"].append(
                run_open_clip(
                    args.baseline_python, shards, cfg, steps, log_every, work / "oc", threads
                )
            )
    results: dict[str, dict] = {
        "treeoflife data loader": {
            "samples_per_s": max(loader_runs),
            "all_samples_per_s": loader_runs,
        }
    }
    for name, attempts in runs.items():
        if attempts:
            best = max(attempts, key=lambda r: r["samples_per_s"])
            results[name] = {
                **best,
                "all_samples_per_s": [r["samples_per_s"] for r in attempts],
            }
    if with_baseline:
        results["open_clip_train.main"]["webdataset"] = webdataset_version(args.baseline_python)

    ours = results["tol train"]["samples_per_s"]
    base = results.get("open_clip_train.main", {}).get("samples_per_s")
    report = {
        "benchmark": "train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "gpu": gpu,
        "note": (
            "GPU run: ViT-B-16, 224 px, bf16"
            if gpu
            else "No GPU was available: CPU figures with the tol-tiny config (64 px, fp32). "
            "The GPU configuration (ViT-B-16, 224 px, bf16, batch 256, 8 workers, vs "
            "open_clip_train.main with webdataset 0.2.86) runs when CUDA is available; "
            "it was not measured here."
        ),
        "quick": args.quick,
        "config": {
            **cfg,
            "steps": steps,
            "log_every": log_every,
            "torch_threads": threads,
            "repeats": repeats,
            "reported": "best of the repeats; all runs listed",
        },
        "shards": str(shards),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "results": results,
        "speedup_vs_open_clip_train": (ours / base) if base else None,
        "baseline_note": baseline_note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{report['note']}\n")
    print("| contender | samples/s | data-wait share | steps | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, row in results.items():
        share = row.get("data_wait_share")
        print(
            f"| {name} | {row['samples_per_s']:.1f} | "
            f"{'' if share is None else f'{share:.1%}'} | {row.get('steps', '')} | "
            f"{row.get('wall_s', 0):.1f} |"
        )
    if base:
        print(f"\ntol train / open_clip_train: {ours / base:.2f}x")
    if baseline_note:
        print(baseline_note)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
