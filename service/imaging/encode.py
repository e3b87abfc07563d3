"""Encoded outputs: the label map as PNG and the colour overlay as JPEG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .preprocess import Letterbox, restore

PALETTE_ENTRIES = 256


def label_png(labels: np.ndarray, palette: Sequence[tuple[int, int, int]], *, compress_level: int) -> bytes:
    """uint8 labels → palette PNG (mode P, one class id per pixel, colours from ``palette``);
    uint16 labels (more than 256 classes) → 16-bit greyscale PNG of the ids."""
    if labels.dtype == np.uint8:
        image = Image.fromarray(labels)  # mode L
        flat = [v for rgb in palette[:PALETTE_ENTRIES] for v in rgb]
        image.putpalette(flat + [0] * (3 * PALETTE_ENTRIES - len(flat)))  # L → P
    else:
        image = Image.fromarray(labels.astype(np.uint16))  # mode I;16
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


def read_label_png(data: bytes) -> np.ndarray:
    """Class ids back from ``label_png`` output (for tests and clients)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).copy()


def overlay_jpeg(
    image: Image.Image,
    labels: np.ndarray,
    box: Letterbox,
    palette: Sequence[tuple[int, int, int]],
    *,
    size: tuple[int, int],
    alpha: float,
    quality: int,
) -> bytes:
    """Class colours blended over the image at ``size`` (W, H); a JPEG without metadata."""
    base = image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)
    ids = restore(labels, box, size)  # (H, W)
    colours = np.asarray(palette, dtype=np.float32).take(ids, axis=0, mode="clip")  # (H, W, 3)
    blended = np.asarray(base, dtype=np.float32) * (1.0 - alpha) + colours * alpha
    out = io.BytesIO()
    Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()
