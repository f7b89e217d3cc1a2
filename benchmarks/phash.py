"""Perceptual-hash benchmark: `imagehash.phash` against treeoflife's batched exact hashes,
the draft-mode fast hashes, and the whole one-pass transform, on realistic 800×600 JPEGs.

Everything runs in this one process on one core (BLAS limited to one thread), contenders
interleaved chunk by chunk so a busy shared machine slows them all alike. Also measures the
fast modes' bit error against the exact hash, on the synthetic photos and on real ones:
crops of scikit-learn's two bundled photographs (always installed) plus, with
`--real-photos DIR`, every image in a folder of your own. The synthetic photos lack fine
texture, so they hide aliasing: a point-sampled hash errs 0.3 bits on them and 1.1-1.9 on
real photographs, while the fast modes, which average every pixel, err alike on both
(docs/images.md). Photos are generated once and cached.

The two ratio columns measure different things (see RATIO_NOTES): `× decoded` divides by
`imagehash.phash(img)` on an already-decoded picture (the hash arithmetic alone: grey,
Lanczos, DCT), `× bytes` by `imagehash.phash(Image.open(raw))` (decode + hash, what a
pipeline pays per file). Compare a contender with the baseline that does the same work:
decoded-image contenders with the first, from-bytes contenders with the second.

    .venv/bin/python benchmarks/phash.py [--count 2000] [--quick] [--data-dir DIR]
        [--real-photos DIR] [--real-crops 100]
"""

from __future__ import annotations

import argparse
import importlib.resources
import io
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from threadpoolctl import threadpool_limits

from treeoflife.images import phash
from treeoflife.images.leakage import IMAGE_SUFFIXES
from treeoflife.images.transform import (
    ResizeSpec,
    _decode,
    decode_image,
    encode_jpeg,
    process_batch,
    resize,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"
SIZE = (800, 600)
CHUNK = 50  # images per interleaved round
RATIO_NOTES = (
    "× imagehash (decoded): images/s over imagehash.phash(img) on a decoded picture (hash "
    "arithmetic only); the fair baseline for the 'decoded image' rows.",
    "× imagehash (bytes): images/s over imagehash.phash(Image.open(raw)) (JPEG decode + "
    "hash); the fair baseline for the 'from bytes' rows and the transform.",
    "exact: bit-identical to imagehash on every photo; approx: draft-decode hashes, bit "
    "error below; -: no phash compared (other work or another hash).",
)
# Which contenders must equal imagehash bit for bit, and which are approximations.
EXACT = (
    "treeoflife phash_batch, decoded image",
    "treeoflife exact phash from bytes",
    "imagehash.phash from bytes (open+hash)",
    "process_batch exact (decode+hash+resize+encode)",
)
FAST_DECODED = "treeoflife fast phash, decoded image (fast_phash_batch)"
POINT_SAMPLED = "rejected: point-sampled 128×128, decoded image"
BASELINE = "imagehash.phash, decoded image (baseline)"
SPEC = ResizeSpec(mode="center-crop", size=224)
FAST_SPEC = ResizeSpec(mode="center-crop", size=224, fast_hash=True)
APPROX = (
    FAST_DECODED,
    POINT_SAMPLED,
    "treeoflife fast phash from bytes (as --fast-hash)",
    "fast phash, grey draft 1/8 (hash only)",
    "process_batch fast_hash",
)
# The approximations whose bit error is reported: error-table label → contender.
ERROR_MODES = {
    "--fast-hash (process_batch fast_hash, as stored)": "process_batch fast_hash",
    "grey draft 1/8": "fast phash, grey draft 1/8 (hash only)",
    "fast_phash_batch of the decoded image": FAST_DECODED,
    POINT_SAMPLED: POINT_SAMPLED,
}


# --- photos ------------------------------------------------------------------------------------


def synthetic_photo(seed: int) -> bytes:
    """An 800×600 JPEG with photo-like statistics: smooth light, soft-edged subjects, texture
    at several scales and sensor noise (so DCT-scaled decoding errs as on real photos)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE

    def field(cells: tuple[int, int], amplitude: float) -> np.ndarray:
        small = rng.normal(0, amplitude, (cells[1], cells[0], 3)).astype(np.float32)
        up = [
            np.asarray(Image.fromarray(small[..., c], "F").resize(SIZE, Image.Resampling.BICUBIC))
            for c in range(3)
        ]
        return np.stack(up, -1)

    base = rng.uniform(40, 200, 3).astype(np.float32)
    pixels = base + field((4, 3), 45) + field((16, 12), 18) + field((80, 60), 8)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(2, 7)):
        x0, y0 = rng.uniform(-0.1, 0.8) * width, rng.uniform(-0.1, 0.8) * height
        x1 = x0 + rng.uniform(0.1, 0.5) * width
        y1 = y0 + rng.uniform(0.1, 0.5) * height
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(150, 256)),)
        if rng.random() < 0.6:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([tuple(rng.uniform(0, 1, 2) * SIZE) for _ in range(5)], fill=colour)
    layer = layer.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
    noisy = np.asarray(canvas, np.float32) + rng.normal(0, rng.uniform(2, 6), (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
        out, "JPEG", quality=int(rng.integers(80, 95))
    )
    return out.getvalue()


def load_photos(data_dir: Path, count: int, console: Console) -> list[bytes]:
    folder = data_dir / "phash-photos"
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("photos", total=count)
        for index in range(count):
            path = folder / f"{index:06d}.jpg"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(synthetic_photo(index))
                tmp.replace(path)
            photos.append(path.read_bytes())
            progress.advance(task)
    return photos


def real_photos(folder: Path | None, crops: int, seed: int = 20240101) -> list[bytes]:
    """Real photographs: seeded crops of scikit-learn's china.jpg and flower.jpg (half of
    them enlarged 1.6×, re-encoded at quality 80-95), then every image in `folder` as is."""
    rng = np.random.default_rng(seed)
    bundled = importlib.resources.files("sklearn.datasets") / "images"
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        with Image.open(io.BytesIO((bundled / name).read_bytes())) as opened:
            source = opened.convert("RGB")
        width, height = source.size
        for index in range(crops):
            crop_w = int(width * rng.uniform(0.55, 1.0))
            crop_h = int(height * rng.uniform(0.55, 1.0))
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            crop = source.crop((left, top, left + crop_w, top + crop_h))
            if index % 2:
                crop = crop.resize((int(crop_w * 1.6), int(crop_h * 1.6)), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            crop.save(out, "JPEG", quality=int(rng.integers(80, 96)))
            photos.append(out.getvalue())
    if folder is not None:
        photos += [
            path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.name.lower().endswith(IMAGE_SUFFIXES)
        ]
    return photos


def real_error(photos: list[bytes]) -> dict:
    """Each approximation's phash against the exact phash on real photographs (untimed)."""
    runners = contenders(SPEC, FAST_SPEC)
    decoded = [decode_image(raw, SPEC) for raw in photos]
    hashes = {name: runners[name](photos, decoded) for name in (BASELINE, *ERROR_MODES.values())}
    return {"photos": len(photos), **approximation_errors(hashes)}


# --- contenders --------------------------------------------------------------------------------


def draft_decode(raw: bytes, mode: str, least: int) -> Image.Image:
    image = Image.open(io.BytesIO(raw))
    image.draft(mode, (least, least))
    image.load()
    return image


def point_sampled_hashes(decoded: list[Image.Image], side: int = 128) -> list[int]:
    """A rejected fast mode: phash of a nearest-neighbour side×side sample of the picture
    (reads 1/30 of an 800×600 picture's pixels; aliasing costs bits on real textures)."""
    thumbnails = []
    for image in decoded:
        sample = image.resize((min(side, image.width), min(side, image.height)), Image.NEAREST)
        thumbnails.append(phash.phash_thumbnail(sample))
    return phash.phash_from_thumbnails(np.stack(thumbnails)).tolist()


def grey_draft_hashes(raws: list[bytes]) -> list[int]:
    """phash of libjpeg's grey DCT-scaled decode (1/8 where the picture allows), the
    Lanczos mapped onto the original's extent (the last partial 8×8 block would shift it:
    2.2 instead of 0.6 bits mean error on real photos)."""
    thumbnails = []
    for raw in raws:
        image = Image.open(io.BytesIO(raw))
        drafted = image.draft("L", (phash.PHASH_SIDE, phash.PHASH_SIDE))
        image.load()
        box = drafted[1] if drafted else None
        side = (phash.PHASH_SIDE, phash.PHASH_SIDE)
        thumbnails.append(np.asarray(phash.grey(image).resize(side, phash.LANCZOS, box=box)))
    return phash.phash_from_thumbnails(np.stack(thumbnails)).tolist()


def contenders(spec: ResizeSpec, fast: ResizeSpec) -> dict[str, Callable]:
    """name → function(raws, decoded) returning per-image phash ints (or None)."""

    def imagehash_decoded(raws, decoded):
        return [int(str(imagehash.phash(image)), 16) for image in decoded]

    def imagehash_both_decoded(raws, decoded):
        return [(str(imagehash.phash(i)), str(imagehash.dhash(i))) and None for i in decoded]

    def ours_decoded(raws, decoded):
        return phash.phash_batch(decoded).tolist()

    def ours_both_decoded(raws, decoded):
        phash.hash_batch(decoded)

    def fast_decoded(raws, decoded):  # what --fast-hash hashes for a non-JPEG picture
        return phash.fast_phash_batch(decoded).tolist()

    def point_sampled(raws, decoded):
        return point_sampled_hashes(decoded)

    def imagehash_bytes(raws, decoded):
        out = []
        for raw in raws:
            with Image.open(io.BytesIO(raw)) as image:
                out.append(int(str(imagehash.phash(image)), 16))
        return out

    def ours_bytes(raws, decoded):
        return phash.phash_batch([decode_image(raw, spec) for raw in raws]).tolist()

    def fast_bytes(raws, decoded):  # the hash half of `--fast-hash`, from the bytes
        return phash.fast_phash_batch([_decode(raw, fast)[0] for raw in raws]).tolist()

    def draft_grey_bytes(raws, decoded):
        return grey_draft_hashes(raws)

    def transform_exact(raws, decoded):
        return [phash.hex_to_int(r.phash) for r in process_batch(raws, spec)]

    def transform_fast(raws, decoded):
        return [phash.hex_to_int(r.phash) for r in process_batch(raws, fast)]

    def bare_pil_draft(raws, decoded):
        for raw in raws:
            image = draft_decode(raw, "RGB", spec.size)
            encode_jpeg(resize(image, spec), spec.jpeg_quality)

    def bare_pil_full(raws, decoded):
        for raw in raws:
            with Image.open(io.BytesIO(raw)) as image:
                encode_jpeg(resize(image.convert("RGB"), spec), spec.jpeg_quality)

    def pdq_decoded(raws, decoded):
        for image in decoded:
            phash.pdq_hex(image)

    return {
        BASELINE: imagehash_decoded,
        "treeoflife phash_batch, decoded image": ours_decoded,
        FAST_DECODED: fast_decoded,
        POINT_SAMPLED: point_sampled,
        "imagehash phash+dhash, decoded": imagehash_both_decoded,
        "treeoflife hash_batch (phash+dhash), decoded": ours_both_decoded,
        "imagehash.phash from bytes (open+hash)": imagehash_bytes,
        "treeoflife exact phash from bytes": ours_bytes,
        "treeoflife fast phash from bytes (as --fast-hash)": fast_bytes,
        "fast phash, grey draft 1/8 (hash only)": draft_grey_bytes,
        "process_batch exact (decode+hash+resize+encode)": transform_exact,
        "process_batch fast_hash": transform_fast,
        "bare PIL draft decode+resize+encode (ceiling)": bare_pil_draft,
        "bare PIL full decode+resize+encode": bare_pil_full,
        "PDQ (pdqhash), decoded image": pdq_decoded,
    }


def approximation_errors(hashes: dict[str, list[int]]) -> dict[str, dict]:
    """`error_stats` of each of `ERROR_MODES` against the baseline's (exact) hashes."""
    return {
        label: error_stats(hashes[BASELINE], hashes[contender])
        for label, contender in ERROR_MODES.items()
    }


def error_stats(exact: list[int], other: list[int]) -> dict:
    distances = phash.hamming_array(np.array(exact, np.uint64), np.array(other, np.uint64))
    return {
        "mean_hamming": round(float(distances.mean()), 3),
        "share_identical": round(float((distances == 0).mean()), 4),
        "share_within_4": round(float((distances <= 4).mean()), 4),
        "max_hamming": int(distances.max()),
    }


def run(photos: list[bytes], console: Console) -> dict:
    runners = contenders(SPEC, FAST_SPEC)
    seconds = dict.fromkeys(runners, 0.0)
    hashes: dict[str, list[int]] = {name: [] for name in runners}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(photos))
        for start in range(0, len(photos), CHUNK):
            raws = photos[start : start + CHUNK]
            decoded = [decode_image(raw, SPEC) for raw in raws]  # untimed input of *decoded*
            for name, runner in runners.items():
                began = time.perf_counter()
                result = runner(raws, decoded)
                seconds[name] += time.perf_counter() - began
                if result:
                    hashes[name].extend(result)
            progress.advance(task, len(raws))
    exact = hashes[BASELINE]
    identical = {name: hashes[name] == exact for name in EXACT}
    rates = {name: len(photos) / max(spent, 1e-9) for name, spent in seconds.items()}
    return {
        "images": len(photos),
        "size": list(SIZE),
        "rates_per_core": {name: round(rate, 1) for name, rate in rates.items()},
        "vs_imagehash_decoded": {
            name: round(rate / rates[BASELINE], 2) for name, rate in rates.items()
        },
        "vs_imagehash_from_bytes": {
            name: round(rate / rates["imagehash.phash from bytes (open+hash)"], 2)
            for name, rate in rates.items()
        },
        "bit_identical_to_imagehash": identical,
        "ratio_notes": list(RATIO_NOTES),
        "fast_error_vs_exact": approximation_errors(hashes),
    }


def print_table(results: dict, console: Console) -> None:
    table = Table(title=f"phash on {results['images']} synthetic 800×600 JPEGs, one core")
    table.add_column("contender")
    table.add_column("images/s", justify="right")
    table.add_column("× imagehash (decoded)", justify="right")
    table.add_column("× imagehash (bytes)", justify="right")
    table.add_column("hash")
    identical = results["bit_identical_to_imagehash"]
    for name, rate in results["rates_per_core"].items():
        if name in identical:
            kind = "exact" if identical[name] else "DIFFERS"
        else:
            kind = "approx" if name in APPROX else "-"
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{results['vs_imagehash_decoded'][name]:.2f}",
            f"{results['vs_imagehash_from_bytes'][name]:.2f}",
            kind if name != BASELINE else "baseline",
        )
    console.print(table)
    for note in RATIO_NOTES:
        console.print(f"  {note}")
    console.print("bit-identical to imagehash:", results["bit_identical_to_imagehash"])
    console.print(
        error_table(
            "fast modes: phash bit error against the exact hash", results["fast_error_vs_exact"]
        )
    )
    real = dict(results["fast_error_real_photos"])
    title = f"the same on {real.pop('photos')} real photographs (crops, own folder)"
    console.print(error_table(title, real))


def error_table(title: str, stats_by_mode: dict[str, dict]) -> Table:
    """`error_stats` of each approximation as one table row."""
    table = Table(title=title)
    for column in ("mode", "mean Hamming", "identical", "≤ 4 bits", "max"):
        table.add_column(column)
    for name, stats in stats_by_mode.items():
        table.add_row(
            name,
            f"{stats['mean_hamming']:.2f}",
            f"{stats['share_identical']:.1%}",
            f"{stats['share_within_4']:.1%}",
            str(stats["max_hamming"]),
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="photos to hash")
    parser.add_argument("--quick", action="store_true", help="smoke run on 100 photos")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="photo cache")
    parser.add_argument(
        "--real-photos", type=Path, help="also measure the fast modes' error on these images"
    )
    parser.add_argument(
        "--real-crops", type=int, default=100, help="crops of each bundled real photograph"
    )
    args = parser.parse_args()
    console = Console()
    count = 100 if args.quick else args.count
    photos = load_photos(args.data_dir, count, console)
    with threadpool_limits(1):
        results = run(photos, console)
        crops = 10 if args.quick else args.real_crops
        results["fast_error_real_photos"] = real_error(real_photos(args.real_photos, crops))
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "pillow": PIL.__version__,
        "imagehash": imagehash.__version__,
        "numpy": np.__version__,
    }
    print_table(results, console)
    if not args.quick:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / "phash.json"
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        console.print(f"results → {path}")


if __name__ == "__main__":
    main()
