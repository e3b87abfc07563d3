"""The request bodies a load test sends: image files from a folder, or synthetic photographs-like images.

Synthetic images are deterministic (seeded) JPEGs with smooth gradients, shapes and mild noise, so they
compress and decode like real photographs rather than like flat colour (which decodes unrealistically
fast) or white noise (which compresses unrealistically badly).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
MAX_FOLDER_IMAGES = 256  # bodies are held in memory; more adds nothing to a benchmark
DEFAULT_SYNTHETIC_SIZE = (640, 480)  # (W, H): a common camera frame, larger than the demo model's input
DEFAULT_SYNTHETIC_COUNT = 16
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Payload:
    """One request body."""

    name: str
    body: bytes
    content_type: str


def load_folder(folder: str | Path, limit: int = MAX_FOLDER_IMAGES) -> list[Payload]:
    """The JPEG / PNG / WebP files of ``folder`` (not recursive, sorted by name, at most ``limit``)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in CONTENT_TYPES)[:limit]
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png/.webp files in {str(root)!r}")
    return [Payload(p.name, p.read_bytes(), CONTENT_TYPES[p.suffix.lower()]) for p in files]


def synthetic_image(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of ``size`` (W, H): a colour gradient, a few filled shapes and sensor-like noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx / max(w - 1, 1) * 0.6 + yy / max(h - 1, 1) * 0.4)[..., None]  # (H, W, 1)
    base = (1 - t) * c0 + t * c1  # (H, W, 3)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def synthetic(
    count: int = DEFAULT_SYNTHETIC_COUNT, size: tuple[int, int] = DEFAULT_SYNTHETIC_SIZE, seed: int = 0
) -> list[Payload]:
    """``count`` synthetic JPEGs of ``size`` (W, H)."""
    if count < 1:
        raise ValueError("the synthetic image count must be ≥ 1")
    if min(size) < 8:
        raise ValueError(f"synthetic images of {size[0]}x{size[1]} are too small")
    payloads = []
    for index in range(count):
        buffer = BytesIO()
        synthetic_image(size, seed + index).save(buffer, "JPEG", quality=JPEG_QUALITY)
        payloads.append(Payload(f"synthetic-{index:03d}.jpg", buffer.getvalue(), "image/jpeg"))
    return payloads


def parse_wxh(text: str) -> tuple[int, int]:
    """``"640x480"`` → (640, 480): width × height, as image sizes are usually written."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT, e.g. 640x480, not {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {text!r} must be positive")
    return w, h


def decode_rgb(payload: Payload) -> Image.Image:
    """The payload as an RGB PIL image (for feeding the same pixels to a raw backend)."""
    with Image.open(BytesIO(payload.body)) as image:
        return image.convert("RGB")
