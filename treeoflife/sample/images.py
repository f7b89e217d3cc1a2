"""Synthetic pictures for the bundled sample: coloured per taxon, far apart in perceptual hash,
plus the planted near-duplicates, corrupt files and odd encodings (CMYK, EXIF, palette PNG).

Pillow and numpy only: `phash_bits` reproduces `imagehash.phash`, so the generator can keep
distinct images apart and near-duplicates close without importing imagehash.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SEED = "treeoflife-sample-1"
MIN_DISTINCT_PHASH = 14  # distinct images differ in at least this many of the 64 phash bits
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>\n"
    b"<body><h1>Service Unavailable</h1><p>The server is temporarily unable to service "
    b"your request. Please try again later.</p></body></html>\n"
)


def seeded(*parts: object) -> random.Random:
    """A generator seeded from the parts (string seeds go through SHA-512: stable)."""
    return random.Random(":".join([SEED, *map(str, parts)]))


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return 2 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT32 = _dct_matrix(32)


def phash_bits(data: bytes) -> np.ndarray:
    """The 64 bits of `imagehash.phash`: 32×32 grey, unscaled DCT-II, 8×8 corner > median."""
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    low = (_DCT32 @ np.asarray(grey, dtype=np.float64) @ _DCT32.T)[:8, :8]
    return (low > np.median(low)).ravel()


def palette_for(taxon_key: str) -> list[tuple[int, int, int]]:
    """Four colours of one hue family per taxon, dark to light (phash needs grey contrast)."""
    rng = seeded("palette", taxon_key)
    hue = rng.random()
    colours = []
    for value in (0.2, 0.45, 0.7, 0.95):
        h, s = (hue + rng.uniform(-0.08, 0.08)) % 1.0, rng.uniform(0.3, 0.9)
        colours.append(tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, value)))
    return colours  # type: ignore[return-value]


def paint(
    palette: list[tuple[int, int, int]], rng: random.Random, size: tuple[int, int]
) -> Image.Image:
    """A gradient under 5-8 random shapes in the palette's colours, with faint noise."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    start, end = (np.array(colour, dtype=np.float64) for colour in rng.sample(palette, 2))
    picture = Image.fromarray((start + ramp[..., None] * (end - start)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.randint(5, 8)):
        colour = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in rng.choice(palette))
        x0, y0 = rng.uniform(-0.2, 0.8) * width, rng.uniform(-0.2, 0.8) * height
        x1, y1 = x0 + rng.uniform(0.2, 0.6) * width, y0 + rng.uniform(0.2, 0.6) * height
        shape = rng.choice(("ellipse", "rectangle", "polygon", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "polygon":
            corners = rng.randint(3, 6)
            draw.polygon(
                [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(corners)], colour
            )
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(4, 12))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 2.0, (height, width, 3))
    pixels = np.clip(np.asarray(picture, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(picture: Image.Image, mode: str = "jpeg", quality: int = 85) -> bytes:
    """Plain JPEG, CMYK JPEG, EXIF-rotated JPEG, or palette PNG with a transparent colour."""
    buf = io.BytesIO()
    if mode == "jpeg":
        picture.save(buf, "JPEG", quality=quality)
    elif mode == "cmyk-jpeg":
        picture.convert("CMYK").save(buf, "JPEG", quality=quality)
    elif mode == "exif-orientation-6":  # stored turned left; a viewer turns it right again
        exif = Image.Exif()
        exif[0x0112] = 6
        rotated = picture.transpose(Image.Transpose.ROTATE_90)
        rotated.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    elif mode == "palette-png-transparent":
        picture.quantize(colors=32, dither=Image.Dither.NONE).save(buf, "PNG", transparency=0)
    else:
        raise ValueError(f"unknown image mode {mode!r}")
    return buf.getvalue()


def _cropped(picture: Image.Image, pixels: int) -> bytes:
    box = (pixels, pixels, picture.width - pixels, picture.height - pixels)
    return encode(picture.crop(box).resize(picture.size, Image.Resampling.LANCZOS))


def _resized(picture: Image.Image, scale: float) -> bytes:
    size = (round(picture.width * scale), round(picture.height * scale))
    return encode(picture.resize(size, Image.Resampling.LANCZOS))


def _rotated(picture: Image.Image, degrees: float) -> bytes:
    corner = picture.getpixel((0, 0))
    return encode(picture.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=corner))


def _near_variants() -> list[tuple[str, Callable[[Image.Image], bytes]]]:
    """Small edits, mildest first; rotations by growing angles are the fallback."""
    variants: list[tuple[str, Callable[[Image.Image], bytes]]] = [
        ("cropped 1 px a side and resized back", lambda im: _cropped(im, 1)),
        ("rotated 1.5 degrees", lambda im: _rotated(im, 1.5)),
        ("brightness +20%", lambda im: encode(ImageEnhance.Brightness(im).enhance(1.2))),
        ("cropped 2 px a side and resized back", lambda im: _cropped(im, 2)),
        ("re-encoded at JPEG quality 30", lambda im: encode(im, quality=30)),
        ("contrast +15%", lambda im: encode(ImageEnhance.Contrast(im).enhance(1.15))),
        ("resized to 70%", lambda im: _resized(im, 0.7)),
    ]
    angles = [quarter / 4 for quarter in range(1, 21)]
    return variants + [(f"rotated {a:g} degrees", lambda im, a=a: _rotated(im, a)) for a in angles]


NEAR_VARIANTS = _near_variants()


@dataclass
class ImageBank:
    """Makes every sample image and remembers the bytes given to each record."""

    distinct: list[np.ndarray] = field(default_factory=list)
    by_record: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def fresh(self, taxon_key: str, key: str, size: tuple[int, int], mode: str = "jpeg") -> bytes:
        """A new picture whose phash is far from every distinct picture made so far."""
        palette = palette_for(taxon_key)
        for attempt in range(100):
            data = encode(paint(palette, seeded("image", key, attempt), size), mode)
            bits = phash_bits(data)
            if all(
                np.count_nonzero(bits != other) >= MIN_DISTINCT_PHASH for other in self.distinct
            ):
                self.distinct.append(bits)
                return data
        raise RuntimeError(f"no distinct image for {key} after 100 attempts")

    def near(self, base: bytes, start: int) -> tuple[bytes, str, int]:
        """A variant of `base` 1-4 phash bits away: (bytes, how it was made, distance).

        The first seven variants are tried from `start` on, so pairs get different edits.
        """
        bits = phash_bits(base)
        with Image.open(io.BytesIO(base)) as image:
            picture = image.convert("RGB")
        shift = start % 7
        for how, make in [*NEAR_VARIANTS[shift:7], *NEAR_VARIANTS[:shift], *NEAR_VARIANTS[7:]]:
            data = make(picture)
            distance = int(np.count_nonzero(phash_bits(data) != bits))
            if 1 <= distance <= 4:  # phash distances come in even steps: 2 or 4
                return data, how, distance
        raise RuntimeError("no near-duplicate variant within phash distance 1-4")

    def corrupt(self, kind: str, key: str) -> bytes:
        """Bytes that no decoder accepts, under an image name."""
        if kind == "truncated-jpeg":
            whole = encode(paint(palette_for(key), seeded("corrupt", key), (112, 84)))
            return whole[: len(whole) * 3 // 5]
        if kind == "random-bytes":
            return b"\x00" + seeded("corrupt", key).randbytes(1499)
        if kind == "empty":
            return b""
        if kind == "html-error-page":
            return HTML_ERROR_PAGE
        raise ValueError(f"unknown corruption {kind!r}")
