"""``class_stats_resized`` must equal ``class_stats`` of the resized map bit for bit: the service computes
per-class statistics from the model-resolution map instead of building the image-sized one."""

from __future__ import annotations

import numpy as np
import pytest
from faseg.service.imaging.preprocess import fit, restore
from faseg.service.imaging.stats import class_stats, class_stats_resized

CLASSES = [f"c{i}" for i in range(12)]


def _blocky(rng: np.random.Generator, shape: tuple[int, int], classes: int, dtype=np.uint8) -> np.ndarray:
    """Region-like maps (what models produce), not only pixel noise."""
    h, w = shape
    block = int(rng.integers(1, 6))
    coarse = rng.integers(0, classes, (h // block + 1, w // block + 1)).astype(dtype)
    return np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:h, :w]


@pytest.mark.parametrize("seed", range(4))
def test_equals_stats_of_the_resized_map(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(250):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        out_w, out_h = (int(v) for v in rng.integers(1, 160, 2))  # up- and down-scaling, odd ratios
        labels = _blocky(rng, (h, w), int(rng.integers(1, len(CLASSES))))
        resized = restore(labels, fit((w, h), (h, w)), (out_w, out_h))
        assert class_stats_resized(labels, CLASSES, (out_w, out_h)) == class_stats(resized, CLASSES)


def test_same_size_and_letterboxed_photo_sizes() -> None:
    rng = np.random.default_rng(7)
    labels = _blocky(rng, (192, 256), 8)
    assert class_stats_resized(labels, CLASSES, (256, 192)) == class_stats(labels, CLASSES)
    model_map = _blocky(rng, (256, 256), 8)
    for original in ((640, 480), (4000, 3000), (100, 75), (33, 257)):
        box = fit(original, (256, 256))
        crop = restore(model_map, box)
        assert class_stats_resized(crop, CLASSES, original) == class_stats(restore(model_map, box, original), CLASSES)


def test_uint16_labels_past_256_classes() -> None:
    rng = np.random.default_rng(3)
    classes = [f"c{i}" for i in range(300)]
    labels = _blocky(rng, (20, 30), 300, dtype=np.uint16)
    resized = restore(labels, fit((30, 20), (20, 30)), (71, 45))
    assert class_stats_resized(labels, classes, (71, 45)) == class_stats(resized, classes)
