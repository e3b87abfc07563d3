"""Test images: encoders and a synthetic image whose labels the toy model predicts exactly."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from service_toy_model import PROTOTYPES


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def blocks_image(width: int = 160, height: int = 120) -> Image.Image:
    """Vertical stripes of the toy model's prototype colours: labels 0..5 from left to right."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    edges = np.linspace(0, width, len(PROTOTYPES) + 1).astype(int)
    for k, colour in enumerate(PROTOTYPES):
        array[:, edges[k] : edges[k + 1]] = colour
    return Image.fromarray(array)
