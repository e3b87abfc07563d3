"""Mapping images of any size onto the model's fixed input (the shape bucket) and back.

An image is scaled, keeping its aspect ratio, to fit inside the model input and placed at the top-left
corner of a black canvas; ``Letterbox`` remembers where, so label maps can be cropped to the image and
resized to its original size afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


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
