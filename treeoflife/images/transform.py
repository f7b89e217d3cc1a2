"""One decode pass per fetched image: verify, EXIF-rotate, normalise to RGB, hash, resize,
encode JPEG. Bytes in, a `ProcessedImage` (or an `ImageRejected` with a reason) out.

Hashes are taken from the image as it will be shown and stored: after the EXIF rotation
and the RGB normalisation (alpha composited on white), before the resize. They equal
`imagehash.phash` / `imagehash.dhash` applied to `decode_image(raw, spec)`, so a rotated
or transparent copy of a picture hashes like its upright, opaque twin.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from treeoflife.errors import TolError
from treeoflife.images import phash as hashes

RESIZE_MODES = ("bioclip", "center-crop", "keep-ratio", "none")
# Resampling filters by name. `auto`: bicubic for `bioclip` (BioCLIP's own resize); for the
# other modes area averaging when shrinking and Lanczos when enlarging, the defaults of
# img2dataset (OpenCV INTER_AREA down, LANCZOS4 up). Area is also the cheapest downscale:
# 3× less CPU than Lanczos for a 300→224 crop, the biggest step of a fast-hash fetch.
RESAMPLE_FILTERS = {
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
RESAMPLE_NAMES = ("auto", *RESAMPLE_FILTERS)
# Formats we decode; anything else (EPS, PDF, ICNS...) is not a dataset photo.
# (MPO, multi-picture JPEG, opens through the JPEG plugin.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
REJECT_REASONS = (
    "empty",  # zero bytes
    "not-an-image",  # HTML error page, random bytes, unsupported format
    "truncated",  # the file ends before the picture does
    "corrupt",  # recognised format whose data does not decode
    "decompression-bomb",  # more pixels than `ResizeSpec.max_pixels`
    "too-small",  # a side shorter than `ResizeSpec.min_side`
)
WHITE = (255, 255, 255)
# Resizes first box-average by the largest whole factor that keeps the picture at least the
# target size, then resample (Pillow's reducing_gap=1): the cost of a JPEG draft decode,
# for every format and for the exact mode's full-size decode too.
REDUCING_GAP = 1.0


class ImageRejected(TolError):
    """Bytes that are not a usable image; `reason` is one of `REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"image rejected ({reason}): {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across process pools and Ray
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class ResizeSpec:
    """How fetched images are stored.

    mode: `bioclip` squashes to size×size with bicubic (BioCLIP's TreeOfLife-10M shards);
    `center-crop` scales the short side to `size` and crops the centre square
    (img2dataset's center_crop); `keep-ratio` shrinks so the long side is at most `size`;
    `none` keeps the pixels (re-encoded as JPEG). resample: a `RESAMPLE_NAMES` filter
    (`auto`: see `RESAMPLE_FILTERS`). fast_hash: decode big JPEGs at a reduced
    DCT scale (libjpeg draft mode, never below what the resize needs) and hash that: several
    times faster, a few hash bits off; see docs/images.md for the measured error.
    """

    mode: str = "center-crop"
    size: int = 224
    jpeg_quality: int = 95
    fast_hash: bool = False
    resample: str = "auto"
    max_pixels: int = 178_956_970  # Pillow's own DecompressionBombError limit
    min_side: int = 1

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise TolError(f"resize mode {self.mode!r}: use one of {', '.join(RESIZE_MODES)}")
        if self.resample not in RESAMPLE_NAMES:
            raise TolError(f"resample {self.resample!r}: use one of {', '.join(RESAMPLE_NAMES)}")
        if self.size < 1 or not 1 <= self.jpeg_quality <= 100:
            raise TolError("resize size must be ≥ 1 and jpeg_quality within 1-100")


@dataclass(frozen=True)
class ProcessedImage:
    """The stored JPEG plus what `images` records about the original."""

    jpeg: bytes
    sha256: str  # of the original bytes
    phash: str  # 16 hex digits, str(imagehash.phash(decoded image))
    dhash: str  # 16 hex digits, str(imagehash.dhash(decoded image))
    width: int  # original size, after EXIF rotation
    height: int
    out_width: int
    out_height: int


def _open(raw: bytes, spec: ResizeSpec) -> Image.Image:
    """Parse the header only: format, size; reject early before any pixel is decoded."""
    if not raw:
        raise ImageRejected("empty", "zero bytes")
    # (Pillow warns between its two bomb limits; `max_pixels` below decides. No
    # warnings.catch_warnings here: it swaps global state and is unsafe in threads.)
    try:
        image = Image.open(io.BytesIO(raw), formats=_formats())
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression-bomb", str(error)) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("not-an-image", f"{raw[:16]!r}... is no image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = "truncated" if _is_truncation(error) else "corrupt"
        raise ImageRejected(reason, f"header: {error}") from None
    except Exception as error:  # plugin bugs on hostile headers (struct.error, ...)
        raise ImageRejected("corrupt", f"header: {type(error).__name__}: {error}") from None
    width, height = image.size
    if width * height > spec.max_pixels:
        raise ImageRejected("decompression-bomb", f"{width}x{height} > {spec.max_pixels} pixels")
    if min(width, height) < max(spec.min_side, 1):
        raise ImageRejected("too-small", f"{width}x{height} < {spec.min_side} px")
    return image


def _formats() -> list[str]:
    Image.init()  # registers every plugin once; a no-op afterwards
    return [name for name in ACCEPTED_FORMATS if name in Image.OPEN]


def _is_truncation(error: BaseException) -> bool:
    return isinstance(error, EOFError) or "truncat" in str(error).lower()


def _draft_size(spec: ResizeSpec) -> tuple[int, int] | None:
    """The smallest decode the resize still needs (None: decode at full size)."""
    if not spec.fast_hash or spec.mode == "none":
        return None
    return (spec.size, spec.size)


def _load(image: Image.Image, spec: ResizeSpec) -> None:
    draft = _draft_size(spec)
    if draft is not None and image.format in ("JPEG", "MPO"):
        image.draft("RGB", draft)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        reason = "truncated" if _is_truncation(error) else "corrupt"
        raise ImageRejected(reason, str(error)) from None
    except Exception as error:  # a decoder bug must reject one image, not end a work unit
        raise ImageRejected("corrupt", f"{type(error).__name__}: {error}") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # no copy when nothing to turn
        return image
    except Exception:  # malformed EXIF is common in the wild; the pixels are still good
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited on white, 16/32-bit and float scaled to 0-255."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F":
            low, high = float(values.min(initial=0)), float(values.max(initial=0))
            values, top = values - low, max(high - low, 1e-12)
        scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and ("transparency" in image.info or image.palette.mode == "RGBA"))
        or (mode in ("L", "RGB", "1") and "transparency" in image.info)
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(raw: bytes, spec: ResizeSpec | None = None) -> Image.Image:
    """Bytes → the upright 8-bit RGB image that is hashed and resized; or ImageRejected."""
    return _decode(raw, spec or ResizeSpec())[0]


def _decode(raw: bytes, spec: ResizeSpec) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded picture and the original's upright size (a draft decode is smaller)."""
    image = _open(raw, spec)
    stored_width, stored_height = image.size
    _load(image, spec)
    loaded = image.size
    upright = _upright(image)
    turned = upright.size != loaded  # EXIF orientations 5-8 swap the sides
    original = (stored_height, stored_width) if turned else (stored_width, stored_height)
    return to_rgb(upright), original


def hash_thumbnails(image: Image.Image, spec: ResizeSpec) -> tuple[np.ndarray, np.ndarray]:
    """The phash and dhash thumbnails of the decoded picture: exact (imagehash's bits), or
    with `fast_hash` Pillow's reduce-then-Lanczos (`phash.fast_hash_thumbnails`), for every
    format; a JPEG's draft decode is reduced further, a PNG's full decode all the way."""
    if spec.fast_hash:
        return hashes.fast_hash_thumbnails(image)
    return hashes.hash_thumbnails(image)


def resample_filter(spec: ResizeSpec, shrinking: bool) -> Image.Resampling:
    """The Pillow filter `spec.resample` names (`auto`: by mode and direction)."""
    name = spec.resample
    if name == "auto":
        name = "bicubic" if spec.mode == "bioclip" else "area" if shrinking else "lanczos"
    return RESAMPLE_FILTERS[name]


def resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    """The stored picture for `spec.mode` (see `ResizeSpec`)."""
    width, height = image.size
    size = spec.size
    if spec.mode == "none":
        return image
    if spec.mode == "bioclip":
        if (width, height) == (size, size):
            return image
        shrinking = width >= size and height >= size
        return image.resize(
            (size, size), resample_filter(spec, shrinking), reducing_gap=REDUCING_GAP
        )
    if spec.mode == "keep-ratio":
        if max(width, height) <= size:
            return image
        scale = size / max(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(target, resample_filter(spec, True), reducing_gap=REDUCING_GAP)
    # center-crop: the centred square of side min(width, height), scaled to size×size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    if (width, height) == (size, size):
        return image
    return image.resize(
        (size, size),
        resample_filter(spec, side > size),
        box=(left, top, left + side, top + side),
        reducing_gap=REDUCING_GAP,
    )


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG bytes, no metadata (EXIF is already applied to the pixels)."""
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def process_image(raw: bytes, spec: ResizeSpec) -> ProcessedImage:
    """Verify, rotate, normalise, hash, resize and encode `raw`; raise ImageRejected."""
    return process_batch([raw], spec, raise_first=True)[0]  # type: ignore[return-value]


def process_batch(
    raws: Sequence[bytes], spec: ResizeSpec, *, raise_first: bool = False
) -> list[ProcessedImage | ImageRejected]:
    """`process_image` over many images, the hash arithmetic done in one numpy pass.

    Each entry is a ProcessedImage or the ImageRejected that explains the failure (in
    input order); with raise_first the first rejection is raised instead.
    """
    decoded: list[int] = []  # input positions of the pictures that made it
    results: list[ProcessedImage | ImageRejected | None] = [None] * len(raws)
    phash_thumbs: list[np.ndarray] = []
    dhash_thumbs: list[np.ndarray] = []
    stored: list[bytes] = []
    sizes: list[tuple[int, int, int, int]] = []
    with hashes.one_blas_thread():  # set once per batch, not per image
        for index, raw in enumerate(raws):
            try:
                image, original_size = _decode(raw, spec)
                try:
                    phash_thumb, dhash_thumb = hash_thumbnails(image, spec)
                    out = resize(image, spec)
                    jpeg = encode_jpeg(out, spec.jpeg_quality)
                except (OSError, ValueError) as error:  # e.g. a mode Pillow cannot encode
                    raise ImageRejected("corrupt", f"{type(error).__name__}: {error}") from None
            except ImageRejected as rejected:
                if raise_first:
                    raise
                results[index] = rejected
                continue
            phash_thumbs.append(phash_thumb)
            dhash_thumbs.append(dhash_thumb)
            stored.append(jpeg)
            sizes.append((*original_size, *out.size))
            decoded.append(index)
    if decoded:
        phashes = hashes.hashes_to_hex(hashes.phash_from_thumbnails(np.stack(phash_thumbs)))
        dhashes = hashes.hashes_to_hex(hashes.dhash_from_thumbnails(np.stack(dhash_thumbs)))
        for slot, index in enumerate(decoded):
            width, height, out_width, out_height = sizes[slot]
            results[index] = ProcessedImage(
                jpeg=stored[slot],
                sha256=hashlib.sha256(raws[index]).hexdigest(),
                phash=phashes[slot],
                dhash=dhashes[slot],
                width=width,
                height=height,
                out_width=out_width,
                out_height=out_height,
            )
    return results  # type: ignore[return-value]
