"""phash/dhash agree bit for bit with imagehash on the sample photos and on odd images."""

from __future__ import annotations

import io
import random

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw

from treeoflife.images import phash
from treeoflife.sample import SAMPLE_FILES

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


def sample_photos() -> list[Image.Image]:
    """Every decodable picture served from the bundled sample, decoded as stored."""
    images = []
    for path in sorted(SAMPLE_FILES.rglob("*")):
        if path.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.load()
                images.append(image.copy())
        except OSError:  # the planted corrupt files
            continue
    return images


def odd_images() -> list[Image.Image]:
    """Flat, tiny, huge-ratio, noisy and every-mode pictures: where rounding could differ."""
    rng = np.random.default_rng(7)
    images: list[Image.Image] = []
    images += [Image.new("L", (40, 30), value) for value in (0, 1, 127, 128, 255)]
    images += [Image.new("RGB", (3, 2), (200, 10, 10)), Image.new("L", (1, 1), 9)]
    images.append(Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (1, 999), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (999, 3), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (8, 9), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), "RGB"))
    images.append(Image.fromarray(rng.integers(0, 65536, (50, 60), dtype=np.uint16)))  # I;16
    images.append(Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA"))
    ramp = np.add.outer(np.arange(64), np.arange(48)).astype(np.uint8)
    images += [Image.fromarray(ramp, "L"), Image.fromarray(ramp.T.copy(), "L")]
    drawn = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(drawn).ellipse((10, 10, 80, 70), fill=(20, 120, 40))
    images += [drawn, drawn.convert("P"), drawn.convert("CMYK"), drawn.convert("1")]
    images.append(drawn.convert("LA"))
    for _ in range(12):  # random sizes, both orientations, up- and down-scaling
        width, height = int(rng.integers(2, 700)), int(rng.integers(2, 700))
        images.append(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    return images


@pytest.mark.parametrize("source", ["sample", "odd"])
def test_hashes_match_imagehash(source):
    images = sample_photos() if source == "sample" else odd_images()
    assert len(images) > (100 if source == "sample" else 30)
    want_p = [str(imagehash.phash(image)) for image in images]
    want_d = [str(imagehash.dhash(image)) for image in images]
    assert [phash.phash_hex(image) for image in images] == want_p
    assert [phash.dhash_hex(image) for image in images] == want_d
    assert phash.hashes_to_hex(phash.phash_batch(images)) == want_p
    assert phash.hashes_to_hex(phash.dhash_batch(images)) == want_d


def test_batch_equals_single_on_flat_images():
    # Flat images leave 63 DCT coefficients at rounding noise: the batched DCT must
    # produce the same noise as imagehash's one-image call.
    flats = [Image.new("RGB", (50, 40), (value, value, value)) for value in range(0, 256, 3)]
    batch = phash.hashes_to_hex(phash.phash_batch(flats))
    assert batch == [str(imagehash.phash(image)) for image in flats]


def test_hex_int_round_trip_and_hamming():
    value = random.Random(3).getrandbits(64)
    hex_hash = phash.int_to_hex(value)
    assert len(hex_hash) == 16 and hex_hash == hex_hash.lower()
    assert phash.hex_to_int(hex_hash) == value
    assert phash.int_to_hex(0) == "0000000000000000"
    assert phash.hamming("ffffffffffffffff", "0000000000000000") == 64
    assert phash.hamming(0b1011, 0b0001) == 2
    assert phash.hamming(hex_hash, value) == 0
    left = np.array([0, 2**64 - 1, 5], dtype=np.uint64)
    assert phash.hamming_array(left, np.uint64(1)).tolist() == [1, 63, 1]


def test_hash_distance_matches_imagehash_difference():
    images = sample_photos()[:20]
    for a, b in zip(images, images[1:], strict=False):
        assert phash.hamming(phash.phash_hex(a), phash.phash_hex(b)) == (
            imagehash.phash(a) - imagehash.phash(b)
        )


def test_empty_batch_and_bad_thumbnail_shape():
    assert phash.phash_batch([]).dtype == np.uint64 and len(phash.dhash_batch([])) == 0
    with pytest.raises(ValueError, match="32, 32"):
        phash.phash_from_thumbnails(np.zeros((2, 16, 16), dtype=np.uint8))


def test_pdq_is_stable_and_separates_pictures():
    images = sample_photos()
    first, first_quality = phash.pdq_hex(images[0])
    again, _ = phash.pdq_hex(images[0].copy())
    other, _ = phash.pdq_hex(images[1])
    assert len(first) == 64 and int(first, 16) >= 0 and 0 <= first_quality <= 100
    assert again == first
    assert phash.hamming(first, other) > 10  # TreeOfLife-200M's leakage threshold
    grey_copy, _ = phash.pdq_hex(images[0].convert("L"))
    assert phash.hamming(first, grey_copy) <= 31  # PDQ's own match rule


def test_resampler_reproduces_pillow_lanczos_bytes():
    # The GEMM resampler must give Pillow's exact bytes for wide, tall (Pillow then runs
    # the vertical pass first), up- and down-scaled inputs; else hashes would drift.
    assert phash._resampler_matches_pillow()
    rng = np.random.default_rng(11)
    shapes = [(600, 800), (1300, 400), (401, 200), (33, 32), (32, 33), (5, 3), (1, 40)]
    shapes += [tuple(int(v) for v in rng.integers(1, 900, 2)) for _ in range(40)]
    for height, width in shapes:
        pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        image = Image.fromarray(pixels, "L")
        sizes = [(32, 32), (9, 8), (64, 16)]
        # The GEMM path itself (small inputs go to Pillow in `lanczos_thumbnails`).
        with phash.one_blas_thread():
            gemm = phash._thumbnails(pixels, sizes)
        routed = phash.lanczos_thumbnails(pixels, sizes)
        for size, thumb, used in zip(sizes, gemm, routed, strict=True):
            want = np.asarray(image.resize(size, Image.Resampling.LANCZOS))
            assert np.array_equal(thumb, want), (height, width, size)
            assert np.array_equal(used, want), (height, width, size)


def test_fast_thumbnails_are_pillows_reducing_gap_resize():
    # The fast phash thumbnail is Pillow's own `resize(..., reducing_gap=2)` of the grey
    # picture, byte for byte, at every size (reduced or not, either orientation); the
    # fast hash is close to the exact one on a smooth picture.
    rng = np.random.default_rng(3)
    for height, width in ((600, 800), (1200, 333), (90, 70), (64, 300), (2000, 1500)):
        smooth = np.kron(
            rng.integers(0, 256, (height // 10 + 1, width // 10 + 1)), np.ones((10, 10))
        )
        image = Image.fromarray(smooth[:height, :width].astype(np.uint8), "L").convert("RGB")
        phash_thumb, dhash_thumb = phash.fast_hash_thumbnails(image)
        grey = image.convert("L")
        want = grey.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
        assert np.array_equal(phash_thumb, np.asarray(want)), (height, width)
        assert dhash_thumb.shape == (8, 9)
        fast = int(phash.fast_phash_batch([image])[0])
        assert phash.hamming(fast, phash.hex_to_int(phash.phash_hex(image))) <= 6
