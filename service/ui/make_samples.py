"""Make the demo page's sample photographs from scikit-image's sample images (a development tool; scikit-image
is in the ``dev`` extra, not a runtime dependency).

    python -m faseg.service.ui.make_samples

writes ``static/samples/<name>.jpg`` next to this file: each photograph at most ``MAX_SIDE`` pixels on its long
side, as JPEG at the highest quality from ``QUALITIES`` that stays under ``MAX_BYTES``.
"""

from __future__ import annotations

import io

import numpy as np
import skimage.data
from PIL import Image

from . import STATIC_DIR

SAMPLES_DIR = STATIC_DIR / "samples"
# name → scikit-image loader; the names are the file names the page's buttons refer to.
PHOTOGRAPHS = {
    "astronaut": skimage.data.astronaut,  # 512×512, a portrait with a flag and a space shuttle
    "coffee": skimage.data.coffee,  # 600×400, a cup on a table
    "chelsea": skimage.data.chelsea,  # 451×300, a cat
}
MAX_SIDE = 512
MAX_BYTES = 60_000
QUALITIES = (85, 80, 75, 70, 60, 50)


def encode_sample(pixels: np.ndarray) -> bytes:
    """JPEG bytes of ``pixels`` (H, W, 3) uint8, scaled to ``MAX_SIDE`` and compressed under ``MAX_BYTES``."""
    image = Image.fromarray(pixels).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    for quality in QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_BYTES:
            return buffer.getvalue()
    raise ValueError(f"cannot compress a {image.size} photograph under {MAX_BYTES} bytes")


def main() -> None:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOGRAPHS.items():
        path = SAMPLES_DIR / f"{name}.jpg"
        path.write_bytes(encode_sample(load()))
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
