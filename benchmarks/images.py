"""Image fetch benchmark: `tol images fetch` against img2dataset on the same loopback server.

Serves N real-size JPEGs (800x600, photo-like, generated once and cached) from one
LoopbackServer, then runs, one after the other on the same cores with the same processes
and threads: img2dataset (webdataset output, center_crop 224, sha256), `tol images fetch`
(center-crop 224 + sha256 + phash + dhash, exact imagehash-equal hashes) and
`tol images fetch --fast-hash` (draft-mode decode). Also the one-core ceilings: bare PIL
decode, and draft decode + resize + encode. Prints a table; writes results/images.json.

    .venv/bin/python benchmarks/images.py [--count 3000] [--quick] [--processes 2]
        [--threads 16] [--img2dataset /work/bench-venvs/img2dataset/bin/img2dataset]

Per-core figures: `wall/core` is images/s over the run's wall time divided by processes;
`cpu` is images per CPU-second summed over the contender's whole process tree (sampled
from /proc), which stays meaningful on a shared machine. The loopback server runs in this
process and is not counted in either.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / ".data"
RESULTS = BENCH_DIR / "results" / "images.json"
HOST = "bench.test"
SIZE = (800, 600)
DEFAULT_IMG2DATASET = Path("/work/bench-venvs/img2dataset/bin/img2dataset")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- data --------------------------------------------------------------------------------
def photo_like(seed: int) -> bytes:
    """An 800x600 JPEG with smooth colour fields, edges and sensor-like noise (~100 KB)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(small.resize(SIZE, Image.BICUBIC), dtype=np.int16)
    yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    for _ in range(6):  # a few hard-edged shapes
        cx, cy, r = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1]), rng.integers(30, 200)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        base[mask] = (base[mask] + rng.integers(-90, 90, 3)).clip(0, 255)
    noisy = base + rng.normal(0, 6, base.shape).astype(np.int16)
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _write(args: tuple[Path, int]) -> None:
    path, seed = args
    if not path.exists():
        path.write_bytes(photo_like(seed))


def ensure_images(count: int) -> Path:
    """The mirror root holding <root>/bench.test/img/NNNNNN.jpg, generated once."""
    root = DATA_DIR / "images-800x600"
    folder = root / HOST / "img"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{n:06d}.jpg", n) for n in range(count)]
    missing = [job for job in jobs if not job[0].exists()]
    if missing:
        print(f"generating {len(missing)} JPEGs under {folder} (once)", flush=True)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_write, missing, chunksize=32))
    return root


def image_paths(root: Path, count: int) -> list[Path]:
    return [root / HOST / "img" / f"{n:06d}.jpg" for n in range(count)]


# --- measuring a process tree --------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user+system clock ticks) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; wall seconds and CPU seconds of it and all its descendants."""
    began = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ticks: dict[int, int] = {}
    while process.poll() is None:
        table = _proc_table()
        tree, frontier = {process.pid}, [process.pid]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        for pid in tree:
            if pid in table:
                ticks[pid] = max(ticks.get(pid, 0), table[pid][1])
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    wall = time.monotonic() - began
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({process.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": sum(ticks.values()) / CLOCK_TICKS, "stdout": stdout}


# --- contenders ----------------------------------------------------------------------------
def run_img2dataset(binary: Path, urls: list[str], work: Path, processes: int, threads: int):
    url_list = work / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    output = work / "img2dataset-out"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(binary),
        f"--url_list={url_list}",
        "--input_format=txt",
        f"--output_folder={output}",
        "--output_format=webdataset",
        "--resize_mode=center_crop",
        "--image_size=224",
        "--downscale_interpolation=area",  # its defaults, as tol's `--resample auto`
        "--upscale_interpolation=lanczos",
        "--encode_quality=95",
        f"--processes_count={processes}",
        f"--thread_count={threads}",
        f"--number_sample_per_shard={-(-len(urls) // processes)}",
        "--timeout=20",
        "--retries=0",
        "--enable_wandb=False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    measured = run_measured(command, env)
    ok = sum(
        json.loads(stats.read_text()).get("successes", 0) for stats in output.glob("*_stats.json")
    )
    measured["ok"] = ok
    return measured


def tol_workspace(template: Path, count: int) -> None:
    sys.path.insert(0, str(REPO))
    from treeoflife.workspace import Workspace

    workspace = Workspace(template).init()
    with workspace.connect() as con:
        con.execute(
            """INSERT INTO record_rows (source, source_id, url)
               SELECT 'bench', lpad(i::VARCHAR, 6, '0'),
                      'https://bench.test/img/' || lpad(i::VARCHAR, 6, '0') || '.jpg'
               FROM range(?) t(i)""",
            [count],
        )


def run_tol(
    template: Path, work: Path, mirror: str, processes: int, threads: int, fast: bool
) -> dict:
    workspace = work / ("ws-fast" if fast else "ws-exact")
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(template, workspace)
    command = [
        sys.executable, "-m", "treeoflife", "images", "fetch", "-w", str(workspace),
        "--mirror", mirror, "--workers", str(processes), "--threads", str(threads),
        "--resize", "center-crop", "--size", "224", "--retries", "0", "--json",
    ]  # fmt: skip
    if fast:
        command.append("--fast-hash")
    measured = run_measured(command)
    report = json.loads(measured["stdout"][measured["stdout"].index("{") :])
    measured["ok"] = report["ok"]
    measured["failed"] = report["failed"]
    return measured


def ceilings(paths: list[Path]) -> dict[str, float]:
    """One-core images/s of the bare steps, on the same files (CPU time, in this process)."""
    sys.path.insert(0, str(REPO))
    from treeoflife.images.transform import ResizeSpec, process_image

    payloads = [path.read_bytes() for path in paths]
    results = {}

    def rate(label: str, work) -> None:
        began = time.process_time()
        for raw in payloads:
            work(raw)
        results[label] = len(payloads) / (time.process_time() - began)

    def full_decode(raw: bytes) -> None:
        Image.open(io.BytesIO(raw)).load()

    def draft_resize_encode(raw: bytes) -> None:
        image = Image.open(io.BytesIO(raw))
        image.draft("RGB", (224, 224))
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.resize((224, 224), Image.BOX, box=(left, top, left + side, top + side))
        image.save(io.BytesIO(), "JPEG", quality=95)

    rate("PIL full decode", full_decode)
    rate("PIL draft decode + resize + encode", draft_resize_encode)
    rate("tol process_image (exact hashes)", lambda raw: process_image(raw, ResizeSpec()))
    rate(
        "tol process_image (--fast-hash)",
        lambda raw: process_image(raw, ResizeSpec(fast_hash=True)),
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="images served (default 3000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 images")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--img2dataset", type=Path, default=DEFAULT_IMG2DATASET)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    count = 200 if args.quick else args.count
    sys.path.insert(0, str(REPO))
    from treeoflife import loopback

    root = ensure_images(count)
    paths = image_paths(root, count)
    # Python's http.server leaves Nagle on: headers and body go out in two writes and every
    # response waits ~40 ms for a delayed ACK. Both contenders get the same fixed server.
    loopback._Handler.disable_nagle_algorithm = True
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tol-bench-images-") as tmp:
        work = Path(tmp)
        template = work / "template"
        tol_workspace(template, count)
        with loopback.LoopbackServer(root) as server:
            urls = [f"{server.url}/{HOST}/img/{n:06d}.jpg" for n in range(count)]
            if args.img2dataset.exists():
                print("running img2dataset ...", flush=True)
                results["img2dataset"] = run_img2dataset(
                    args.img2dataset, urls, work, args.processes, args.threads
                )
            else:
                print(f"img2dataset not found at {args.img2dataset}; skipped", flush=True)
            for fast in (False, True):
                label = "tol images fetch" + (" --fast-hash" if fast else "")
                print(f"running {label} ...", flush=True)
                results[label] = run_tol(
                    template, work, server.url, args.processes, args.threads, fast
                )
    sample = paths[: min(len(paths), 300)]
    ceiling = ceilings(sample)
    for measured in results.values():
        measured.pop("stdout", None)
        measured["images_per_s"] = count / measured["wall_s"]
        measured["wall_per_core"] = measured["images_per_s"] / args.processes
        measured["per_cpu_s"] = count / measured["cpu_s"] if measured["cpu_s"] else None
    base = results.get("img2dataset")
    average_kb = sum(path.stat().st_size for path in paths) // count // 1024
    print(
        f"\n{count} JPEGs {SIZE[0]}x{SIZE[1]} (avg {average_kb} KB) over loopback, "
        f"{args.processes} processes x {args.threads} threads, "
        f"{os.cpu_count()} cores (shared machine: load {os.getloadavg()[0]:.1f})"
    )
    header = (
        f"{'contender':34} {'ok':>6} {'wall s':>7} {'img/s':>7} {'wall/core':>9} "
        f"{'img/cpu-s':>9} {'x wall':>7} {'x cpu':>6}"
    )
    print(header)
    print("-" * len(header))
    for label, m in results.items():
        x_wall = m["images_per_s"] / base["images_per_s"] if base else float("nan")
        x_cpu = m["per_cpu_s"] / base["per_cpu_s"] if base and base["per_cpu_s"] else float("nan")
        m["x_img2dataset_wall"], m["x_img2dataset_cpu"] = x_wall, x_cpu
        print(
            f"{label:34} {m['ok']:>6} {m['wall_s']:>7.1f} {m['images_per_s']:>7.0f} "
            f"{m['wall_per_core']:>9.0f} {m['per_cpu_s']:>9.0f} {x_wall:>7.2f} {x_cpu:>6.2f}"
        )
    print("\none-core ceilings (CPU time, same files):")
    for label, value in ceiling.items():
        print(f"  {label:40} {value:7.0f} images/s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "count": count,
                "size": list(SIZE),
                "processes": args.processes,
                "threads": args.threads,
                "cores": os.cpu_count(),
                "load_average": os.getloadavg(),
                "machine": platform.platform(),
                "contenders": results,
                "ceilings_images_per_core_s": ceiling,
                "note": "shared CPU; ratios are taken within one run",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
