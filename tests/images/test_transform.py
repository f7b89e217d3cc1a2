"""One-pass decode → hash → resize → encode: real files in every awkward encoding."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import zlib

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from treeoflife.errors import TolError
from treeoflife.images.phash import hamming
from treeoflife.images.transform import (
    REJECT_REASONS,
    ImageRejected,
    ProcessedImage,
    ResizeSpec,
    decode_image,
    process_batch,
    process_image,
    resize,
)
from treeoflife.sample import SAMPLE_FILES
from treeoflife.sample.images import HTML_ERROR_PAGE


def picture(size=(160, 120), mode="RGB") -> Image.Image:
    """A gradient with shapes: enough structure for phash to be meaningful."""
    width, height = size
    ramp = np.add.outer(np.arange(height) * 2, np.arange(width)) % 256
    image = Image.fromarray(np.stack([ramp, ramp[::-1], 255 - ramp], -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 5, height // 5, width // 2, height // 2), fill=(250, 200, 0))
    draw.rectangle((width // 2, height // 2, width - 5, height - 5), fill=(10, 30, 90))
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def jpeg(size=(160, 120), quality=90) -> bytes:
    return encode(picture(size), "JPEG", quality=quality)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_sample_images_hash_like_imagehash_on_the_decoded_picture():
    spec = ResizeSpec()
    checked = 0
    for path in sorted(SAMPLE_FILES.rglob("*.jpg"))[:60]:
        raw = path.read_bytes()
        try:
            result = process_image(raw, spec)
        except ImageRejected:
            continue
        decoded = decode_image(raw, spec)
        assert result.phash == str(imagehash.phash(decoded))
        assert result.dhash == str(imagehash.dhash(decoded))
        assert result.sha256 == hashlib.sha256(raw).hexdigest()
        assert (result.width, result.height) == decoded.size
        checked += 1
    assert checked >= 40


def test_plain_rgb_jpeg_hash_equals_imagehash_on_the_raw_file():
    raw = jpeg((300, 200))
    with Image.open(io.BytesIO(raw)) as image:
        assert process_image(raw, ResizeSpec()).phash == str(imagehash.phash(image))


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("bioclip", 224, (224, 224)),
        ("center-crop", 224, (224, 224)),
        ("keep-ratio", 224, (224, 168)),
        ("none", 224, (800, 600)),
        ("center-crop", 64, (64, 64)),
    ],
)
def test_resize_modes(mode, size, expected):
    result = process_image(jpeg((800, 600)), ResizeSpec(mode=mode, size=size))
    assert (result.width, result.height) == (800, 600)
    assert (result.out_width, result.out_height) == expected
    with Image.open(io.BytesIO(result.jpeg)) as stored:
        assert stored.format == "JPEG" and stored.mode == "RGB" and stored.size == expected


def test_keep_ratio_never_upscales_and_crop_does():
    small = jpeg((100, 50))
    assert process_image(small, ResizeSpec(mode="keep-ratio")).out_width == 100
    assert process_image(small, ResizeSpec(mode="center-crop")).out_width == 224


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # blue centre square, red sides
    result = process_image(encode(image, "PNG"), ResizeSpec(mode="center-crop", size=50))
    with Image.open(io.BytesIO(result.jpeg)) as stored:
        red, green, blue = np.asarray(stored, dtype=np.int32).mean(axis=(0, 1))
    assert blue > 240 and red < 15


def test_exif_rotation_is_applied_before_hashing():
    upright = picture((60, 120))
    stored = upright.rotate(90, expand=True)  # what a camera writes with orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    result = process_image(raw, ResizeSpec(mode="none"))
    assert (result.width, result.height) == (60, 120)
    with Image.open(io.BytesIO(raw)) as opened:
        rotated = ImageOps.exif_transpose(opened)
        assert result.phash == str(imagehash.phash(rotated))
    plain = process_image(encode(upright, "JPEG", quality=95), ResizeSpec(mode="none"))
    assert hamming(plain.phash, result.phash) <= 4


def test_cmyk_palette_alpha_grey_and_16bit_are_normalised():
    base = picture()
    variants = {
        "cmyk": encode(base.convert("CMYK"), "JPEG", quality=95),
        "grey": encode(base.convert("L"), "JPEG", quality=95),
        "palette": encode(base.convert("P"), "PNG"),
        "one-bit": encode(base.convert("1"), "PNG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "la": encode(base.convert("LA"), "PNG"),
        "webp": encode(base, "WEBP", quality=95),
        "gif": encode(base, "GIF"),
        "tiff": encode(base, "TIFF"),
        "bmp": encode(base, "BMP"),
    }
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    variants["16-bit"] = encode(Image.fromarray(sixteen), "PNG")
    reference = process_image(encode(base, "PNG"), ResizeSpec())
    for name, raw in variants.items():
        result = process_image(raw, ResizeSpec())
        assert (result.width, result.height) == (160, 120), name
        decoded = decode_image(raw)
        assert decoded.mode == "RGB", name
        assert result.phash == str(imagehash.phash(decoded)), name
        if name not in ("one-bit", "gif", "palette"):  # dithered/quantised copies drift more
            assert hamming(result.phash, reference.phash) <= 6, name


def test_transparency_becomes_white():
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    decoded = decode_image(encode(clear, "PNG"))
    assert np.asarray(decoded).min() == 255
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    assert np.asarray(decode_image(encode(palette, "PNG", transparency=0))).min() == 255


def test_tiny_and_huge_images():
    tiny = process_image(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), ResizeSpec())
    assert (tiny.width, tiny.height, tiny.out_width) == (1, 1, 224)
    big = Image.new("L", (6000, 4000), 90)
    ImageDraw.Draw(big).ellipse((500, 500, 4000, 3500), fill=200)
    raw = encode(big, "JPEG", quality=80)
    result = process_image(raw, ResizeSpec(mode="keep-ratio", size=300))
    assert (result.width, result.height, result.out_width, result.out_height) == (
        6000,
        4000,
        300,
        200,
    )
    with Image.open(io.BytesIO(raw)) as opened:
        assert result.phash == str(imagehash.phash(opened))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (HTML_ERROR_PAGE, "not-an-image"),
        (os.urandom(4096), "not-an-image"),
        (b"%PDF-1.4\n%...", "not-an-image"),
    ],
)
def test_garbage_is_rejected_with_a_reason(raw, reason):
    with pytest.raises(ImageRejected) as caught:
        process_image(raw, ResizeSpec())
    assert caught.value.reason == reason
    assert isinstance(caught.value, TolError)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected_not_half_decoded(fmt):
    raw = encode(picture((400, 300)), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    for cut in (len(raw) // 2, len(raw) - 40):
        with pytest.raises(ImageRejected) as caught:
            process_image(raw[:cut], ResizeSpec())
        assert caught.value.reason == "truncated"
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # never switched on globally


def test_sample_corrupt_images_are_rejected(sample_expected):
    corrupt = {item["kind"] for item in sample_expected["corrupt_images"]}
    assert {"truncated-jpeg", "html-error-page", "random-bytes", "empty"} <= corrupt
    reasons = []
    for path in sorted(SAMPLE_FILES.rglob("*.jpg")):
        try:
            process_image(path.read_bytes(), ResizeSpec())
        except ImageRejected as rejected:
            reasons.append(rejected.reason)
    assert sorted(reasons) == ["empty", "not-an-image", "not-an-image", "truncated"]


def test_decompression_bombs_are_rejected_before_decoding():
    # A PNG header claiming 100000×100000 pixels: Pillow's own limit, no pixel decoded.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageRejected) as caught:
        process_image(bomb, ResizeSpec())
    assert caught.value.reason == "decompression-bomb"
    # ... and our own, lower limit.
    with pytest.raises(ImageRejected) as caught:
        process_image(jpeg((200, 100)), ResizeSpec(max_pixels=10_000))
    assert caught.value.reason == "decompression-bomb"


def test_min_side():
    with pytest.raises(ImageRejected) as caught:
        process_image(jpeg((300, 100)), ResizeSpec(min_side=224))
    assert caught.value.reason == "too-small"


def test_rejection_pickles_with_its_reason():
    error = pickle.loads(pickle.dumps(ImageRejected("truncated", "unit 3 row 9")))
    assert error.reason == "truncated" and "unit 3 row 9" in str(error)


def test_bad_spec_is_a_tol_error():
    with pytest.raises(TolError, match="resize mode"):
        ResizeSpec(mode="squash")
    with pytest.raises(TolError, match="resample 'nearest'"):
        ResizeSpec(resample="nearest")


@pytest.mark.parametrize(
    "mode, resample, source_size, want_filter",
    [
        ("center-crop", "auto", (400, 300), Image.Resampling.BOX),  # shrink: area
        ("center-crop", "auto", (150, 100), Image.Resampling.LANCZOS),  # enlarge
        ("keep-ratio", "auto", (400, 300), Image.Resampling.BOX),
        ("bioclip", "auto", (400, 300), Image.Resampling.BICUBIC),  # BioCLIP's resize
        ("bioclip", "auto", (150, 100), Image.Resampling.BICUBIC),
        ("center-crop", "lanczos", (400, 300), Image.Resampling.LANCZOS),
        ("keep-ratio", "bicubic", (400, 300), Image.Resampling.BICUBIC),
        ("bioclip", "area", (400, 300), Image.Resampling.BOX),
    ],
)
def test_resize_uses_the_named_filter(mode, resample, source_size, want_filter):
    # The stored pixels must be exactly Pillow's resize with the filter the spec names.
    rng = np.random.default_rng(5)
    width, height = source_size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    spec = ResizeSpec(mode=mode, size=224, resample=resample)
    got = resize(image, spec)
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    target = {"center-crop": (224, 224), "bioclip": (224, 224), "keep-ratio": (224, 168)}[mode]
    box = (left, top, left + side, top + side) if mode == "center-crop" else None
    want = image.resize(target, want_filter, box=box, reducing_gap=1.0)
    assert got.size == target
    assert np.array_equal(np.asarray(got), np.asarray(want))
    others = [f for f in Image.Resampling if f not in (want_filter, Image.Resampling.NEAREST)]
    assert all(  # and it is told apart from the other filters
        not np.array_equal(np.asarray(got), np.asarray(image.resize(target, f, box=box)))
        for f in others
    )


def test_batch_keeps_order_and_reports_failures_in_place():
    good = [jpeg((200 + 40 * i, 150)) for i in range(3)]
    raws = [good[0], b"", good[1], HTML_ERROR_PAGE, good[2]]
    results = process_batch(raws, ResizeSpec())
    assert [type(r).__name__ for r in results] == [
        "ProcessedImage",
        "ImageRejected",
        "ProcessedImage",
        "ImageRejected",
        "ProcessedImage",
    ]
    for raw, result in zip(good, [results[0], results[2], results[4]], strict=True):
        assert isinstance(result, ProcessedImage)
        assert result == process_image(raw, ResizeSpec())
    assert [r.reason for r in results if isinstance(r, ImageRejected)] == [
        "empty",
        "not-an-image",
    ]
    assert process_batch([], ResizeSpec()) == []


def test_fast_mode_is_close_to_exact_on_big_jpegs():
    raws = [jpeg((1600, 1200), quality=88), jpeg((1200, 1600), quality=92)]
    for raw in raws:
        exact = process_image(raw, ResizeSpec(mode="bioclip"))
        fast = process_image(raw, ResizeSpec(mode="bioclip", fast_hash=True))
        assert (fast.width, fast.height) == (exact.width, exact.height)  # original size
        assert (fast.out_width, fast.out_height) == (224, 224)
        assert hamming(fast.phash, exact.phash) <= 6
        assert fast.sha256 == exact.sha256


def test_fast_mode_hashes_every_format_from_pillows_reduced_view():
    # A PNG cannot be drafted: fast mode still hashes it reduce-then-Lanczos (Pillow's
    # reducing_gap=2 on the grey picture), close to the exact hash but not taken from it.
    png = encode(picture((900, 700)), "PNG")
    exact = process_image(png, ResizeSpec())
    fast = process_image(png, ResizeSpec(fast_hash=True))
    grey = decode_image(png).convert("L")
    want = grey.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    assert fast.phash == str(imagehash.ImageHash(_phash_bits(np.asarray(want))))
    assert exact.phash == str(imagehash.phash(decode_image(png)))
    assert hamming(fast.phash, exact.phash) <= 6
    assert fast.jpeg == exact.jpeg  # only the hash input differs; the stored pixels do not


def _phash_bits(thumbnail: np.ndarray) -> np.ndarray:
    """imagehash.phash's arithmetic on a 32×32 thumbnail (2-D DCT, 8×8, > median)."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(thumbnail.astype(float), axis=0), axis=1)
    low = dct[:8, :8]
    return low > np.median(low)


def test_mangled_files_are_rejected_never_raised_otherwise():
    # Flipped bytes and cuts in every accepted format: each input ends as a stored JPEG
    # or an ImageRejected with a known reason, never another exception.
    rng = np.random.default_rng(5)
    formats = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    seeds = [encode(picture((60, 40)), fmt) for fmt in formats]
    outcomes = set()
    for _ in range(400):
        raw = bytearray(seeds[int(rng.integers(len(seeds)))])
        for _flip in range(int(rng.integers(1, 12))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            raw = raw[: int(rng.integers(len(raw)))]
        try:
            result = process_image(bytes(raw), ResizeSpec(size=32))
            assert result.out_width == 32
            outcomes.add("ok")
        except ImageRejected as rejected:
            assert rejected.reason in REJECT_REASONS
            outcomes.add(rejected.reason)
    assert {"ok", "not-an-image", "truncated", "corrupt"} <= outcomes
