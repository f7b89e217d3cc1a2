"""Perceptual hashes: imagehash's phash and dhash, bit for bit, batched with numpy; and PDQ.

`imagehash.phash(img)` is grey → 32×32 Lanczos (Pillow) → 2-D DCT-II (`scipy.fftpack`) →
top-left 8×8 > its median; `imagehash.dhash(img)` is grey → 9×8 Lanczos → each pixel >
its left neighbour. Here Pillow's fixed-point Lanczos is reproduced exactly by banded
float64 matrix products (both thumbnails from one grey conversion) and one scipy DCT call
serves a whole batch: the same 64 bits, about 1.8× faster (docs/images.md). Hashes travel
as 16 lowercase hex digits, `str(imagehash.phash(img))`'s format, or as a uint64.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8×8 = 64 bits, imagehash's default
PHASH_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor=4: a 32×32 grey thumbnail
LANCZOS = Image.Resampling.LANCZOS  # imagehash.ANTIALIAS


def grey(image: Image.Image) -> Image.Image:
    """The 8-bit grey image both hashes start from (`convert('L')`, as imagehash does)."""
    return image if image.mode == "L" else image.convert("L")


# Pillow's 8-bit resampler, reproduced as float64 matrix products. Pillow rounds each
# Lanczos weight to a 22-bit fixed-point integer, sums pixel × weight exactly in an int and
# keeps `clamp(sum >> 22)`, one axis after the other. Those integer sums stay below 2**31,
# so a float64 GEMM computes them exactly, then the same shift and clamp give the same
# bytes, faster than Pillow's scalar loops (products only over each band's nonzero span).
_PRECISION_BITS = 22


@functools.lru_cache(maxsize=1024)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) integer weights of Pillow's Lanczos resample (precompute_coeffs)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        x = ((np.arange(first, last) - center) + 0.5) * (1.0 / filterscale)
        w = np.zeros_like(x)
        inside = (x >= -3.0) & (x < 3.0)
        w[inside] = _sinc(x[inside]) * _sinc(x[inside] / 3)
        total = np.cumsum(w)[-1] if len(w) else 0.0  # sequential sum, as the C loop
        if total != 0.0:
            w = w / total
        scaled = w * (1 << _PRECISION_BITS)
        weights[out, first:last] = np.trunc(np.where(w < 0, scaled - 0.5, scaled + 0.5))
    return weights


def _sinc(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    nonzero = x != 0.0
    angle = x[nonzero] * np.pi
    out[nonzero] = np.sin(angle) / angle
    return out


def _shift_clamp(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8: (sum + 2**21) >> 22, clamped to 0..255 (exact on float64 integers)."""
    half = float(1 << (_PRECISION_BITS - 1))
    return np.clip(np.floor((sums + half) * (1.0 / (1 << _PRECISION_BITS))), 0, 255)


_BAND_ROWS = 8  # output samples per matrix product: skips most of the zero weights


@functools.lru_cache(maxsize=1024)
def _weight_bands(in_size: int, out_size: int) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """The weights cut in bands of outputs, each with only its nonzero input span:
    (first output, first input, end input, weights[outputs, inputs])."""
    weights = _lanczos_weights(in_size, out_size)
    bands = []
    for first in range(0, out_size, _BAND_ROWS):
        block = weights[first : first + _BAND_ROWS]
        used = np.flatnonzero(block.any(axis=0))
        low, high = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        bands.append((first, low, high, np.ascontiguousarray(block[:, low:high])))
    return tuple(bands)


def _resample_rows(pixels: np.ndarray, out_h: int) -> np.ndarray:
    """Vertical pass: (H, C) float64 → (out_h, C) clamped integers."""
    sums = np.empty((out_h, pixels.shape[1]))
    for first, low, high, block in _weight_bands(pixels.shape[0], out_h):
        sums[first : first + len(block)] = block @ pixels[low:high]
    return _shift_clamp(sums)


def _resample_columns(pixels: np.ndarray, out_w: int) -> np.ndarray:
    """Horizontal pass: (R, W) float64 → (R, out_w) clamped integers."""
    sums = np.empty((pixels.shape[0], out_w))
    for first, low, high, block in _weight_bands(pixels.shape[1], out_w):
        sums[:, first : first + len(block)] = pixels[:, low:high] @ block.T
    return _shift_clamp(sums)


_ROW_BLOCK = 192  # rows converted to float64 at a time: stays in cache across the bands


def _horizontal_first(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Horizontal then vertical passes for every size, reading the uint8 rows once, a
    cache-sized block at a time."""
    in_h, in_w = pixels.shape
    sums = [np.empty((in_h, out_w)) for out_w, _h in sizes]
    bands = [_weight_bands(in_w, out_w) for out_w, _h in sizes]
    for top in range(0, in_h, _ROW_BLOCK):
        rows = pixels[top : top + _ROW_BLOCK].astype(np.float64)
        for total, size_bands in zip(sums, bands, strict=True):
            for first, low, high, block in size_bands:
                total[top : top + len(rows), first : first + len(block)] = (
                    rows[:, low:high] @ block.T
                )
    out = []
    for (_w, out_h), total in zip(sizes, sums, strict=True):
        narrow = _shift_clamp(total)
        out.append(narrow if out_h == in_h else _resample_rows(narrow, out_h))
    return out


def _vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Pillow ≥ 13 runs the vertical pass first on tall reductions (measured rule, checked
    against Pillow at first use by `_resampler_matches_pillow`)."""
    return in_w != out_w and in_h != out_h and in_h - out_h > 2 * max(in_w - out_w, 0)


def lanczos_thumbnails(
    grey_pixels: np.ndarray, sizes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """uint8 thumbnails of a (H, W) uint8 grey array, equal to Pillow's
    `Image.resize((w, h), LANCZOS)` for each (w, h) in `sizes`."""
    pixels = np.asarray(grey_pixels, dtype=np.uint8)
    in_h, in_w = pixels.shape
    if in_w * in_h < PILLOW_BELOW_PIXELS or not _resampler_matches_pillow():
        return _pillow_thumbnails(Image.fromarray(np.ascontiguousarray(pixels), "L"), sizes)
    with one_blas_thread():
        return _thumbnails(pixels, sizes)


# Below about 130×100 pixels Pillow's own resize beats the matrix products (their fixed
# per-call cost dominates); it is the reference, so the bits are the same either way.
PILLOW_BELOW_PIXELS = 12_000


def _pillow_thumbnails(
    grey_image: Image.Image, sizes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    return [np.asarray(grey_image.resize(size, LANCZOS)) for size in sizes]


class _OneBlasThread:
    """BLAS held to one thread while any thread of this process resamples. The thread
    count is process-wide, so per-thread limits would undo each other (one thread restoring
    the default under another's product): the first holder limits, the last restores.
    Talks to the BLAS libraries directly (~2 µs) rather than through `threadpool_limits`,
    which re-reads every library's info on each call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._restore: list[tuple[object, int]] = []
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: without it BLAS keeps its own thread count
            self._libraries = []
        else:
            self._libraries = ThreadpoolController().select(user_api="blas").lib_controllers

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._restore = []
                for library in self._libraries:
                    threads = library.get_num_threads()
                    if threads != 1:
                        library.set_num_threads(1)
                        self._restore.append((library, threads))
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    for library, threads in self._restore:
                        library.set_num_threads(threads)
                    self._restore = []


@functools.cache
def _blas_guard() -> _OneBlasThread:
    """The process's one guard (threadpoolctl's handle on the loaded BLAS, found once)."""
    return _OneBlasThread()


def one_blas_thread() -> contextlib.AbstractContextManager[None]:
    """These products are small: BLAS threads only fight the worker processes for cores
    (measured 4-10× slower on a busy 2-core machine), so run them on the calling thread.
    Re-entrant; hold it around a batch so the limit is set once, not per image."""
    return _blas_guard().held()


def _thumbnails(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    in_h, in_w = pixels.shape
    results: dict[tuple[int, int], np.ndarray] = {}
    across = [size for size in sizes if size[0] != in_w and not _vertical_first(in_w, in_h, *size)]
    for size, thumb in zip(across, _horizontal_first(pixels, across), strict=True):
        results[size] = thumb
    as_float = None
    for size in sizes:
        if size in results:
            continue
        if size == (in_w, in_h):
            results[size] = pixels
            continue
        as_float = pixels.astype(np.float64) if as_float is None else as_float
        out_w, out_h = size
        if out_w == in_w:  # vertical pass only
            results[size] = _resample_rows(as_float, out_h)
        else:  # Pillow's vertical-first order
            results[size] = _resample_columns(_resample_rows(as_float, out_h), out_w)
    return [np.asarray(results[size], dtype=np.uint8) for size in sizes]


@functools.cache
def _resampler_matches_pillow() -> bool:
    """Does the GEMM resampler give this Pillow's bytes? Else use Pillow's own resize."""
    rng = np.random.default_rng(20231118)
    for in_h, in_w in ((600, 800), (800, 301), (31, 45), (7, 5), (1, 97), (250, 90)):
        pixels = rng.integers(0, 256, (in_h, in_w), dtype=np.uint8)
        image = Image.fromarray(pixels, "L")
        as_float = pixels.astype(np.float64)
        for size in ((PHASH_SIDE, PHASH_SIDE), (HASH_SIZE + 1, HASH_SIZE)):
            want = np.asarray(image.resize(size, LANCZOS))
            if size == (in_w, in_h):
                continue
            got = _pillow_order(as_float, size).astype(np.uint8)
            if not np.array_equal(got, want):
                return False
    return True


def resampler_is_exact() -> bool:
    """Does this Pillow agree with the GEMM resampler (else hashes use Pillow's resize)?
    Checked once per process; `prewarm` runs it ahead of the first image."""
    return _resampler_matches_pillow()


def _pillow_order(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One thumbnail by the straightforward two passes, in Pillow's order (self-check)."""
    in_h, in_w = pixels.shape
    out_w, out_h = size
    if _vertical_first(in_w, in_h, out_w, out_h):
        return _resample_columns(_resample_rows(pixels, out_h), out_w)
    if out_w != in_w:
        pixels = _resample_columns(pixels, out_w)
    return pixels if out_h == in_h else _resample_rows(pixels, out_h)


# The fast hashes: imagehash's recipe after a box-average of the grey picture by whole
# factors down to about twice the phash thumbnail, with the Lanczos then mapped onto the
# exact original extent: the phash thumbnail is Pillow's `resize(..., reducing_gap=2)`
# bit for bit, and both thumbnails share the one reduce. Several times faster on big
# pictures, a fraction of a bit off on average (docs/images.md).
FAST_REDUCING_GAP = 2.0


def fast_hash_thumbnails(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """`hash_thumbnails`, approximately: the fast mode's (32, 32) and (8, 9) thumbnails."""
    phash_thumb, dhash_thumb = _fast_thumbnails(
        image, ((PHASH_SIDE, PHASH_SIDE), (HASH_SIZE + 1, HASH_SIZE))
    )
    return phash_thumb, dhash_thumb


def _fast_thumbnails(image: Image.Image, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    grey_image = grey(image)
    width, height = grey_image.size
    step = FAST_REDUCING_GAP * PHASH_SIDE
    factors = (max(1, int(width / step)), max(1, int(height / step)))
    box = None
    if factors != (1, 1):
        grey_image = grey_image.reduce(factors)
        box = (0.0, 0.0, width / factors[0], height / factors[1])
    return [np.asarray(grey_image.resize(size, LANCZOS, box=box)) for size in sizes]


def fast_phash_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """The fast mode's phash of each image as a uint64 (see `fast_hash_thumbnails`)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    side = (PHASH_SIDE, PHASH_SIDE)
    return phash_from_thumbnails(np.stack([_fast_thumbnails(i, [side])[0] for i in images]))


def _image_thumbnails(image: Image.Image, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """`lanczos_thumbnails` of the grey image; small images skip the array round trip."""
    grey_image = grey(image)
    if grey_image.width * grey_image.height < PILLOW_BELOW_PIXELS:
        return _pillow_thumbnails(grey_image, sizes)
    return lanczos_thumbnails(np.asarray(grey_image), sizes)


def hash_thumbnails(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The (32, 32) phash and (8, 9) dhash thumbnails of one image (one grey conversion)."""
    phash_thumb, dhash_thumb = _image_thumbnails(
        image, [(PHASH_SIDE, PHASH_SIDE), (HASH_SIZE + 1, HASH_SIZE)]
    )
    return phash_thumb, dhash_thumb


def phash_thumbnail(image: Image.Image) -> np.ndarray:
    """The 32×32 uint8 thumbnail phash transforms (grey, Pillow Lanczos, as imagehash)."""
    return _image_thumbnails(image, [(PHASH_SIDE, PHASH_SIDE)])[0]


def dhash_thumbnail(image: Image.Image) -> np.ndarray:
    """The 8×9 (rows × columns) uint8 thumbnail dhash compares."""
    return _image_thumbnails(image, [(HASH_SIZE + 1, HASH_SIZE)])[0]


def _pack(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans, row-major as imagehash flattens them, → (N,) uint64, first bit MSB."""
    return np.packbits(bits.reshape(len(bits), 64), axis=1).view(">u8").ravel().astype(np.uint64)


def phash_from_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """(N, 32, 32) uint8 thumbnails → (N,) uint64 phashes, imagehash's arithmetic exactly.

    scipy.fftpack runs the same 1-D transform on every row or column whatever the batch
    shape, so one call over the stack gives each image the coefficients it gets alone;
    `median` and `>` then match imagehash even where coefficients tie.
    """
    pixels = np.asarray(thumbnails)
    if pixels.ndim != 3 or pixels.shape[1:] != (PHASH_SIDE, PHASH_SIDE):
        raise ValueError(f"expected (N, {PHASH_SIDE}, {PHASH_SIDE}) thumbnails, got {pixels.shape}")
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.uint64)
    from scipy.fftpack import dct  # 0.6 s to import: only processes that hash pay it

    coefficients = dct(dct(pixels, axis=1), axis=2)
    low = coefficients[:, :HASH_SIZE, :HASH_SIZE].reshape(len(pixels), -1)
    return _pack(low > np.median(low, axis=1, keepdims=True))


def dhash_from_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """(N, 8, 9) uint8 thumbnails → (N,) uint64 dhashes (pixel > left neighbour)."""
    pixels = np.asarray(thumbnails)
    if pixels.ndim != 3 or pixels.shape[1:] != (HASH_SIZE, HASH_SIZE + 1):
        expected = (HASH_SIZE, HASH_SIZE + 1)
        raise ValueError(f"expected (N, *{expected}) thumbnails, got {pixels.shape}")
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.uint64)
    return _pack(pixels[:, :, 1:] > pixels[:, :, :-1])


def phash_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """phash of each image as a uint64 (equal to `int(str(imagehash.phash(img)), 16)`)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    with one_blas_thread():
        thumbnails = [phash_thumbnail(image) for image in images]
    return phash_from_thumbnails(np.stack(thumbnails))


def hash_batch(images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(phashes, dhashes) of each image as uint64 arrays: the fused fast path."""
    if not images:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    with one_blas_thread():
        thumbs = [hash_thumbnails(image) for image in images]
    return (
        phash_from_thumbnails(np.stack([p for p, _d in thumbs])),
        dhash_from_thumbnails(np.stack([d for _p, d in thumbs])),
    )


def dhash_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """dhash of each image as a uint64 (equal to `int(str(imagehash.dhash(img)), 16)`)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    with one_blas_thread():
        thumbnails = [dhash_thumbnail(image) for image in images]
    return dhash_from_thumbnails(np.stack(thumbnails))


def int_to_hex(value: int | np.integer) -> str:
    """A 64-bit hash as 16 lowercase hex digits (imagehash's `str()` format)."""
    return f"{int(value):016x}"


def hex_to_int(hex_hash: str) -> int:
    """16 hex digits back to the unsigned 64-bit value."""
    return int(hex_hash, 16)


def hashes_to_hex(values: np.ndarray) -> list[str]:
    """A uint64 array of hashes → their hex strings."""
    return [f"{value:016x}" for value in np.asarray(values, dtype=np.uint64).tolist()]


def phash_hex(image: Image.Image) -> str:
    """`str(imagehash.phash(image))`, bit-identical."""
    return int_to_hex(phash_batch([image])[0])


def dhash_hex(image: Image.Image) -> str:
    """`str(imagehash.dhash(image))`, bit-identical."""
    return int_to_hex(dhash_batch([image])[0])


def hamming(a: int | str | np.integer, b: int | str | np.integer) -> int:
    """Bits that differ between two hashes, each an int or a hex string (any width)."""
    a_int = hex_to_int(a) if isinstance(a, str) else int(a)
    b_int = hex_to_int(b) if isinstance(b, str) else int(b)
    return (a_int ^ b_int).bit_count()


def hamming_array(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """Element-wise Hamming distance of uint64 hash arrays (broadcasting)."""
    left = np.asarray(a, dtype=np.uint64)
    right = np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(left ^ right).astype(np.int64)


def pdq_hex(image: Image.Image) -> tuple[str, int]:
    """256-bit PDQ hash (64 hex digits) and its quality (0-100) via the `pdqhash` package.

    Bits are packed with `np.packbits` over pdqhash's bit vector, as TreeOfLife-200M's
    toolbox does, so hashes compare with theirs; Hamming ≤ 31 is PDQ's match rule,
    TreeOfLife-200M used ≤ 10 for eval leakage. Quality < 50 marks a flat, unreliable hash.
    """
    import pdqhash  # imported here: a compiled extension only leakage checks need

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(rgb)))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)
