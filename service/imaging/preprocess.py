"""From untrusted image bytes to the model input: decode, choose the input bucket, letterbox (and, after
inference, :func:`restore` maps the labels back onto the image).

Decoding checks the cheapest things first: the format is sniffed from the magic bytes and only JPEG, PNG and
WebP reach Pillow (and only their own plugin); the size is read from the header by the lazy ``Image.open``
and checked against the pixel cap before ``load()``; then the image is decoded, its EXIF orientation
applied and its mode converted explicitly to RGB.

Input shape buckets: a model version may be exported at several input sizes (one file per bucket). Each
image goes to the bucket that loses the least (docs/service.md, "Buckets"):

1. the closest aspect ratio (distance |log(w/h) − log(W/H)|, so 2:1 and 1:2 are equally far from 1:1);
2. among the buckets with that aspect ratio, the smallest one that is not smaller than the image (both sides
   at least the image's), so no detail is thrown away and no compute is spent on upscaling;
3. when none is that large, the largest of them.

A request may name a bucket (``bucket=HxW``) instead of ``auto``.

Letterbox: the image is scaled, keeping its aspect ratio, to fit inside the bucket and placed at the
top-left corner of a black canvas; ``Letterbox`` remembers where, so label maps can be cropped to the image
and resized to its original size afterwards.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core.errors import EmptyBody, ImageTooLarge, InvalidImage, ServiceError, UnsupportedMediaType

# --- decode ------------------------------------------------------------------------------------------------

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
EXIF_ORIENTATION_TAG = 0x0112
# Magic bytes of formats we recognise but refuse (415); anything unrecognised is not an image (400).
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  \r\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"SIMPLE  =", "FITS"),
)
_ISOBMFF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image as the user sees it (EXIF orientation applied)."""

    image: Image.Image  # mode RGB; may be smaller than ``size`` when decoded at a reduced JPEG scale
    size: tuple[int, int]  # (width, height) of the full image after orientation
    format: str
    orientation_applied: bool


def configure_pillow(max_pixels: int) -> None:
    """Process-wide Pillow guards, set once at start-up: its own bomb check fires at our pixel cap and
    raises instead of warning, and truncated files stay errors."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def sniff_format(data: bytes) -> str:
    """The allowed format ``data`` starts with; 415 for known other formats, 400 for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedMediaType(f"{name} images are not accepted; send JPEG, PNG or WebP")
    if data[4:8] == b"ftyp" and data[8:12] in _ISOBMFF_BRANDS:
        raise UnsupportedMediaType(f"{_ISOBMFF_BRANDS[data[8:12]]} images are not accepted; send JPEG, PNG or WebP")
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        raise UnsupportedMediaType("SVG images are not accepted; send JPEG, PNG or WebP")
    raise InvalidImage("the body is not a JPEG, PNG or WebP image")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except (SyntaxError, ValueError, TypeError, OSError, struct.error):
        return 1  # unreadable EXIF: decode the pixels as stored


def _to_rgb(image: Image.Image) -> Image.Image:
    """Explicit mode conversions; alpha is dropped, 16-bit grey keeps its top 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image).astype(np.int64)
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")  # L, LA, 1, RGBA, RGBX, CMYK, YCbCr


def decode_image(
    data: bytes, *, max_pixels: int, apply_exif: bool = True, draft_size: tuple[int, int] | None = None
) -> DecodedImage:
    """Decode ``data`` into RGB. ``draft_size`` (W, H) lets a JPEG decode at the smallest DCT scale that
    still covers it (the letterboxed size), which is several times faster for photos."""
    if not data:
        raise EmptyBody("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} pixels exceed the limit of {max_pixels}")
            orientation = _orientation(image) if apply_exif else 1
            if draft_size is not None and fmt == "JPEG":
                _draft(image, (width, height), draft_size, swapped=orientation in (5, 6, 7, 8))
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            if rgb is image:
                rgb = image.copy()  # detach from the file object closed below
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from None
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"cannot decode the {fmt} image: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # crafted files reach odd corners of the decoders; still the input's fault
        raise InvalidImage(f"cannot decode the {fmt} image ({type(exc).__name__})") from None
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return DecodedImage(image=rgb, size=size, format=fmt, orientation_applied=orientation != 1)


def _draft(image: Image.Image, size: tuple[int, int], target: tuple[int, int], *, swapped: bool) -> None:
    """Ask the JPEG decoder for a DCT scale (1/2, 1/4, 1/8) that still covers ``target`` (W, H), given in
    the displayed orientation."""
    tw, th = (target[1], target[0]) if swapped else target
    w, h = size
    scale = min(tw / w, th / h)
    if scale < 0.5:
        image.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


# --- input buckets -----------------------------------------------------------------------------------------

Bucket = tuple[int, int]  # (height, width) of the model input
AUTO = "auto"
_BUCKET = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
# Aspect ratios closer than this (in log space) count as equal: 256x512 and 250x500 are both 1:2.
ASPECT_TOLERANCE = 1e-3


def bucket_name(bucket: Bucket) -> str:
    """(256, 512) → "256x512" (height × width, as the files' input sizes are written)."""
    return f"{bucket[0]}x{bucket[1]}"


def parse_bucket(text: str) -> Bucket | None:
    """ "256x512" → (256, 512); None when ``text`` is not HxW."""
    match = _BUCKET.match(text)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def _aspect_distance(image_size: tuple[int, int], bucket: Bucket) -> float:
    w, h = image_size
    return abs(math.log(w / h) - math.log(bucket[1] / bucket[0]))


def choose_bucket(image_size: tuple[int, int], buckets: Sequence[Bucket]) -> Bucket:
    """The bucket an image of ``image_size`` (width, height) goes to, by the policy above."""
    if not buckets:
        raise ValueError("a model version has at least one bucket")
    if len(buckets) == 1:
        return buckets[0]
    closest = min(_aspect_distance(image_size, b) for b in buckets)
    same_shape = [b for b in buckets if _aspect_distance(image_size, b) <= closest + ASPECT_TOLERANCE]
    w, h = image_size
    covering = [b for b in same_shape if b[0] >= h and b[1] >= w]
    if covering:
        return min(covering, key=lambda b: (b[0] * b[1], b))
    return max(same_shape, key=lambda b: (b[0] * b[1], b))


# --- letterbox ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    original_size: tuple[int, int]  # (width, height) of the image as the user sees it
    content_size: tuple[int, int]  # (width, height) of the scaled image inside the model input
    input_size: tuple[int, int]  # (height, width) of the model input


def fit(original_size: tuple[int, int], input_size: tuple[int, int]) -> Letterbox:
    """Where an image of ``original_size`` (W, H) lands in a model input of ``input_size`` (H, W)."""
    w, h = original_size
    in_h, in_w = input_size
    scale = min(in_w / w, in_h / h)
    content = (min(in_w, max(1, round(w * scale))), min(in_h, max(1, round(h * scale))))
    return Letterbox(original_size=original_size, content_size=content, input_size=input_size)


def letterbox(image: Image.Image, box: Letterbox) -> np.ndarray:
    """The model input for ``image`` (RGB, any size): uint8 (H, W, 3)."""
    in_h, in_w = box.input_size
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    cw, ch = box.content_size
    resized = image if image.size == (cw, ch) else image.resize((cw, ch), Image.Resampling.BILINEAR)
    canvas[:ch, :cw] = np.asarray(resized)
    return canvas


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel for a nearest-neighbour resize (pixel centres aligned)."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def restore(labels: np.ndarray, box: Letterbox, size: tuple[int, int] | None = None) -> np.ndarray:
    """Crop a model-resolution map (H, W) to the image and resize it (nearest) to ``size`` (W, H);
    ``size=None`` keeps the cropped model resolution."""
    cw, ch = box.content_size
    crop = labels[:ch, :cw]
    if size is None or size == (cw, ch):
        return np.ascontiguousarray(crop)
    w, h = size
    return crop.take(nearest_indices(ch, h), axis=0).take(nearest_indices(cw, w), axis=1)
