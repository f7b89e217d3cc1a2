"""Perceptual hashes: imagehash's phash and dhash, bit for bit, batched with numpy; and PDQ.

`imagehash.phash(img)` is grey → 32×32 Lanczos (Pillow) → 2-D DCT-II (`scipy.fftpack`) →
top-left 8×8 > its median; `imagehash.dhash(img)` is grey → 9×8 Lanczos → each pixel >
its left neighbour. These functions run the same Pillow resizes and the same scipy DCT
(one call for a whole batch), so the 64 bits are identical; they skip imagehash's
per-image objects and bit-string formatting. Hashes travel as 16 lowercase hex digits,
`str(imagehash.phash(img))`'s format, or as the same value in a uint64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8  # 8×8 = 64 bits, imagehash's default
PHASH_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor=4: a 32×32 grey thumbnail
LANCZOS = Image.Resampling.LANCZOS  # imagehash.ANTIALIAS


def grey(image: Image.Image) -> Image.Image:
    """The 8-bit grey image both hashes start from (`convert('L')`, as imagehash does)."""
    return image if image.mode == "L" else image.convert("L")


def phash_thumbnail(image: Image.Image) -> np.ndarray:
    """The 32×32 uint8 thumbnail phash transforms (grey, Pillow Lanczos, as imagehash)."""
    return np.asarray(grey(image).resize((PHASH_SIDE, PHASH_SIDE), LANCZOS))


def dhash_thumbnail(image: Image.Image) -> np.ndarray:
    """The 8×9 (rows × columns) uint8 thumbnail dhash compares."""
    return np.asarray(grey(image).resize((HASH_SIZE + 1, HASH_SIZE), LANCZOS))


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
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(pixels), -1)
    return _pack(low > np.median(low, axis=1, keepdims=True))


def dhash_from_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """(N, 8, 9) uint8 thumbnails → (N,) uint64 dhashes (pixel > left neighbour)."""
    pixels = np.asarray(thumbnails)
    if pixels.ndim != 3 or pixels.shape[1:] != (HASH_SIZE, HASH_SIZE + 1):
        raise ValueError(f"expected (N, {HASH_SIZE}, {HASH_SIZE + 1}) thumbnails, got {pixels.shape}")
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.uint64)
    return _pack(pixels[:, :, 1:] > pixels[:, :, :-1])


def phash_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """phash of each image as a uint64 (equal to `int(str(imagehash.phash(img)), 16)`)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    return phash_from_thumbnails(np.stack([phash_thumbnail(image) for image in images]))


def dhash_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """dhash of each image as a uint64 (equal to `int(str(imagehash.dhash(img)), 16)`)."""
    if not images:
        return np.zeros(0, dtype=np.uint64)
    return dhash_from_thumbnails(np.stack([dhash_thumbnail(image) for image in images]))


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
