"""The synthetic dataset: procedural outdoor scenes, generated on the fly (the data of the tests and the demo model).

Scenes are drawn by :mod:`faseg.model.data.scene`; this module indexes them deterministically per
``(seed, split, index)`` and parses the ``synthetic:...`` dataset spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sample import IGNORE_INDEX, SegmentationSample
from .scene import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, Scene

__all__ = ["SYNTHETIC_DEFAULT_SIZES", "SyntheticDataset", "synthetic_from_spec"]

_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


class SyntheticDataset:
    """Procedural outdoor scenes with 10 classes; deterministic per ``(seed, split, index)``.

    Each sample is generated when indexed, from ``np.random.default_rng([seed, split_stream, index])``, so a
    2000-image training set costs nothing until read, and any worker can produce any index. Numpy only,
    a few milliseconds per 256×256 image.

    Scene: a (slightly tilted) horizon splits sky from ground; the ground is grass or sand with optional
    patches of another ground class, a lake or a sea band, and a road in perspective; then brick walls and
    trees near the horizon; then vehicles, poles (+ wires) and balls drawn far-to-near so nearer objects
    occlude farther ones. Finally illumination: optional soft cast shadow, a linear lighting gradient, global
    gain, colour cast, gamma, and sensor noise. What makes each class recognisable:

    ========  ===========================================================================================
    sky       top of the image; vertical blue (or overcast grey) gradient with soft clouds
    grass     green, short vertical blade streaks, patchy tone
    road      neutral grey, coarse 2-px speckle, perspective trapezoid, often a dashed white/yellow line
    wall      staggered brick pattern with per-brick tone and light mortar lines (red to brown)
    water     blue-green with warped horizontal ripples; sea band under the horizon or a wobbly lake
    sand      pale beige, fine grain, soft dunes
    tree      blobby crown of discs, dark mottled green, on a brown trunk
    vehicle   side-view car: shaded body of ANY colour, dark glass cabin, black wheels (shape, not colour)
    pole      thin (3–7 px) vertical grey cylinders with shading, cross-arms, 2–3 px sagging wires
    ball      small (4–11 px radius) shaded spheres of any saturated colour (shape, not colour)
    ========  ===========================================================================================
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, split: str = "train", num_images: int = 2000, size: int | tuple[int, int] = (256, 256),
                 seed: int = 0):  # fmt: skip
        if split not in _SPLIT_STREAM:
            raise ValueError(f"unknown synthetic split {split!r}; expected one of {sorted(_SPLIT_STREAM)}")
        if num_images <= 0:
            raise ValueError(f"empty dataset: synthetic {split} split with num_images={num_images}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"synthetic image size must be (H, W) with both ≥ 32, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.split = split
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.classes = list(SYNTHETIC_CLASSES)
        self.palette = list(SYNTHETIC_PALETTE)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> SegmentationSample:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} samples")
        index %= self.num_images
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        image, label = Scene(rng, *self.size).render()
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        return SegmentationSample(image=image, label=label, name=f"synthetic_{self.split}_{index:05d}")

    def __repr__(self) -> str:
        return (f"SyntheticDataset(split={self.split!r}, num_images={self.num_images}, size={self.size}, "
                f"seed={self.seed})")  # fmt: skip


SYNTHETIC_DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}


def synthetic_from_spec(spec: str, split: str, query: str) -> SyntheticDataset:
    """The ``synthetic:SPLIT?OPTIONS`` dataset of :func:`faseg.model.data.build_dataset`; ``query`` holds the
    options (``num_images=N&size=S|HxW&seed=N``), ``spec`` the whole string for error messages."""
    if split not in SYNTHETIC_DEFAULT_SIZES:
        raise ValueError(f"bad dataset spec {spec!r}: synthetic split must be train, val or test")
    kwargs: dict[str, Any] = {"num_images": SYNTHETIC_DEFAULT_SIZES[split], "size": (256, 256), "seed": 0}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        try:
            if key == "size":
                parts = [int(v) for v in value.lower().split("x")]
                kwargs["size"] = (parts[0], parts[-1]) if len(parts) in (1, 2) else None
            elif key in ("num_images", "seed"):
                kwargs[key] = int(value)
            else:
                raise KeyError(key)
        except (ValueError, KeyError):
            raise ValueError(
                f"bad dataset spec {spec!r}: option {item!r} (allowed: num_images=N, size=S|HxW, seed=N)"
            ) from None
    return SyntheticDataset(split, **kwargs)
